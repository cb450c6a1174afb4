"""Time and memory of flash_attention against the fused kernel and chapter 1's attention.

For each length T: causal self-attention on ``(B, H, T, Dh)`` inputs that require grad, by
three implementations, checked first to give the same output: chapter 12's
``flash_attention`` (tiles in Python), PyTorch's ``F.scaled_dot_product_attention`` (the fused
kernel) and chapter 1's ``scaled_dot_product_attention`` (which stores the ``(T, T)`` weights).
Each repeat times a few forward + backward passes of each (rotating which goes first) and takes
the ratios to the fused kernel in the same repeat. The table shows the median times, the median
ratios (flash / fused, naive / fused) and the bytes autograd saves for backward. On a GPU it also
shows each one's peak allocated memory during forward + backward; a CPU has no such counter, so
the column is left out there.

Usage::

    python benchmarks/efficient_attention.py
    python benchmarks/efficient_attention.py --lengths 256 512 1024 2048 --repeats 7
    python benchmarks/efficient_attention.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from transformer_lib import causal_mask, flash_attention, scaled_dot_product_attention
from transformer_lib.efficiency import saved_activation_bytes, synchronize

Attention = Callable[[Tensor, Tensor, Tensor], Tensor]
IMPLEMENTATIONS: dict[str, Attention] = {
    "flash": lambda q, k, v: flash_attention(q, k, v, is_causal=True),
    "fused": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "naive": lambda q, k, v: scaled_dot_product_attention(
        q, k, v, causal_mask(q.size(-2), device=q.device))[0],
}


def _seconds_per_call(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def _peak_bytes(fn: Callable[[], None], device: torch.device) -> int | None:
    """Peak allocated bytes above what was allocated before ``fn()``; None on a CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure(T: int, batch: int, heads: int, head_size: int, repeats: int, device: torch.device,
            dtype: torch.dtype, target_seconds: float = 0.05) -> dict[str, dict[str, float]]:
    """Per implementation: median seconds, median ratio to fused, saved bytes, peak bytes."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, T, head_size, generator=g).to(device, dtype)
               .requires_grad_() for _ in range(3))
    outputs = {name: fn(q, k, v) for name, fn in IMPLEMENTATIONS.items()}
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.02, "atol": 0.02}
    for name in ("flash", "naive"):
        torch.testing.assert_close(outputs[name], outputs["fused"], **tol)
    del outputs
    steps = {name: (lambda fn=fn: fn(q, k, v).sum().backward())
             for name, fn in IMPLEMENTATIONS.items()}
    results: dict[str, dict[str, float]] = {}
    for name, fn in IMPLEMENTATIONS.items():
        results[name] = {"saved": saved_activation_bytes(lambda fn=fn: fn(q, k, v).sum())}
        peak = _peak_bytes(steps[name], device)
        if peak is not None:
            results[name]["peak"] = peak
    iters = max(1, round(target_seconds / _seconds_per_call(steps["flash"], 1, device)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_seconds_per_call(steps[name], iters, device))
    for name in names:
        results[name]["seconds"] = statistics.median(times[name])
        results[name]["ratio"] = statistics.median(
            a / b for a, b in zip(times[name], times["fused"]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per length")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    print("causal self-attention, forward + backward: flash_attention (Python tiles), "
          "F.scaled_dot_product_attention (fused), chapter 1's attention (naive)")
    print(f"torch {torch.__version__}, {where}, {args.dtype}, B={args.batch} H={args.heads} "
          f"Dh={args.head_size}, median of {args.repeats} repeats\n")
    peak = device.type == "cuda"
    header = (f"{'T':>5} | {'flash ms':>9} {'fused ms':>9} {'naive ms':>9} | {'flash/fused':>11} "
              f"{'naive/fused':>11} | saved MiB: {'flash':>7} {'fused':>7} {'naive':>8}")
    if peak:
        header += f" | peak MiB: {'flash':>7} {'fused':>7} {'naive':>8}"
    print(header)
    print("-" * len(header))
    for T in args.lengths:
        r = measure(T, args.batch, args.heads, args.head_size, args.repeats, device, dtype)
        line = (f"{T:>5} | {r['flash']['seconds'] * 1e3:9.2f} {r['fused']['seconds'] * 1e3:9.2f} "
                f"{r['naive']['seconds'] * 1e3:9.2f} | {r['flash']['ratio']:11.2f} "
                f"{r['naive']['ratio']:11.2f} | {'':>10} " + " ".join(
                    f"{r[n]['saved'] / 2**20:{w}.2f}" for n, w in
                    (("flash", 7), ("fused", 7), ("naive", 8))))
        if peak:
            line += f" | {'':>9} " + " ".join(f"{r[n]['peak'] / 2**20:{w}.2f}" for n, w in
                                              (("flash", 7), ("fused", 7), ("naive", 8)))
        print(line, flush=True)
    print("\nratios: median over repeats of each time / the fused kernel's in the same repeat; "
          "saved: bytes autograd keeps for backward (naive grows x4 per doubling of T, "
          "flash and fused x2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
