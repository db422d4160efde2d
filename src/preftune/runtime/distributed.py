"""PyTorch distributed for ``torchrun``: gloo on CPU, nccl on GPU; DDP, or FSDP2 (``fully_shard``,
one unit per decoder layer, then the root) with ``--fsdp true``; collectives the recipes share."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from .device import prepare, resolve


def init(*, fsdp: bool = False, device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device) under the device policy (``runtime.device``); starts the process
    group when launched by torchrun (with FSDP2, also for a single process): nccl on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if fsdp and "RANK" not in os.environ:
        raise ValueError("--fsdp true shards the models over the processes torchrun starts: "
                         "torchrun --nproc_per_node N -m preftune ...")
    device = resolve(device)
    prepare(device)
    if (world > 1 or fsdp) and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def all_sum(values: list[float], device) -> list[float]:
    """Element-wise sum over processes (identity in one process)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` (same shape on each), stacked in rank order: (world, *t.shape)."""
    if not dist.is_initialized():
        return t[None]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.stack(out)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module, device) -> nn.Module:
    """DDP over the processes (the model itself in one process)."""
    if not dist.is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _layers(model: nn.Module) -> list[nn.Module]:
    """The decoder (or encoder) layers of every transformers model inside ``model``: the modules whose
    class is one of their model's ``_no_split_modules`` (as accelerate's FSDP auto-wrap picks them)."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: nn.Module, *, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2 in place: each decoder layer its own unit, then the root; parameters, gradients and
    optimizer state split over the processes. ``compute_dtype`` bfloat16: FSDP's mixed precision
    (bf16 parameters for compute, float32 parameters, gradient reduction and optimizer state)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
    for layer in _layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


@contextmanager
def gathered(root: nn.Module):
    """An FSDP2 model whole through many forward calls that do not go through its root (generation):
    every unit stays gathered until the end, then is sharded again. Nothing for other models."""
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    if units:
        root._get_fsdp_state()._lazy_init()   # as the root's first forward would (generation may come first)
        root.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_state_dict(model: nn.Module) -> dict:
    """The whole model's state, gathered from the shards onto the CPU (a collective: every process
    calls it; rank 0's copy is complete)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def peak_memory_mb(device) -> float:
    """This process's peak memory: max_memory_allocated on CUDA, peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
