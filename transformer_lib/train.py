"""The training command: ``python -m transformer_lib.train``. Hand-written (not generated from a
chapter).

It trains chapter 8's :class:`~transformer_lib.gpt.GPT` on the Python standard library's own
source with the techniques that lab 5 (``labs/solutions/05_gpu_training_lab.ipynb``) measures one
at a time: TF32 matrix multiplications, bf16 autocast, fused attention, ``torch.compile``, fused
AdamW, gradient accumulation, a warmup + cosine learning rate, gradient clipping, and
checkpoints to resume from. Each is a field of :class:`TrainConfig`; a preset picks them all::

    python -m transformer_lib.train --preset cpu-smoke --max-steps 50 --out runs/smoke
    python -m transformer_lib.train --preset gpu --out runs/gpu            # a CUDA GPU
    # go on from DIR/checkpoint
    python -m transformer_lib.train --preset gpu --out runs/gpu --resume
    torchrun --standalone --nproc_per_node 8 -m transformer_lib.train --preset gpu --out runs/ddp

Under ``torchrun`` (which sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``) it trains with
``DistributedDataParallel``: NCCL on GPUs, gloo on CPUs. Every process draws the same global batch
of ``batch_size * world_size`` windows from the same seeded generator and keeps its own slice, so
ranks see different data and the run computes what one process computes on the whole global
batch. Rank 0 alone writes ``DIR/metrics.jsonl`` (one JSON object per logged step: ``step``,
``loss``, ``lr``, ``tokens_per_sec``, ``grad_norm``, ``mfu``, and ``val_loss`` when evaluated)
and ``DIR/checkpoint/`` (:func:`~transformer_lib.training.save_checkpoint`: safetensors weights;
optimizer, step and generator states read back with ``torch.load(weights_only=True)``).

The file reads top to bottom: the configuration and its presets, the data and the optimizer,
the steps of a run (:func:`train` is their outline), and the command. What it measures (FLOPs
per token, a GPU's peak for MFU) and its speed switches come from :mod:`transformer_lib.efficiency`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from transformer_lib.efficiency import (
    flops_per_token,
    matmul_and_attention,
    peak_flops,
    synchronize,
)
from transformer_lib.gpt import GPT, CharTokenizer, GPTConfig, lm_loss, python_source_files
from transformer_lib.training import (
    clip_grad_norm,
    latest_checkpoint,
    load_checkpoint,
    progress_file,
    read_checkpoint_state,
    save_checkpoint,
    warmup_cosine_schedule,
)

__all__ = ["PRESETS", "TrainConfig", "ConfigError", "load_corpus", "get_batch", "make_optimizer",
           "train", "main"]

# --- configuration ------------------------------------------------------------------------------


def _setting(default: Any, why: str, **metadata: Any) -> Any:
    """A :class:`TrainConfig` field: its default, the reason ``--help`` shows, any ``choices``."""
    return field(default=default, metadata={"help": why, **metadata})


@dataclass(frozen=True)
class TrainConfig:
    """A training run of the command, one reason per field. Presets are in :data:`PRESETS`."""

    # the model (chapter 8's GPTConfig; the vocabulary comes from the data)
    context_length: int = _setting(128, "T: characters per training window")
    d_model: int = _setting(128, "D: the width of every position's vector")
    num_heads: int = _setting(4, "H: attention heads per layer; must divide d_model")
    num_layers: int = _setting(4, "N: transformer blocks")
    dropout: float = _setting(0.0, "on embeddings, attention and sub-layer outputs; "
                              "0 for short runs")
    vocab_size: int | None = _setting(None, "None: the tokenizer's; required with data \"random\"")
    # the data
    data: str = _setting("stdlib", "\"stdlib\": the standard library's source; \"random\": random "
                                   "ids, for speed", choices=("stdlib", "random"))
    max_chars: int = _setting(1_000_000,
                              "characters of source to read (every tenth file is held out)")
    max_file_bytes: int = _setting(32_000, "larger files are skipped; the whole library is about "
                                           "10M characters")
    # optimization
    batch_size: int = _setting(32, "windows per micro-batch in each process")
    grad_accum: int = _setting(1, "micro-batches per update: the global batch is "
                                  "batch_size*grad_accum*world")
    max_steps: int = _setting(1000, "updates; the cosine decay ends here")
    lr: float = _setting(1e-3, "the peak learning rate, reached after warmup")
    min_lr: float = _setting(1e-4, "where the cosine decay ends")
    warmup_steps: int = _setting(100, "linear warmup from 0 to lr")
    weight_decay: float = _setting(0.1, "AdamW's, on matrices and embeddings only")
    max_grad_norm: float | None = _setting(1.0, "the largest global gradient norm; None (on the "
                                                "command line: none) turns clipping off")
    # speed
    dtype: str = _setting("float32", "\"bfloat16\": autocast runs matmuls and attention in bf16, "
                                     "weights stay float32", choices=("float32", "bfloat16"))
    tf32: bool = _setting(False,
                          "float32 matmuls on TF32 tensor cores (Ampere and later GPUs only)")
    fused_attention: bool = _setting(True, "off: SDPA's unfused math kernel "
                                     "(a (T, T) matrix per head)")
    compile: bool = _setting(False, "torch.compile the model")
    fused_adamw: bool = _setting(False, "one fused kernel for the whole AdamW update")
    # bookkeeping
    eval_every: int = _setting(100, "updates between validation losses (and at the end)")
    eval_batches: int = _setting(10, "global batches (of batch_size * grad_accum * world) per "
                                     "validation loss")
    log_every: int = _setting(10, "updates between lines of metrics.jsonl")
    checkpoint_every: int = _setting(0, "updates between checkpoints; 0: at the end only")
    seed: int = _setting(0, "the initialization and the data order")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an int, got {value!r}")
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be a bool, got {value!r}")
            if f.type == "float | None" and value is None:
                continue
            if f.type.startswith("float") and (isinstance(value, bool)
                                               or not isinstance(value, (int, float))
                                               or not abs(value) <= torch.finfo(torch.float32).max):
                # the optimizer computes in float32: a larger (or infinite, or NaN) value
                # would fail in the middle of the first update
                raise ValueError(f"{f.name} must be a finite number within float32's range "
                                 f"(|x| <= 3.4e38), got {value!r}")
        for name in ("context_length", "d_model", "num_heads", "num_layers", "max_chars",
                     "max_file_bytes", "batch_size", "grad_accum", "max_steps", "eval_every",
                     "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps must be < max_steps, got warmup_steps="
                             f"{self.warmup_steps} and max_steps={self.max_steps}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model must be divisible by num_heads, got {self.d_model} and "
                             f"{self.num_heads}")
        self._check_choice("data")
        if self.data == "random" and self.vocab_size is None:
            raise ValueError("vocab_size must be set when data='random'")
        if self.vocab_size is not None and (isinstance(self.vocab_size, bool)
                                            or not isinstance(self.vocab_size, int)
                                            or self.vocab_size < 2):
            raise ValueError(f"vocab_size must be None or an int >= 2, got {self.vocab_size!r}")
        self._check_choice("dtype")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"lr must be > 0 and min_lr in [0, lr], got lr={self.lr!r} and "
                             f"min_lr={self.min_lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be None (no clipping) or > 0, got "
                             f"{self.max_grad_norm!r}")

    def _check_choice(self, name: str) -> None:
        """Raise ValueError unless field ``name`` holds one of its ``choices``."""
        choices = self.__dataclass_fields__[name].metadata["choices"]
        if getattr(self, name) not in choices:
            raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, "
                             f"got {getattr(self, name)!r}")

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model's :class:`GPTConfig` for a vocabulary of ``vocab_size``."""
        return GPTConfig(vocab_size=self.vocab_size or vocab_size,
                         context_length=self.context_length,
                         d_model=self.d_model, num_heads=self.num_heads, num_layers=self.num_layers,
                         dropout=self.dropout)


PRESETS: dict[str, TrainConfig] = {
    # seconds on a CPU: a test of the whole pipeline, not a useful model
    "cpu-smoke": TrainConfig(context_length=64, d_model=64, num_heads=4, num_layers=2,
                             max_chars=200_000, batch_size=16, max_steps=50, lr=3e-3, min_lr=3e-4,
                             warmup_steps=10, eval_every=25, eval_batches=4, log_every=5),
    # minutes on a laptop CPU: chapter 8's model, trained longer
    "cpu": TrainConfig(context_length=64, d_model=128, num_heads=4, num_layers=4,
                       batch_size=32, max_steps=1000, lr=3e-3, min_lr=3e-4, warmup_steps=50,
                       eval_every=100, log_every=10),
    # a few minutes on one recent GPU: 10.7M parameters, every technique on, 33M tokens (about
    # four passes over the whole library)
    "gpu": TrainConfig(context_length=256, d_model=384, num_heads=6, num_layers=6, dropout=0.1,
                       max_chars=100_000_000, max_file_bytes=10_000_000, batch_size=64,
                       max_steps=2000, lr=1.5e-3,
                       min_lr=1.5e-4, warmup_steps=200, dtype="bfloat16", tf32=True,
                       compile=True, fused_adamw=True, eval_every=250, eval_batches=20,
                       log_every=25),
    # throughput only: GPT-2 small's shape (124M parameters) on random tokens, for MFU
    "gpt2-small-bench": TrainConfig(context_length=1024, d_model=768, num_heads=12, num_layers=12,
                                    vocab_size=50304, data="random", batch_size=16,
                                    max_steps=60, lr=6e-4, min_lr=6e-5, warmup_steps=10,
                                    dtype="bfloat16", tf32=True, compile=True, fused_adamw=True,
                                    eval_every=60, eval_batches=2, log_every=10),
}


class ConfigError(ValueError):
    """A setting of a run that cannot work (a flag's value, the output folder, the device).

    :func:`train` raises it before any work starts, and before it writes anything; the command
    prints it as a one-line usage error."""


# --- data ---------------------------------------------------------------------------------------


def load_corpus(max_chars: int = 1_000_000, max_file_bytes: int = 32_000,
                seed: int = 0) -> tuple[CharTokenizer, Tensor, Tensor]:
    """The standard library's source as training and validation ids, split by file.

    As chapter 8: every tenth file (of :func:`python_source_files`, sorted by path) is held out;
    the tokenizer's characters are the training text's (others map to UNK).

    Returns:
        ``(tokenizer, train_ids, val_ids)``, the ids as 1-d int64 tensors.
    """
    files = python_source_files(max_chars=max_chars, max_file_bytes=max_file_bytes, seed=seed)
    train_text = "\n".join(text for i, (_, text) in enumerate(files) if i % 10)
    val_text = "\n".join(text for _, text in files[::10])
    tokenizer = CharTokenizer.from_text(train_text)
    return tokenizer, tokenizer.encode(train_text), tokenizer.encode(val_text)


def get_batch(data: Tensor, batch_size: int, context_length: int, generator: torch.Generator,
              rank: int = 0, world_size: int = 1) -> tuple[Tensor, Tensor]:
    """This process's slice of a global batch of random windows of ``data``.

    All processes draw the same ``batch_size * world_size`` window starts from ``generator``
    (seeded alike) and keep rows ``rank * batch_size`` to ``(rank + 1) * batch_size``, so together
    they see exactly the batch that one process would draw with ``batch_size * world_size``.

    Args:
        data: ``(N,)`` token ids, on the device the batch should be on.
        batch_size: windows for this process.
        context_length: ``T``.
        generator: a CPU generator; every process must hold the same state.
        rank, world_size: this process's place among ``world_size``.

    Returns:
        ``(x, y)``, both ``(batch_size, T)``: ``y`` is ``x`` shifted left by one.
    """
    if len(data) <= context_length + 1:
        raise ValueError(f"data has {len(data)} tokens, too few for windows of "
                         f"context_length + 1 = {context_length + 1}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    starts = torch.randint(len(data) - context_length - 1, (batch_size * world_size,),
                           generator=generator)[rank * batch_size:(rank + 1) * batch_size]
    offsets = starts.to(data.device)[:, None] + torch.arange(context_length + 1, device=data.device)
    windows = data[offsets]  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                   fused: bool = False) -> torch.optim.AdamW:
    """AdamW as in GPT-2 and nanoGPT: betas (0.9, 0.95), weight decay on matrices and
    embeddings only (not on biases and LayerNorm gains); ``fused=True`` uses one kernel for all
    parameters' updates (``foreach`` otherwise)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused or None,
                             foreach=None if fused else True)


# --- the steps of a run -------------------------------------------------------------------------
# train(), at the end of this section, is their outline: join the processes, load the data, build
# the model (or resume it), then update, log, evaluate and save until the last step, and sum up.


@dataclass
class _Dist:
    """This process's place among the ``world_size`` processes that torchrun started (or 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device | str | None) -> tuple[_Dist, torch.device]:
    """Join the process group when launched by torchrun; pick this process's device."""
    env = _Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                int(os.environ.get("WORLD_SIZE", 1)))
    if device is None:
        device = torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    device = _checked_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return env, device


def _checked_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch.device that this PyTorch can train on, or a ConfigError."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {str(device)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} needs a CUDA GPU, "
                              f"and this PyTorch sees none (torch {torch.__version__}, "
                              f"torch.cuda.is_available() is False): use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def _last_step(config: TrainConfig, stop_after: int | None) -> int:
    """The update a run ends with: ``max_steps``, or ``stop_after`` if that comes first."""
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int)
                                   or stop_after < 1):
        raise ValueError(f"stop_after must be None or a positive int, got {stop_after!r}")
    return config.max_steps if stop_after is None else min(stop_after, config.max_steps)


def _run_folder(out: str | Path, resume: bool, overwrite: bool) -> Path:
    """The output folder, or a ConfigError when it would lose an earlier run's results."""
    if isinstance(out, str) and not out.strip():
        raise ConfigError("out must name a folder, got an empty string")
    if not isinstance(out, (str, Path)):
        raise ConfigError(f"out must be a str or a Path, got {type(out).__name__}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out must be a folder, and {out} is a file")
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: resume continues the run in "
                          "out, overwrite deletes it")
    earlier = [name for name in ("metrics.jsonl", "checkpoint") if (out / name).exists()]
    if earlier and not (resume or overwrite):
        raise ConfigError(f"{out} already holds a run ({' and '.join(earlier)}): pass --resume to "
                          f"continue it, --overwrite to delete it and start over, or choose "
                          f"another --out")
    return out


@dataclass(frozen=True)
class _Data:
    """The token ids a run trains and validates on, and the vocabulary they come from."""

    train_ids: Tensor  # (N,) int64
    val_ids: Tensor  # (M,) int64
    vocab_size: int  # the data's; a config may ask for a larger one
    chars: str  # the tokenizer's characters, saved with the checkpoint ("" for random ids)

    def to(self, device: torch.device) -> _Data:
        return replace(self, train_ids=self.train_ids.to(device), val_ids=self.val_ids.to(device))


def _load_data(config: TrainConfig) -> _Data:
    """The data ``config`` names, on the CPU, or a ConfigError when it cannot work (a vocabulary
    smaller than the data's, too few characters for one window)."""
    if config.data == "random":
        n = max(4 * config.context_length, config.batch_size * config.context_length)
        g = torch.Generator().manual_seed(config.seed + 3)
        train_ids = torch.randint(config.vocab_size, (n,), generator=g)
        val_ids = torch.randint(config.vocab_size, (n,), generator=g)
        return _Data(train_ids, val_ids, config.vocab_size, "")
    tokenizer, train_ids, val_ids = load_corpus(config.max_chars, config.max_file_bytes)
    if config.vocab_size is not None and config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"vocab_size must be at least the {tokenizer.vocab_size} characters of "
                          f"the data's tokenizer (or unset), got {config.vocab_size}")
    if min(len(train_ids), len(val_ids)) <= config.context_length + 1:
        raise ConfigError(f"max_chars={config.max_chars} (with max_file_bytes="
                          f"{config.max_file_bytes}) gives {len(train_ids)} training and "
                          f"{len(val_ids)} validation characters; each must exceed "
                          f"context_length + 1 = {config.context_length + 1}: raise max_chars")
    return _Data(train_ids, val_ids, tokenizer.vocab_size, "".join(tokenizer.chars))


def _prepare_folder(out: Path, overwrite: bool, env: _Dist) -> None:
    """Create ``out`` on rank 0, deleting the run it holds first when ``overwrite``; every rank
    waits for it."""
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:  # start over: nothing of the earlier run may mix with this one
            (out / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(out / "checkpoint", ignore_errors=True)
    if env.enabled:
        dist.barrier()  # no rank reads the folder before rank 0 has cleared it


@dataclass
class _Run:
    """What the steps of a run share: the settings, this process, the data and the model."""

    config: TrainConfig
    env: _Dist
    device: torch.device
    data: _Data  # on the device
    model: GPT
    optimizer: torch.optim.AdamW
    generator: torch.Generator  # draws the training windows: the data order, saved and restored
    runner: nn.Module  # what runs forward and backward: the model, then compiled and/or in DDP
    flops_per_token: float  # of the model, for MFU
    peak: float | None  # the device's peak FLOP/s, for MFU; None if unknown (a CPU)

    @property
    def tokens_per_step(self) -> int:
        c = self.config
        return c.batch_size * c.grad_accum * self.env.world_size * c.context_length

    def mfu(self, tokens_per_sec: float) -> float | None:
        """The model FLOPs utilization of a rate: the FLOP/s it means over what the GPUs could
        do."""
        if self.peak is None:
            return None
        return tokens_per_sec * self.flops_per_token / (self.peak * self.env.world_size)


def _build(config: TrainConfig, data: _Data, env: _Dist, device: torch.device) -> _Run:
    """The model, its optimizer and the data order, alike in every process (all seeded)."""
    gpt_config = config.gpt_config(data.vocab_size)
    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = GPT(gpt_config).to(device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay, config.fused_adamw)
    generator = torch.Generator().manual_seed(config.seed + 1)
    return _Run(config, env, device, data.to(device), model, optimizer, generator, runner=model,
                flops_per_token=flops_per_token(gpt_config), peak=peak_flops(device))


# Fields that a resumed run may change: they decide what is logged and saved, and compiling gives
# the same numbers (to rounding). Every other field changes the run it would continue.
_RESUMABLE_CHANGES = {"eval_every", "eval_batches", "log_every", "checkpoint_every", "compile"}


def _saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings under today's names: ``grad_clip`` (0 = no clipping) is now
    ``max_grad_norm`` (None = no clipping), so a run saved before the rename resumes."""
    saved = dict(saved)
    if "grad_clip" in saved and "max_grad_norm" not in saved:
        saved["max_grad_norm"] = saved.pop("grad_clip") or None
    return saved


def _check_same_run(checkpoint: Path, config: TrainConfig) -> None:
    """Raise ValueError, naming the fields, if ``checkpoint`` was saved with other settings."""
    saved = _saved_config(read_checkpoint_state(checkpoint)["config"])
    changed = [f"{name} ({saved[name]!r} -> {value!r})" for name, value in asdict(config).items()
               if name not in _RESUMABLE_CHANGES and saved.get(name) != value]
    if changed:
        raise ValueError(f"cannot resume {checkpoint}: it was saved by a run with other settings: "
                         f"{', '.join(changed)}. Resume with the same flags, or start a new --out")


def _dropout_rng_state(device: torch.device) -> dict[str, Tensor | None]:
    """The random state dropout draws from: the CPU's, and this process's GPU's (None on a CPU)."""
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_dropout_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`_dropout_rng_state` returned (from a checkpoint's state)."""
    torch.set_rng_state(state["rng"])  # dropout's random numbers on the CPU
    if device.type == "cuda" and state.get("cuda_rng") is not None:  # ... and on the GPU
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _resume(run: _Run, checkpoint: Path) -> int:
    """Load ``checkpoint`` into the run: weights, optimizer, data order and dropout's random
    state, so that the run goes on exactly as if never stopped (refused, with a ValueError, when
    it was saved with other settings). Returns its step: the last update done."""
    _check_same_run(checkpoint, run.config)
    state = load_checkpoint(checkpoint, run.model, run.optimizer)
    run.generator.set_state(state["generator"])
    _set_dropout_rng_state(state, run.device)
    return state["step"]


def _compile_and_distribute(run: _Run) -> None:
    """Set the runner: the model compiled if the config says so, wrapped in DDP under torchrun."""
    runner: nn.Module = torch.compile(run.model) if run.config.compile else run.model
    if run.env.enabled:
        runner = nn.parallel.DistributedDataParallel(
            runner, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    run.runner = runner


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _update(run: _Run, step: int) -> tuple[float, Tensor, Tensor | None]:
    """Update ``step``: set its learning rate (warmup, then cosine decay), run forward and backward
    over ``grad_accum`` micro-batches, clip the gradients, step the optimizer.

    Returns:
        ``(lr, loss, grad_norm)``: the learning rate; this process's loss, the mean over its
        micro-batches (a tensor still on the device: reading it waits for the device); and the
        global gradient norm before clipping (None when clipping is off).
    """
    config, env = run.config, run.env
    lr = config.lr * warmup_cosine_schedule(step, config.warmup_steps, config.max_steps,
                                            config.min_lr / config.lr)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(config.grad_accum):
        x, y = get_batch(run.data.train_ids, config.batch_size, config.context_length,
                         run.generator, env.rank, env.world_size)
        # DDP averages gradients across processes in backward(); between the micro-batches of
        # one update there is nothing to average yet
        last = micro == config.grad_accum - 1
        sync = run.runner.no_sync() if env.enabled and not last else contextlib.nullcontext()
        with sync:
            with _autocast(run.device, config.dtype):
                loss = lm_loss(run.runner(x), y) / config.grad_accum
            loss.backward()
        loss_sum += loss.detach()
    grad_norm = (clip_grad_norm(run.model.parameters(), config.max_grad_norm)
                 if config.max_grad_norm is not None else None)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr, loss_sum, grad_norm


def _mean_over_ranks(value: Tensor, env: _Dist) -> float:
    if env.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= env.world_size
    return float(value)


def _evaluate(run: _Run) -> float:
    """The validation loss: the mean over ``eval_batches`` global batches, the same windows every
    time, averaged over the processes."""
    config, env = run.config, run.env
    run.runner.eval()
    g = torch.Generator().manual_seed(config.seed + 2)  # the same windows every time
    total = torch.zeros((), device=run.device)
    micro_batches = config.eval_batches * config.grad_accum  # global batches, as in training
    with torch.no_grad(), _autocast(run.device, config.dtype):
        for _ in range(micro_batches):
            x, y = get_batch(run.data.val_ids, config.batch_size, config.context_length, g,
                             env.rank, env.world_size)
            total += lm_loss(run.runner(x), y).float()
    run.runner.train()
    return _mean_over_ranks(total / micro_batches, env)


def _save(run: _Run, checkpoint: Path, step: int) -> None:
    """Save after update ``step`` (rank 0) all that resuming needs: weights, optimizer, the data
    order, dropout's random state, the settings and the vocabulary. Every rank waits for it."""
    if run.env.main:
        save_checkpoint(checkpoint, run.model, run.optimizer, step=step,
                        generator=run.generator.get_state(), **_dropout_rng_state(run.device),
                        config=asdict(run.config), chars=run.data.chars,
                        vocab_size=run.data.vocab_size)
    if run.env.enabled:
        dist.barrier()


def _write_text_whole(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, flushed, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_metrics(path: Path, up_to: int) -> list[str]:
    """The lines of ``metrics.jsonl`` up to step ``up_to`` (a resumed run rewrites the rest)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the process was killed
            continue
        if record["step"] <= up_to:
            kept.append(line)
    return kept


class _Log:
    """Where a run reports, and what it sums up: ``metrics.jsonl`` and the progress bar (rank 0
    only), tokens per second over each interval between lines, the last training and validation
    losses, the time since the start."""

    def __init__(self, path: Path, run: _Run, start_step: int, progress: bool) -> None:
        history = _read_metrics(path, start_step) if start_step else []
        self.file = None
        if run.env.main:  # the lines up to the checkpoint's step, replaced whole, then appended to
            _write_text_whole(path, "".join(line + "\n" for line in history))
            self.file = path.open("a")
        self.bar = tqdm(total=run.config.max_steps, initial=start_step, desc="training",
                        unit="step", disable=not (progress and run.env.main), file=progress_file(),
                        dynamic_ncols=True)
        self.device = run.device
        self.rates: list[float] = []  # tokens per second of every interval
        self.final_loss, self.val_loss = math.nan, None
        self.began = time.perf_counter()
        self.new_interval()

    def new_interval(self) -> None:
        """Start timing anew, once the device has finished the work queued so far."""
        synchronize(self.device)
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def count_update(self) -> None:
        self.interval_steps += 1
        self.bar.update(1)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time inside out of the interval (saving a checkpoint is not training)."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.interval_start += time.perf_counter() - began

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


def _report(run: _Run, log: _Log, step: int, lr: float, loss: Tensor, grad_norm: Tensor | None,
            evaluate: bool) -> None:
    """Write the line of update ``step``: the loss (the mean over the processes), the learning
    rate, tokens per second since the last line, the gradient norm, MFU, the time since the
    start, and when ``evaluate`` the validation loss. The next interval starts after it."""
    loss_value = _mean_over_ranks(loss, run.env)  # waits for the device: a sync
    rate = run.tokens_per_step * log.interval_steps / (time.perf_counter() - log.interval_start)
    log.rates.append(rate)
    mfu = run.mfu(rate)
    record: dict[str, Any] = {
        "step": step, "loss": round(loss_value, 6), "lr": lr, "tokens_per_sec": round(rate, 1),
        "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
        "mfu": None if mfu is None else round(mfu, 5),
        "elapsed": round(time.perf_counter() - log.began, 3),
    }
    if evaluate:
        record["val_loss"] = log.val_loss = round(_evaluate(run), 6)
    log.final_loss = loss_value
    if log.file is not None:
        log.file.write(json.dumps(record) + "\n")
        log.file.flush()
    log.bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}")
    log.new_interval()


def _summary(run: _Run, log: _Log, last_step: int) -> dict[str, Any]:
    """What :func:`train` returns (see there)."""
    rate = sorted(log.rates)[len(log.rates) // 2] if log.rates else None  # the median
    return {
        "final_loss": log.final_loss, "val_loss": log.val_loss, "steps": last_step,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "tokens_per_step": run.tokens_per_step, "tokens_per_sec": rate,
        "mfu": None if rate is None else run.mfu(rate),
        "seconds": time.perf_counter() - log.began, "world_size": run.env.world_size,
        "device": str(run.device),
    }


def train(config: TrainConfig, out: str | Path, *, resume: bool = False,
          device: torch.device | str | None = None, progress: bool = True,
          stop_after: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train a GPT as ``config`` says; write ``out/metrics.jsonl`` and ``out/checkpoint/``.

    Under torchrun, every process calls this; see the module's docstring.

    Args:
        config: the run.
        out: the output folder (created).
        resume: go on from ``out/checkpoint`` (exactly: same batches, same updates) if it exists.
        device: where to train; the GPU of this process's local rank if there is one, else the CPU.
        progress: show a progress bar (rank 0 only).
        stop_after: stop after this update, with a checkpoint, as if interrupted (the schedule
            still spans ``max_steps``); resume later with ``resume=True``.
        overwrite: delete the run that ``out`` already holds and start over. Without it (or
            ``resume``), a folder that holds ``metrics.jsonl`` or ``checkpoint/`` is refused.

    Returns:
        A summary: ``steps``, ``parameters``, ``tokens_per_step``, ``final_loss``, ``val_loss``,
        ``tokens_per_sec`` (the median of the logged intervals), ``mfu`` (None without a known
        peak), ``seconds``, ``world_size``, ``device``.

    Raises:
        ConfigError: a setting that cannot work (the output folder, the device, a vocabulary
            smaller than the data's, too little data), before anything is written.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    last_step = _last_step(config, stop_after)
    out = _run_folder(out, resume, overwrite)  # every rank checks, before rank 0 writes anything
    env, device = _setup_distributed(device)
    data = _load_data(config)
    _prepare_folder(out, overwrite, env)

    run = _build(config, data, env, device)
    checkpoint = out / "checkpoint"
    resuming = resume and latest_checkpoint(checkpoint) is not None
    start_step = _resume(run, checkpoint) if resuming else 0
    _compile_and_distribute(run)

    log = _Log(out / "metrics.jsonl", run, start_step, progress)
    run.runner.train()
    with matmul_and_attention(config.tf32, config.fused_attention):
        log.new_interval()
        for step in range(start_step + 1, last_step + 1):
            lr, loss, grad_norm = _update(run, step)
            log.count_update()
            evaluate = step % config.eval_every == 0 or step == last_step
            if step % config.log_every == 0 or evaluate:
                _report(run, log, step, lr, loss, grad_norm, evaluate)
            if (config.checkpoint_every and step % config.checkpoint_every == 0) \
                    or step == last_step:
                with log.paused():
                    _save(run, checkpoint, step)
    log.close()
    return _summary(run, log, last_step)


# --- the command --------------------------------------------------------------------------------


def _field_reasons() -> dict[str, str]:
    """Each TrainConfig field's reason, from the field's metadata: what ``--help`` shows."""
    return {f.name: f.metadata["help"] for f in fields(TrainConfig) if f.metadata.get("help")}


class _NoneValue:
    """What a command-line ``none`` parses to: the setting's ``None`` (``None`` itself means
    "the flag was not given")."""

    def __repr__(self) -> str:
        return "none"


_NONE = _NoneValue()


def _float_or_none(text: str) -> float | _NoneValue:
    """A flag's value for a ``float | None`` setting: a number, or ``none``."""
    return _NONE if text.strip().lower() == "none" else float(text)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives, under today's names; ``none`` becomes ``None``."""
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    if args.grad_clip is not None:
        if "max_grad_norm" in overrides:
            raise ValueError("--grad-clip is the old name of --max-grad-norm: give only one")
        print("warning: --grad-clip is renamed --max-grad-norm (none: no clipping); the old "
              "name will be removed", file=sys.stderr)
        overrides["max_grad_norm"] = args.grad_clip or _NONE
    return {name: None if value is _NONE else value for name, value in overrides.items()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m transformer_lib.train",
        description="Train chapter 8's GPT on the Python standard library's source. Under "
                    "torchrun, with DistributedDataParallel.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke",
                        help="a starting configuration; the flags below override it")
    parser.add_argument("--out", required=True, help="output folder: metrics.jsonl, checkpoint/")
    parser.add_argument("--resume", action="store_true",
                        help="go on from OUT/checkpoint if present")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run that OUT holds and start over (without it, or "
                             "--resume, a folder holding a run is refused)")
    parser.add_argument("--device",
                        help="cpu, cuda, cuda:1 ... (default: this rank's GPU, or the CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="stop after update N with a checkpoint, as if interrupted")
    types = {"int": int, "float": float, "str": str, "int | None": int,
             "float | None": _float_or_none}
    reasons = _field_reasons()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = reasons.get(f.name, "").replace("%", "%%")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, type=types[f.type], default=None, help=help_text,
                                choices=f.metadata.get("choices"))
    parser.add_argument("--grad-clip", type=float, metavar="C",
                        help="the old name of --max-grad-norm (0: none); it still works, with a "
                             "warning")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command; ``argv`` defaults to ``sys.argv[1:]``."""
    args = _parser().parse_args(argv)
    try:
        overrides = _overrides(args)
        config = replace(PRESETS[args.preset], **overrides)
        checkpoint = Path(args.out) / "checkpoint"
        if args.resume and latest_checkpoint(checkpoint) is not None:
            _check_same_run(checkpoint, config)
    except ValueError as err:
        _parser().error(str(err))
    try:
        result = train(config, args.out, resume=args.resume, device=args.device,
                       progress=not args.no_progress, stop_after=args.stop_after,
                       overwrite=args.overwrite)
    except ConfigError as err:
        _parser().error(str(err))
    if int(os.environ.get("RANK", 0)) == 0:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
        print(json.dumps(shown), file=sys.stdout)
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
