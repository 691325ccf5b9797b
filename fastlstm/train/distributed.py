"""Data-parallel plumbing under torchrun: the process group, rank, device and all-reduce."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_sum",
    "destroy_distributed",
    "init_distributed",
    "launched_rank",
    "local_rank_device",
    "sum_to_host",
    "world",
]


def world() -> tuple[int, int]:
    """``(world size, rank)``; ``(1, 0)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over every rank (returned unchanged in a single process)."""
    if world()[0] == 1:
        return values
    return sum_to_host(torch.tensor(values, dtype=torch.float64, device=device))


def sum_to_host(t: torch.Tensor) -> list[float]:
    """The 1-D tensor ``t`` summed over every rank, read to the host in one transfer.

    ``t`` lives on the process's device (reduced in place); the read waits for the device.
    """
    if world()[0] > 1:
        dist.all_reduce(t)
    return t.tolist()


def local_rank_device(device: str) -> str:
    """Under torchrun, ``cuda`` becomes ``cuda:<LOCAL_RANK>``."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def launched_rank() -> int:
    """This process's rank as torchrun set it, before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str) -> bool:
    """Join the torchrun process group when launched by torchrun; True if distributed.

    gloo on CPU, nccl on CUDA; the caller ends it with ``dist.destroy_process_group()``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return True


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
