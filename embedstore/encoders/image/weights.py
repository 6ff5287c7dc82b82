"""Checkpoint files of image backbones: read safely (safetensors, or torch pickles with weights_only=True), and
mapped onto a model by position when another codebase wrote them."""

from __future__ import annotations

from pathlib import Path

from embedstore.errors import EncoderUnavailableError


def read_state_dict(path: Path) -> dict:
    """Tensors of a checkpoint file (.safetensors, or a torch pickle read with weights_only=True)."""
    import torch
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
            raise EncoderUnavailableError(f"cannot read weights {path}: {type(e).__name__}: {e}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd:
        raise EncoderUnavailableError(f"{path}: expected a state dict of tensors, found {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def map_by_position(model_sd: dict, file_sd: dict, what: str) -> dict:
    """Rename a checkpoint's tensors onto the model's keys by position (same architecture written by another
    codebase, e.g. efficientnet-lite0's lukemelas-style keys onto timm's); every tensor's shape must match."""
    if len(model_sd) != len(file_sd):
        raise EncoderUnavailableError(f"{what}: key_map=position needs one tensor per model tensor; the model has "
                                      f"{len(model_sd)}, the file {len(file_sd)}")
    out = {}
    for i, ((key, want), (src, got)) in enumerate(zip(model_sd.items(), file_sd.items())):
        if tuple(want.shape) != tuple(got.shape):
            raise EncoderUnavailableError(f"{what}: tensor {i} {src!r} has shape {tuple(got.shape)}, but the model's "
                                          f"{key!r} has {tuple(want.shape)}: not the same architecture")
        out[key] = got
    return out


def not_model_file(rel: str) -> bool:
    """Files of a model directory that do not change its vectors (READMEs, images...): left out of its hash."""
    return not rel.endswith((".json", ".safetensors", ".bin", ".pth", ".pt", ".txt.gz"))
