"""One device policy for every command: ``--device auto|cpu|cuda|cuda:N`` (auto = the GPU when there
is one, under torchrun the local rank's; else the CPU), TF32 matmuls for float32 on CUDA."""
from __future__ import annotations

import os

import torch


def resolve(spec: str = "auto") -> torch.device:
    """The device ``--device`` names; a CUDA device that is not there is an error."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: no CUDA device is available (use --device auto or cpu)")
    device = torch.device(spec)
    return torch.device("cuda", local) if device.index is None else device


def prepare(device: torch.device, dtype: str) -> None:
    """Make ``device`` current; float32 on CUDA computes its matmuls in TF32 (as transformers' and
    TRL's ``tf32`` flag does: ~10 mantissa bits, several times the FP32 rate on Ampere and later)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if dtype == "float32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def frozen_dtype(dtype: str) -> torch.dtype:
    return torch.bfloat16 if dtype == "bfloat16" else torch.float32
