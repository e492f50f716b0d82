"""torch.distributed glue for extraction: which share of the batch grid this process takes.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the process group is started here (NCCL on
CUDA devices, gloo otherwise); a plain process is rank 0 of 1 and never touches torch.distributed. Ranks extract the
batches k with k % world == rank of one fixed grid, write their own part files, and rank 0 consolidates, so the
cache equals a single-process run. On several nodes the output folder must be on a filesystem all nodes share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the extraction workers."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0: checks the cache, consolidates, prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world > 1:
            torch.distributed.barrier()

    def takes(self, k: int) -> bool:
        """Whether batch `k` of the grid is this rank's."""
        return k % self.world == self.rank


@contextlib.contextmanager
def process_group(device: str) -> Iterator[Ranks]:
    """This process's `Ranks` from the torchrun environment; with more than one rank, the process group is started
    on entry (unless the caller already started one, which it then keeps) and destroyed on exit, also on error."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Ranks()
        return
    ranks = Ranks(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    started = not torch.distributed.is_initialized()
    if started:
        use_nccl = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group(backend="nccl" if use_nccl else "gloo")
    try:
        yield ranks
    finally:
        if started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def rank_device(device: str, ranks: Ranks) -> str:
    """Each rank on its own GPU: `cuda` / `auto` become `cuda:LOCAL_RANK` under torchrun."""
    if ranks.world > 1 and (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{ranks.local_rank}"
    return device
