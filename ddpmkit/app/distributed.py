"""Multi-process training on ``torch.distributed``: DDP launched by ``torchrun``.

``torchrun --nproc-per-node N -m ddpmkit run pipeline.toml`` (or ``ddpmkit run --nproc N``)
starts N copies of ddpmkit; each reads its rank from the environment torchrun sets, joins the
process group (NCCL on GPUs, gloo on CPUs) and trains on its shard of every global batch.
Rank 0 alone writes the run folder, logs and checkpoints.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import attrs
import torch
import torch.distributed as dist

from ddpmkit.core.errors import ConfigError


@attrs.frozen
class DistContext:
    """This process's place among the ranks of a ``torchrun`` launch."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and calls hooks."""
        return self.rank == 0

    def shard(self, batch_size: int) -> slice:
        """This rank's contiguous slice of a global batch of ``batch_size`` examples."""
        if batch_size % self.world_size:
            raise ConfigError(
                f"train.batch_size = {batch_size} cannot be split evenly over "
                f"{self.world_size} processes: use a multiple of {self.world_size}"
            )
        local = batch_size // self.world_size
        return slice(self.rank * local, (self.rank + 1) * local)


def from_environment() -> DistContext | None:
    """The rank variables ``torchrun`` sets, or ``None`` in a plain single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return DistContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def device_name(requested: str, ctx: DistContext) -> str:
    """The device one rank uses: its own GPU (``cuda:LOCAL_RANK``) or the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if requested.startswith("cuda:"):
        raise ConfigError(
            f"device = {requested!r} names one GPU, but torchrun started {ctx.world_size} "
            "processes: use device = 'auto' or 'cuda' (each rank takes GPU LOCAL_RANK)"
        )
    return f"cuda:{ctx.local_rank}"


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """Join the process group: NCCL when the ranks use GPUs, gloo on CPUs."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=ctx.rank, world_size=ctx.world_size)
    else:
        dist.init_process_group("gloo", rank=ctx.rank, world_size=ctx.world_size)


def shutdown() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value: Any, ctx: DistContext | None) -> Any:
    """Rank 0's ``value`` on every rank (picklable Python objects; no tensors)."""
    if ctx is None:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``value``, in rank order."""
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def all_reduce_max(value: float, ctx: DistContext, device: torch.device) -> float:
    """The largest ``value`` over the ranks."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of ``value`` over the ranks."""
    out = value.detach().clone()
    dist.all_reduce(out)
    return out / ctx.world_size


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the names and exact bytes of ``tensors``: equal only for identical values."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        sha.update(name.encode())
        sha.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return sha.hexdigest()
