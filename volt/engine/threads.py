"""How many torch threads a CPU training process should use.

On a CPU, the trainer's intra-op threads share the cores with the DataLoader workers and with the other
ranks of a torchrun job. More busy threads than cores makes OpenMP's barriers wait on descheduled threads:
on 2 cores the demo's training step went from 0.2 s to 1.4 s with torch's default thread count beside one
worker. `cpu_threads` gives each rank the cores left after its workers, and never overrides a count the
user chose (`--threads`, or OMP_NUM_THREADS in the environment).
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset / container CPU sets
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads(num_workers: int, requested: int | None = None, cores: int | None = None,
                local_world_size: int | None = None) -> int:
    """Threads for one rank: `requested` if given, else (cores / ranks on this node) minus the workers, ≥ 1."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"the thread count must be at least 1, got {requested}")
        return requested
    cores = cores if cores is not None else available_cores()
    ranks = local_world_size if local_world_size is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    per_rank = max(1, cores // max(1, ranks))
    return max(1, per_rank - max(0, num_workers))


def set_cpu_threads(num_workers: int, requested: int | None = None) -> int | None:
    """Apply `cpu_threads` unless OMP_NUM_THREADS is set and nothing was requested; the count set, or None."""
    if requested is None and os.environ.get("OMP_NUM_THREADS"):
        return None
    n = cpu_threads(num_workers, requested)
    torch.set_num_threads(n)
    return n
