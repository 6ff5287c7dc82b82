"""CUDA only: JPEG batches decoded on the device by nvjpeg and resized there, by the same sizes as the CPU path.

Only batches whose every file is a plain JPEG within max_pixels go this way, so every failure still gets its
reason from the CPU decoder. Pixels match the CPU path up to resampling rounding, except that draft mode does not
apply (vectors are expected to agree like bf16 and fp32 do). Not measured in this project yet: its sessions have
had no GPU. `DecodeChooser` picks between the two paths (`gpu_decode=auto|true|false`).
"""

from __future__ import annotations

import io
import time
from typing import Any

from embedstore.media.images import Preprocess, resized_size


class DecodeChooser:
    """gpu_decode=true/false as told; auto: two batches each way (the first warms up), then the faster."""

    def __init__(self, mode: str | bool):
        self.mode = mode  # "auto", True or False
        self.seconds = {"cpu": (0, 0.0), "gpu": (0, 0.0)}  # path -> (batches, last seconds per image)

    def timed(self, path: str, t0: float, n: int) -> None:
        self.seconds[path] = (self.seconds[path][0] + 1, (time.perf_counter() - t0) / max(n, 1))

    def use_gpu(self) -> bool:
        if self.mode != "auto":
            return bool(self.mode)
        (n_cpu, cpu), (n_gpu, gpu) = self.seconds["cpu"], self.seconds["gpu"]
        if n_cpu < 2:
            return False
        return n_gpu < 2 or gpu < cpu


def all_plain_jpegs(contents: list[bytes], max_pixels: int) -> bool:
    from PIL import Image
    for data in contents:
        if bytes(data[:3]) != b"\xff\xd8\xff":
            return False
        try:
            w, h = Image.open(io.BytesIO(data)).size  # header only
        except Exception:  # noqa: BLE001 - the CPU path will give the reason
            return False
        if w * h > max_pixels:
            return False
    return True


def gpu_batch(contents: list[bytes], pp: Preprocess, max_pixels: int, device: str, stream: Any) -> Any | None:
    """uint8 [n, H, W, 3] on `device`, decoded on the side `stream` (overlapping the model on the default one),
    or None to use the CPU workers."""
    if not all_plain_jpegs(contents, max_pixels):
        return None
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    with torch.cuda.stream(stream):
        try:
            images = decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in contents],
                                 mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        except RuntimeError:
            return None
        out = torch.stack([resize_crop(img, pp) for img in images])
    stream.synchronize()  # blocks the prefetch thread only
    out.record_stream(torch.cuda.current_stream(device))
    return out


def resize_crop(img: Any, pp: Preprocess) -> Any:
    """[3, h, w] uint8 on the device -> [H, W, 3] uint8, by the same sizes as the CPU path (antialiased)."""
    import torch
    import torch.nn.functional as F
    h, w = img.shape[1:]
    nw, nh = resized_size(w, h, pp)
    x = img[None].float()
    if (nw, nh) != (w, h):
        mode = pp.interpolation if pp.interpolation in ("bilinear", "bicubic") else "bilinear"
        x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
    ch, cw = pp.size
    if nw < cw or nh < ch:
        pad_w, pad_h = max(cw - nw, 0), max(ch - nh, 0)
        canvas = torch.tensor(pp.fill, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        canvas = canvas.expand(1, 3, nh + pad_h, nw + pad_w).clone()
        canvas[:, :, pad_h // 2:pad_h // 2 + nh, pad_w // 2:pad_w // 2 + nw] = x
        x, nh, nw = canvas, nh + pad_h, nw + pad_w
    top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
    x = x[:, :, top:top + ch, left:left + cw]
    return x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
