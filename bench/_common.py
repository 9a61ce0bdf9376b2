"""Shared timing helper of the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls (CUDA-synchronized)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def add_timing_args(p) -> None:
    """The options every timing benchmark takes."""
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)


def add_low_dtype_arg(p, what: str) -> None:
    """``--low-dtype``: also time ``what`` with the power iterations in that precision (``none``: skip)."""
    p.add_argument("--low-dtype", default="bfloat16", choices=["bfloat16", "float16", "none"],
                   help=f"also time {what} with the power iterations in this precision; none: skip")


def parse_low_dtype(args) -> torch.dtype | None:
    """The dtype ``--low-dtype`` names, ``None`` for ``none``."""
    return None if args.low_dtype == "none" else getattr(torch, args.low_dtype)


def setup(p, args) -> tuple[torch.device, str]:
    """Check the timing options, set the thread count; returns the device and a description of it."""
    if args.repeats < 1 or args.warmup < 0:
        p.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    return device, where


def timed_together(fns: dict, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median wall time (ms) of each ``fns[name]()``, the calls interleaved round by round, so a change of
    the machine's load during the run hits every function alike (ratios stay comparable)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}
