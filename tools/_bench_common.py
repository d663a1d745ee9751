"""Pieces the benchmark scripts share: synchronized wall-clock timing and the common command-line setup.

`time_calls(fn, reps, sync) -> list[float]` times `reps` calls of `fn` in seconds, calling `sync` (a CUDA
synchronize, or nothing on the CPU) around each so queued device work is counted; `sync_fn(device)` picks it.
`add_device_args(ap, threads_help)` adds --device cpu|cuda and --threads; `parse_device_args(ap, argv)` parses,
applies --threads to torch and refuses --device cuda on a machine without CUDA.
Imported by tools/bench_model.py, tools/bench_train_step.py and tools/bench_sparse_conv.py.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def sync_fn(device: str) -> Callable[[], None]:
    """torch.cuda.synchronize for a CUDA device, a no-op otherwise."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def time_calls(fn: Callable[[], object], reps: int, sync: Callable[[], None]) -> list[float]:
    """Seconds taken by each of `reps` calls of `fn`, with `sync` before and after every call."""
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def add_device_args(ap: argparse.ArgumentParser, threads_help: str = "torch CPU threads") -> None:
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, help=threads_help)


def parse_device_args(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv`; set torch's thread count from --threads; exit with a usage error for CUDA without CUDA."""
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    return args
