"""Image decoding: the raw bytes of one file -> the model's uint8 input, [height, width, 3], as the model's own
preprocessing would make it (resize, crop or pad, from its config). Used by image sources, image encoders and
the decoding workers (media/workers.py) alike.

EXIF orientation applied; CMYK, palette, grey, 1-bit and 16-bit images converted (16-bit scaled to 8, not
clipped); transparency composited on white; an animated image gives its first frame; large JPEGs decoded at 1/2,
1/4 or 1/8 scale (draft mode) while that keeps at least twice the resize target (the resampling filter does the
rest); images over `max_pixels` refused before their pixels are read (decompression bombs). A file that cannot
be decoded (truncated, empty, not an image) gets a reason, never a crash or a grey image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from embedstore.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm",
                            ".pgm", ".pbm", ".pnm", ".ico", ".npy"})
NPY_MAGIC = b"\x93NUMPY"
DEFAULT_MAX_PIXELS = 89_478_485       # Pillow's own default limit (about 0.25 GiB of RGBA)


@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes the model's input; every field changes the vectors (part of the fingerprint).

    mode "shortest": scale the shorter side to `resize` (torchvision's Resize(int)), then center-crop `size`;
    "squash": scale to `resize` exactly, then center-crop; "keep-ratio": scale by timm/open_clip's ResizeKeepRatio
    rule (`longest` = 1 fits the longer side, 0 the shorter) to `resize`, then center-crop or pad with `fill`.
    """

    size: tuple[int, int]                  # (height, width) fed to the model
    resize: tuple[int, int]                # (height, width) target of the resize step
    mode: str = "shortest"
    interpolation: str = "bicubic"         # bicubic | bilinear | nearest | lanczos | box | hamming
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    longest: float = 0.0                   # keep-ratio only
    fill: tuple[int, int, int] = (0, 0, 0)  # padding colour (keep-ratio, or a crop larger than the image)
    draft: bool = True                     # JPEG: libjpeg decodes at a reduced scale still >= 2x `resize`

    def __post_init__(self) -> None:
        if self.mode not in ("shortest", "squash", "keep-ratio"):
            raise InputError(f"image preprocessing mode must be shortest, squash or keep-ratio, not {self.mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise InputError(f"image interpolation must be one of {sorted(_RESAMPLE)}, not {self.interpolation!r}")

    def as_dict(self) -> dict:
        return asdict(self)


_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}  # PIL's codes


class DecodeError(Exception):
    """One file could not be decoded; the message is the reason recorded with the item."""


def decode_batch(items: Sequence[bytes], pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS
                 ) -> tuple[np.ndarray, list[str | None]]:
    """Decode and preprocess a batch: (uint8 [n, h, w, 3], reasons). A failed item's row stays zero and its
    reason is set; callers must never embed such a row. Runs in a worker process (see Decoder)."""
    out = np.zeros((len(items), *pp.size, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(items)
    for i, data in enumerate(items):
        try:
            out[i] = decode_image(data, pp, max_pixels)
        except DecodeError as e:
            reasons[i] = str(e)
        except Exception as e:  # noqa: BLE001 - any decoder failure on one file must only skip that file
            reasons[i] = f"cannot decode image ({type(e).__name__}: {e})"
    return out, reasons


@dataclass(frozen=True)
class ImageJob:
    """What a decoding worker does with a batch of image files (media/workers.py): decode + preprocess."""

    pp: Preprocess
    max_pixels: int = DEFAULT_MAX_PIXELS
    noun = "image"

    def allocate(self, n: int) -> np.ndarray:
        return np.zeros((n, *self.pp.size, 3), dtype=np.uint8)

    def run(self, items: Sequence[bytes]) -> tuple[np.ndarray, list[str | None]]:
        return decode_batch(items, self.pp, self.max_pixels)


def decode_image(data: bytes, pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One file's bytes -> uint8 [h, w, 3] as the model's preprocessing defines it; raises DecodeError."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if bytes(data[:6]) == NPY_MAGIC:
        return _resize_crop(_array_image(np.load(io.BytesIO(data), allow_pickle=False)), pp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise DecodeError(f"not an image: no known image format ({len(data):,} bytes starting "
                              f"{bytes(data[:8])!r})") from None
        except Image.DecompressionBombError as e:
            raise DecodeError(f"decompression bomb guard: {e}; raise ?max_pixels= if the image is genuine") from None
        w, h = img.size
        if w * h > max_pixels:
            raise DecodeError(f"decompression bomb guard: {w}x{h} = {w * h:,} pixels exceeds max_pixels="
                              f"{max_pixels:,}; raise ?max_pixels= if the image is genuine")
        if pp.draft and img.format == "JPEG":
            target = 2 * max(pp.resize)  # twice: libjpeg's DCT scaling is cheap but blurs less than resampling
            img.draft(None, (target, target))  # a scale of 1/2..1/8 whose both sides stay >= target
        try:
            img.load()  # an animated image stays on its first frame
        except OSError as e:
            raise DecodeError(f"truncated or corrupt image data ({img.format}: {e})") from None
        img = ImageOps.exif_transpose(img)
    return _resize_crop(_to_rgb(img), pp)


def _to_rgb(img: Any) -> Any:
    """Any Pillow mode -> RGB: 16/32-bit integers scaled from 0..65535, transparency composited on white."""
    from PIL import Image
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (16-bit PNG/TIFF are read as these)
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.rint(np.clip(a, 0, 65535) * (255 / 65535)).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0  # float images in [0, 1], else taken as 0..255
        img = Image.fromarray(np.rint(np.clip(a * scale, 0, 255)).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _array_image(a: np.ndarray) -> Any:
    """A numpy image (from from_arrays) -> RGB Pillow image; dtype and shape checked."""
    from PIL import Image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise DecodeError(f"array of shape {a.shape} is not an image: expected (h, w), (h, w, 1), (h, w, 3) "
                          "or (h, w, 4)")
    if a.dtype == np.uint16:
        a = np.rint(a * (255 / 65535)).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DecodeError("float array values must be finite and in [0, 1]; pass uint8 (0..255) or scale them")
        a = np.rint(a * 255).astype(np.uint8)
    elif a.dtype.kind in "iu" and a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise DecodeError(f"{a.dtype} array values outside 0..255; pass uint8, uint16, or floats in [0, 1]")
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        raise DecodeError(f"array of dtype {a.dtype} is not an image; pass uint8, uint16, bool or floats in [0, 1]")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a)))


def resized_size(w: int, h: int, pp: Preprocess) -> tuple[int, int]:
    """(width, height) after the resize step, by torchvision's / timm's / open_clip's own rounding."""
    if pp.mode == "shortest":
        short, long = (w, h) if w <= h else (h, w)
        new_short = pp.resize[0]
        new_long = int(new_short * long / short)  # torchvision's rule (truncation)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    if pp.mode == "squash":
        return pp.resize[1], pp.resize[0]
    ratio_h, ratio_w = h / pp.resize[0], w / pp.resize[1]
    ratio = max(ratio_h, ratio_w) * pp.longest + min(ratio_h, ratio_w) * (1.0 - pp.longest)
    return max(1, round(w / ratio)), max(1, round(h / ratio))


def _resize_crop(img: Any, pp: Preprocess) -> np.ndarray:
    """Resize then center-crop (or pad) exactly as torchvision/timm/open_clip do it on PIL images."""
    from PIL import Image
    w, h = img.size
    new = resized_size(w, h, pp)
    if new != (w, h):
        img = img.resize(new, resample=Image.Resampling(_RESAMPLE[pp.interpolation]))
    ch, cw = pp.size
    w, h = img.size
    if w < cw or h < ch:  # pad evenly (extra pixel right/bottom), then crop
        canvas = Image.new("RGB", (max(w, cw), max(h, ch)), pp.fill)
        canvas.paste(img, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    if (w, h) != (cw, ch):
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)


def to_npy(image: np.ndarray) -> bytes:
    """One array image as .npy bytes: the content whose hash identifies it, and what the decoder reads."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(image), allow_pickle=False)
    return buf.getvalue()
