"""Training-step time and generation speed of our GPT, against a minimal GPT on PyTorch primitives.

For each size, two models compute the same function with the same weights:

* ours: ``transformer_lib.GPT`` (blocks are chapter 4's pre-LN ``EncoderLayer`` with the causal
  flag, so attention runs on ``F.scaled_dot_product_attention(is_causal=True)``);
* a minimal GPT written directly on PyTorch primitives (``nn.Embedding``, ``nn.LayerNorm``,
  ``nn.Linear``, ``F.scaled_dot_product_attention(is_causal=True)``, ``F.gelu``), without any of
  our argument checks or helper layers: the speed a plain implementation gets.

The two are checked to give the same loss first. On the CPU, times are the process's CPU time
(steadier than wall time on a shared machine; ``--clock wall`` for wall time). A training step is
forward + ``lm_loss`` + backward + an AdamW step (each model has its own optimizer). Each repeat
times a few steps of one model, then of the other (alternating which goes first); the table shows
the median time per step of each and the median of the per-repeat ratios, ours / minimal (below 1.0:
ours is faster), with their interquartile range. On a shared machine the range widens; rerun with
more repeats.

Generation: greedy ``GPT.generate`` of one sequence from an 8-token prompt up to the context
length, with and without the KV cache, in tokens per second.

Usage::

    python benchmarks/gpt.py                  # CPU, one thread, float32 (under a minute)
    python benchmarks/gpt.py --quick          # two small sizes, fewer repeats (a few seconds)
    python benchmarks/gpt.py --threads 4 --repeats 21
    python benchmarks/gpt.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lib import GPT, GPTConfig, lm_loss

SIZES = [  # (V, C, D, H, N, B): vocabulary, context, width, heads, layers, batch
    (97, 64, 64, 4, 2, 16),
    (97, 96, 96, 4, 3, 32),  # the model chapter 8 trains
    (512, 128, 192, 6, 4, 16),
    (1024, 256, 256, 8, 4, 8),
]
QUICK_SIZES = SIZES[:2]


class MinimalBlock(nn.Module):
    """One pre-LN GPT block on PyTorch primitives: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        H = self.num_heads
        h = self.ln1(x)
        q = self.q(h).view(B, T, H, D // H).transpose(1, 2)  # (B, T, D) -> (B, H, T, Dh)
        k = self.k(h).view(B, T, H, D // H).transpose(1, 2)
        v = self.v(h).view(B, T, H, D // H).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class MinimalGPT(nn.Module):
    """Token and position embeddings, the blocks, a final LayerNorm, a tied output head."""

    def __init__(self, vocab_size: int, context_length: int, d_model: int, num_heads: int,
                 num_layers: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(MinimalBlock(d_model, num_heads, 4 * d_model)
                                    for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # (B, T, V), tied


@torch.no_grad()
def copy_weights(ours: GPT, minimal: MinimalGPT) -> None:
    """Give ``minimal`` the weights of ``ours``."""
    minimal.wte.weight.copy_(ours.embed.weight)
    minimal.wpe.weight.copy_(ours.positions.weight)
    for block, layer in zip(minimal.blocks, ours.blocks.layers):
        pairs = [(block.ln1, layer.norm1), (block.q, layer.self_attn.q_proj),
                 (block.k, layer.self_attn.k_proj), (block.v, layer.self_attn.v_proj),
                 (block.o, layer.self_attn.out_proj), (block.ln2, layer.norm2),
                 (block.fc, layer.ffn.linear1), (block.proj, layer.ffn.linear2)]
        for theirs, mine in pairs:
            theirs.load_state_dict(mine.state_dict())
    minimal.ln_f.load_state_dict(ours.blocks.norm.state_dict())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# On the CPU we time with the process's CPU time, which other programs on a busy machine disturb
# much less than wall time (with several threads it adds them up); on a GPU, with wall time.
CLOCK: Callable[[], float] = time.process_time


def _seconds_per_call(fn: Callable[[], None], iters: int, device: torch.device) -> float:
    _synchronize(device)
    start = CLOCK()
    for _ in range(iters):
        fn()
    _synchronize(device)
    return (CLOCK() - start) / iters


def train_step_times(size: tuple[int, ...], repeats: int, device: torch.device,
                     target_seconds: float) -> tuple[float, float, list[float]]:
    """Median seconds per training step (ours, minimal) and the per-repeat ratios."""
    V, C, D, H, N, B = size
    torch.manual_seed(0)
    ours = GPT(GPTConfig(V, C, D, H, N)).to(device).train()
    minimal = MinimalGPT(V, C, D, H, N).to(device).train()
    copy_weights(ours, minimal)
    data = torch.randint(0, V, (B, C + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]
    torch.testing.assert_close(lm_loss(ours(x), y), lm_loss(minimal(x), y), rtol=1e-5, atol=1e-5)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4)
                  for name, model in (("ours", ours), ("minimal", minimal))}

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        def run() -> None:
            loss = lm_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    runs = {"ours": step(ours, optimizers["ours"]), "minimal": step(minimal, optimizers["minimal"])}
    for _ in range(2):  # warm up
        runs["ours"]()
        runs["minimal"]()
    iters = max(1, round(target_seconds / _seconds_per_call(runs["minimal"], 1, device)))
    times: dict[str, list[float]] = {"ours": [], "minimal": []}
    for r in range(repeats):
        order = ["ours", "minimal"] if r % 2 == 0 else ["minimal", "ours"]
        for name in order:
            times[name].append(_seconds_per_call(runs[name], iters, device))
    ratios = [a / b for a, b in zip(times["ours"], times["minimal"])]
    return statistics.median(times["ours"]), statistics.median(times["minimal"]), ratios


def generation_speed(size: tuple[int, ...], device: torch.device, repeats: int = 3,
                     prompt: int = 8) -> tuple[float, float]:
    """Tokens per second of greedy generation up to the context length, (cached, uncached)."""
    V, C, D, H, N, _ = size
    torch.manual_seed(0)
    model = GPT(GPTConfig(V, C, D, H, N)).to(device).eval()
    idx = torch.randint(0, V, (1, prompt), device=device)
    new = C - prompt
    speeds = {}
    outputs = {}
    for use_cache in (True, False):
        model.generate(idx, 2, temperature=0, use_cache=use_cache)  # warm up
        best = math.inf
        for _ in range(repeats):
            _synchronize(device)
            start = CLOCK()
            outputs[use_cache] = model.generate(idx, new, temperature=0, use_cache=use_cache)
            _synchronize(device)
            best = min(best, CLOCK() - start)
        speeds[use_cache] = new / best
    same = torch.equal(outputs[True], outputs[False])
    if not same:
        print(f"  note: cached and uncached greedy tokens differ for {size} (float near-tie)")
    return speeds[True], speeds[False]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per size (median)")
    parser.add_argument("--quick", action="store_true", help="two small sizes, 5 repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: steadier numbers on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--clock", default="auto", choices=["auto", "cpu", "wall"],
                        help="auto: CPU time of this process on the CPU, wall time on a GPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    global CLOCK
    use_cpu_clock = args.clock == "cpu" or (args.clock == "auto" and device.type == "cpu")
    CLOCK = time.process_time if use_cpu_clock else time.perf_counter
    sizes = QUICK_SIZES if args.quick else SIZES
    repeats = 5 if args.quick else args.repeats
    target = 0.05 if args.quick else 0.1
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s)")
    print("GPT training step (forward + loss + backward + AdamW) vs a minimal GPT on PyTorch "
          "primitives; greedy generation with and without the KV cache")
    print(f"torch {torch.__version__}, {where}, float32, median of {repeats} interleaved repeats, "
          f"{'CPU' if use_cpu_clock else 'wall'} time\n")
    header = (f"{'V':>5} {'C':>4} {'D':>4} {'H':>2} {'N':>2} {'B':>3} | {'ours ms':>8} | "
              f"{'minimal ms':>10} | {'ratio':>6} | {'ratio IQR':>13} | {'cached tok/s':>12} | "
              f"{'uncached tok/s':>14} | {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    ratios = []
    for size in sizes:
        ours, minimal, per_repeat = train_step_times(size, repeats, device, target)
        ratios.append(statistics.median(per_repeat))
        q1, _, q3 = statistics.quantiles(per_repeat, n=4)
        cached, uncached = generation_speed(size, device, repeats=1 if args.quick else 2)
        V, C, D, H, N, B = size
        print(f"{V:>5} {C:>4} {D:>4} {H:>2} {N:>2} {B:>3} | {ours * 1e3:8.2f} | "
              f"{minimal * 1e3:10.2f} | {ratios[-1]:6.3f} | {q1:5.3f} - {q3:5.3f} | "
              f"{cached:12.0f} | {uncached:14.0f} | {cached / uncached:7.1f}x", flush=True)
    met = sum(r <= 1.05 for r in ratios)
    print(f"\nratio = median over repeats of ours / minimal training-step time (below 1.0: ours "
          f"is faster)\ngoal ratio <= 1.05: met at {met} of {len(ratios)} sizes; geometric mean "
          f"of the ratios {statistics.geometric_mean(ratios):.3f}")
    print("generation: one sequence, greedy, from an 8-token prompt to the context length")
    return 0


if __name__ == "__main__":
    sys.exit(main())
