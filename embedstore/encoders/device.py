"""Where a torch model runs and in which precision: the `device`, `dtype` and `batch_size` options that every
neural family takes (none of them changes the fingerprint: device and dtype are recorded per vector, and bf16
and fp32 vectors of one fingerprint agree to cosine >= 0.99; on CPU, for the families that opt in, >= 0.9999)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from embedstore import config
from embedstore.encoders.base import Encoder
from embedstore.encoders.options import Option

DTYPES = ("auto", "float32", "bfloat16")  # the `dtype` option of the neural encoders


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX, Sapphire Rapids and later): there bf16
    autocast runs a transformer about twice as fast as float32; without AMX it is slower."""
    import torch
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent means no
    usable = getattr(torch.cpu, "_init_amx", None)  # the kernel lets this process use the tiles (Linux >= 5.16)
    return bool(probe and probe() and usable and usable())


def resolve_dtype(want: str, device: str, cpu_bf16: bool = False) -> str:
    """The `dtype` option made concrete: auto is bf16 on CUDA (where it is fast and accurate enough for
    features), bf16 on an AMX CPU for families measured to agree with float32 (`cpu_bf16`), else float32."""
    if want == "auto":
        fast_cpu = cpu_bf16 and device == "cpu" and cpu_has_amx()
        return "bfloat16" if device.startswith("cuda") or fast_cpu else "float32"
    return want


DEVICE = Option("device", "str", help="cpu, cuda, cuda:N (default: EMBEDSTORE_DEVICE, auto = cuda when available)")
DTYPE = Option("dtype", "choice", "auto", DTYPES,
               help="compute dtype; auto = bfloat16 on CUDA (and on AMX CPUs for st: models), else float32")
BATCH_SIZE = Option("batch_size", "int", None, low=1, high=65_536, help="inputs per forward pass")


def torch_device(option: str | None) -> str:
    """The device option (or EMBEDSTORE_DEVICE) made concrete; imports torch only for `auto`."""
    want = option or config.setting("device")
    if want == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


class TorchEncoder(Encoder):
    """An encoder that runs a torch model: device and dtype resolved on first use (that imports torch)."""

    OPTIONS = (DEVICE, DTYPE, BATCH_SIZE)
    cpu_bf16: bool = False  # dtype=auto runs bf16 on an AMX CPU: only where vectors agree with fp32 >= 0.9999

    @cached_property
    def _device(self) -> str:
        return torch_device(self.opts["device"])

    @cached_property
    def _dtype(self) -> str:
        return resolve_dtype(self.opts["dtype"], self._device, self.cpu_bf16)

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return self._dtype

    def embed(self, contents: Any, progress: Any = None) -> Any:
        """One autocast region around all the batches (run() enters it again per batch): the bf16 copies of the
        weights are then made once per call, not once per batch (MiniLM on CPU: about 5% faster)."""
        with self.autocast():
            return super().embed(contents, progress)

    def autocast(self) -> Any:
        """bf16 autocast on the model's device when the dtype is bfloat16, else a no-op context."""
        import torch
        return torch.autocast(self._device.split(":")[0], dtype=torch.bfloat16, enabled=self._dtype == "bfloat16")

    def versions(self) -> dict:
        import torch
        return {**super().versions(), "torch": torch.__version__}
