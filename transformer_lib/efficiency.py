"""Measuring training's cost, and the switches that lower it. Hand-written for now (not generated).

Chapter 12 (efficient attention and memory) will export into this module; until it exists these
helpers live here, where lab 5 (``labs/solutions/05_gpu_training_lab.ipynb``), chapter 2, the
lab checks and the training command (``python -m transformer_lib.train``) import them:

* :func:`flops_per_token`: the training FLOPs per token of a GPT, from its shape (the cost model
  behind MFU, model FLOPs utilization);
* :func:`peak_flops` and its table :data:`PEAK_BF16_FLOPS`: what a GPU could do, the denominator
  of MFU; :func:`measured_matmul_flops`: a measured practical peak, for a CPU;
* :func:`sdpa_kernels_used`: which fused attention kernel ``F.scaled_dot_product_attention`` ran;
* :func:`saved_activation_bytes`: the memory autograd keeps for the backward pass;
* :func:`matmul_and_attention`: the two global switches of a run (TF32 matmuls, fused attention);
* :func:`synchronize`: wait for a device's queued work, before reading a clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from transformer_lib.gpt import GPTConfig

__all__ = [
    "PEAK_BF16_FLOPS",
    "flops_per_token",
    "peak_flops",
    "synchronize",
    "measured_matmul_flops",
    "sdpa_kernels_used",
    "saved_activation_bytes",
    "matmul_and_attention",
]

# --- FLOPs and peaks ----------------------------------------------------------------------------

# Dense (no sparsity) bf16 tensor-core peak of one GPU, from the vendors' data sheets, matched
# against torch.cuda.get_device_name() in this order (the first name it contains wins). V100 and
# T4 have no bf16: their fp16 peak is given. MFU is always quoted against this number, whatever
# precision a run uses: it is what the hardware could do.
PEAK_BF16_FLOPS: dict[str, float] = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "V100": 125e12,
    "T4": 65e12,
}


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    r"""Training FLOPs per token (forward and backward) of a :class:`GPT`, from its shape.

    .. math::
        \text{FLOPs/token} = 6N + 12\,L\,T\,D, \qquad N = L\,(4D^2 + 2DF) + DV

    A matrix multiplication costs 2 FLOPs per weight per token going forward and 4 going back
    (gradients for the input and for the weight): :math:`6N`, where :math:`N` counts the weights
    that multiply activations: per layer the four attention projections and the two feed-forward
    matrices, plus the output projection (with tied embeddings this is the token table, used once
    as a matrix; the lookups that read embeddings cost nothing). Biases and LayerNorms add a few
    FLOPs per parameter, well under 1%, and are left out. Attention itself multiplies
    activations by activations: :math:`QK^\top` and the weighted sum of values cost
    :math:`2 \cdot 2TD` per token per layer forward, times 3 with the backward pass. A causal
    kernel skips about half of those; by convention (PaLM, nanoGPT) they are counted in full.

    Args:
        config: the model's shape.
        seq_len: ``T``, the tokens per training window; the context length by default.

    Returns:
        FLOPs per token processed in training.
    """
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    T = config.context_length if seq_len is None else seq_len
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= config.context_length:
        raise ValueError(f"seq_len must be an int in [1, {config.context_length}], got {seq_len!r}")
    L, D, F, V = config.num_layers, config.d_model, config.d_ff, config.vocab_size
    n_matmul = L * (4 * D * D + 2 * D * F) + D * V
    return 6.0 * n_matmul + 12.0 * L * T * D


def peak_flops(device: torch.device | str) -> float | None:
    """The dense bf16 peak FLOP/s of ``device`` from :data:`PEAK_BF16_FLOPS`; None if unknown
    (a CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return _peak_for_name(torch.cuda.get_device_name(device))


def _peak_for_name(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


# --- time, kernels, memory ----------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (a GPU runs asynchronously): call it
    before reading a clock. Does nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_matmul_flops(device: torch.device | str, dtype: torch.dtype = torch.float32,
                          size: int | None = None, repeats: int = 20) -> float:
    """FLOP/s of one large square matrix multiplication, measured: a practical peak for a CPU.

    Args:
        device: where to multiply.
        dtype: the matrices' dtype.
        size: the matrices are ``(size, size)``; 1024 on a CPU, 8192 on a GPU by default.
        repeats: timed multiplications (after one untimed).

    Returns:
        ``2 * size**3`` FLOPs per multiplication divided by the fastest time of one: a peak is
        what the machine can do, and on a shared machine slower repeats measure the neighbours.
    """
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    times = []
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return 2.0 * n ** 3 / min(times)


class _OpRecorder(TorchDispatchMode):
    """Records the names of the ATen operators that run (below autograd)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def sdpa_kernels_used(fn: Callable[[], Any]) -> list[str]:
    """Which fused attention kernels ``fn()`` runs, by the ATen operators it calls.

    ``F.scaled_dot_product_attention`` picks a kernel at run time: FlashAttention
    (``_scaled_dot_product_flash_attention``, ``..._for_cpu`` on a CPU), memory-efficient
    attention, cuDNN attention, or the unfused math (a matmul, a softmax, a matmul), which shows
    no ``_scaled_dot_product_*`` operator at all.

    Returns:
        The distinct ``_scaled_dot_product_*`` operator names, in the order first seen; an empty
        list means only unfused (math) attention ran.
    """
    with _OpRecorder() as recorder:
        fn()
    seen: list[str] = []
    for name in recorder.names:
        base = name.split(".")[0]
        if base.startswith("_scaled_dot_product") and base not in seen:
            seen.append(base)
    return seen


def saved_activation_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn()`` builds a loss.

    This is the memory that training needs beyond the weights, gradients and optimizer state,
    and the part that bf16, fused attention and smaller micro-batches shrink. Each storage is
    counted once (views share it). ``fn``'s loss is then back-propagated, freeing them.
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        storages[(str(t.device), s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()
    return sum(storages.values())


# --- switches -----------------------------------------------------------------------------------


@contextlib.contextmanager
def matmul_and_attention(tf32: bool, fused_attention: bool) -> Iterator[None]:
    """The two global switches of a run, restored on exit.

    Args:
        tf32: float32 matmuls on TF32 tensor cores
            (``torch.set_float32_matmul_precision("high")``; ``"highest"`` otherwise).
        fused_attention: let ``F.scaled_dot_product_attention`` pick a fused kernel; ``False``
            forces its unfused math kernel (``sdpa_kernel(SDPBackend.MATH)``).
    """
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        with contextlib.nullcontext() if fused_attention else sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.set_float32_matmul_precision(before)
