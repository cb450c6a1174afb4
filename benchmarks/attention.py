"""Forward + backward time of our MultiHeadAttention against PyTorch's nn.MultiheadAttention.

For each size (B, T, D, H): self-attention on a ``(B, T, D)`` batch that requires grad, both
modules holding the same weights (``from_torch``), PyTorch's created with ``batch_first=True``
and called with ``need_weights=False`` (so both take the fused attention kernel). The two are
checked to give the same output first. Each repeat times a few forward + backward passes of one
module, then of the other (alternating which goes first), and takes the ratio of the two, ours /
PyTorch's. The table shows the medians over the repeats, of each module's time and of the
ratios (below 1.0: ours is faster), and the interquartile range of the ratios: a wide range
means the machine was busy, so rerun with more repeats.

Usage::

    python benchmarks/attention.py                 # CPU, float32
    python benchmarks/attention.py --mask causal   # with a causal mask (PyTorch gets ~mask)
    python benchmarks/attention.py --repeats 21 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from transformer_lib import causal_mask, from_torch

SIZES = [  # (B, T, D, H)
    (32, 32, 64, 4),
    (16, 64, 128, 4),
    (64, 16, 512, 8),
    (8, 128, 256, 8),
    (4, 256, 512, 8),
    (2, 1024, 256, 4),
]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / iters


def measure(size: tuple[int, int, int, int], repeats: int, device: torch.device, dtype: torch.dtype,
            causal: bool = False, target_seconds: float = 0.05) -> tuple[float, float, list[float]]:
    """Median seconds per forward + backward pass (ours, PyTorch's), and the per-repeat ratios."""
    B, T, D, H = size
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(D, H, batch_first=True, device=device, dtype=dtype)
    ours = from_torch(theirs)
    x = torch.randn(B, T, D, device=device, dtype=dtype, requires_grad=True)
    mask = causal_mask(T, device=device) if causal else None  # ours: True = may attend
    torch_mask = ~mask if causal else None  # PyTorch's: True = may not attend

    def run_ours() -> None:
        ours(x, x, x, mask=mask).sum().backward()

    def run_theirs() -> None:
        theirs(x, x, x, attn_mask=torch_mask, need_weights=False)[0].sum().backward()

    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}  # others: the defaults
    torch.testing.assert_close(ours(x, x, x, mask=mask),
                               theirs(x, x, x, attn_mask=torch_mask, need_weights=False)[0], **tol)
    for fn in (run_ours, run_theirs, run_ours, run_theirs):  # warm up
        fn()
    iters = max(1, round(target_seconds / _seconds_per_call(run_theirs, 1, device)))
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for r in range(repeats):
        order = [("ours", run_ours), ("theirs", run_theirs)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(_seconds_per_call(fn, iters, device))
    ratios = [a / b for a, b in zip(times["ours"], times["theirs"])]
    return statistics.median(times["ours"]), statistics.median(times["theirs"]), ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats per size (median)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--mask", default="none", choices=["none", "causal"])
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {os.cpu_count()} cores, {torch.get_num_threads()} threads")
    print("MultiHeadAttention vs nn.MultiheadAttention(need_weights=False), self-attention, "
          f"forward + backward, mask: {args.mask}")
    print(f"torch {torch.__version__}, {where}, {args.dtype}, median of {args.repeats} repeats\n")
    header = (f"{'B':>4} {'T':>5} {'D':>5} {'H':>3} | {'ours ms':>9} | {'torch ms':>9} | "
              f"{'ratio':>6} | {'ratio IQR':>13}")
    print(header)
    print("-" * len(header))
    ratios = []
    for size in SIZES:
        ours, theirs, per_repeat = measure(size, args.repeats, device, dtype,
                                           causal=args.mask == "causal")
        ratios.append(statistics.median(per_repeat))
        q1, _, q3 = (statistics.quantiles(per_repeat, n=4) if len(per_repeat) > 1
                     else [ratios[-1]] * 3)
        B, T, D, H = size
        print(f"{B:>4} {T:>5} {D:>5} {H:>3} | {ours * 1e3:9.3f} | {theirs * 1e3:9.3f} | "
              f"{ratios[-1]:6.3f} | {q1:5.3f} - {q3:5.3f}", flush=True)
    met = sum(r <= 1.0 for r in ratios)
    print(f"\nratio = median over repeats of ours / nn.MultiheadAttention (below 1.0: ours is "
          f"faster)\ngoal ratio <= 1.0: met at {met} of {len(ratios)} sizes; geometric mean of the "
          f"ratios {statistics.geometric_mean(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
