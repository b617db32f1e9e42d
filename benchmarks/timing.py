"""Wall-clock timing shared by the benchmark scripts (synchronising CUDA around the timed call)."""

from __future__ import annotations

import time

import torch


def timed(fn) -> float:
    """Seconds that ``fn()`` takes, with pending GPU work finished before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started
