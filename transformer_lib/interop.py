"""Conversion from PyTorch's and Hugging Face's reference modules to ours. Hand-written (not
generated from a chapter).

The logic is explained in chapter 2 (``chapters/02_multi_head_attention.ipynb``, section
"Checking against PyTorch"): ``nn.MultiheadAttention`` packs :math:`W^Q, W^K, W^V` into one
``in_proj_weight`` of shape ``(3D, D)``, which we split into ``q_proj``, ``k_proj`` and
``v_proj``. Each supported PyTorch type has a converter registered in ``_CONVERTERS``; later
chapters add converters for PyTorch's encoder and decoder layers and stacks.

:func:`from_hf` does the same for Hugging Face ``transformers`` models, looked up by class name
in ``_HF_CONVERTERS`` (so that this module does not import ``transformers``). Chapter 10
(``chapters/10_pretrained_encoders.ipynb``) explains the ``BertModel`` mapping, which lives in
``pretrained.py``; chapter 11 (``chapters/11_modern_decoders.ipynb``) the ``LlamaForCausalLM``
one, which lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transformer_lib.decoder import Decoder, DecoderLayer
from transformer_lib.encoder import Encoder, EncoderLayer, FeedForward
from transformer_lib.gpt import GPT, GPTConfig
from transformer_lib.model import EncoderDecoder
from transformer_lib.multihead import MultiHeadAttention
from transformer_lib.pretrained import EncoderModel, encoder_config_from_bert, load_bert_weights

__all__ = ["from_hf", "from_torch"]

_Converter = Callable[[Any], nn.Module]

# PyTorch module type -> function returning our equivalent. Exact types only: a subclass may
# compute something else (torch.ao's quantizable MultiheadAttention, for one).
_CONVERTERS: dict[type[nn.Module], _Converter] = {}


def _register(torch_type: type[nn.Module]) -> Callable[[_Converter], _Converter]:
    """Decorator: register a converter for ``torch_type``."""

    def decorator(converter: _Converter) -> _Converter:
        _CONVERTERS[torch_type] = converter
        return converter

    return decorator


def from_torch(module: nn.Module) -> nn.Module:
    """Our equivalent of a PyTorch reference module, with a copy of its weights.

    The result computes the same function as ``module`` (to float32 rounding), has the same
    dtype, device and train/eval mode, and owns its parameters (changing one model does not
    change the other). Our modules are always batch first: feed them ``(B, T, D)`` even if
    ``module`` was created with ``batch_first=False``. Remember that PyTorch's boolean masks
    mean "masked out" where ours mean "may attend": pass ``~mask``.

    Supported: ``nn.MultiheadAttention`` -> :class:`MultiHeadAttention`;
    ``nn.TransformerEncoderLayer`` -> :class:`EncoderLayer`; ``nn.TransformerEncoder`` ->
    :class:`Encoder` (each layer's own weights, and the final norm if it has one);
    ``nn.TransformerDecoderLayer`` -> :class:`DecoderLayer` (``multihead_attn`` becomes
    ``cross_attn``); ``nn.TransformerDecoder`` -> :class:`Decoder`; ``nn.Transformer`` ->
    :class:`EncoderDecoder` (the stacks on embedded inputs; ``nn.Transformer`` has no embeddings).

    Args:
        module: the PyTorch module to convert.

    Returns:
        The converted module.

    Raises:
        TypeError: ``module`` is of a type we cannot convert.
        ValueError: ``module`` uses a setting our module does not have; the message names it.
    """
    converter = _CONVERTERS.get(type(module))
    if converter is None:
        supported = ", ".join(sorted(f"nn.{t.__name__}" for t in _CONVERTERS))
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        raise TypeError(f"from_torch cannot convert {name}; supported types: {supported}")
    return converter(module)


@torch.no_grad()
def _copy_linear(target: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    target.weight.copy_(weight)
    if bias is not None:
        target.bias.copy_(bias)


@_register(nn.MultiheadAttention)
def _from_multihead_attention(module: nn.MultiheadAttention) -> MultiHeadAttention:
    if not module._qkv_same_embed_dim:
        raise ValueError(f"from_torch supports nn.MultiheadAttention only with kdim == vdim == "
                         f"embed_dim (MultiHeadAttention projects keys and values from width "
                         f"d_model), got embed_dim={module.embed_dim}, kdim={module.kdim}, "
                         f"vdim={module.vdim}")
    if module.bias_k is not None or module.bias_v is not None:
        raise ValueError("from_torch does not support nn.MultiheadAttention with add_bias_kv=True "
                         "(extra learned key and value rows): MultiHeadAttention has no such "
                         "setting")
    if module.add_zero_attn:
        raise ValueError("from_torch does not support nn.MultiheadAttention with "
                         "add_zero_attn=True (an extra all-zero key and value): MultiHeadAttention "
                         "has no such setting")
    in_bias, out_bias = module.in_proj_bias, module.out_proj.bias
    if (in_bias is None) != (out_bias is None):
        state = {True: "absent", False: "present"}
        raise ValueError("from_torch needs nn.MultiheadAttention's in_proj_bias and out_proj.bias "
                         "to be both present or both absent (MultiHeadAttention's bias covers all "
                         f"four projections), got in_proj_bias {state[in_bias is None]} and "
                         f"out_proj.bias {state[out_bias is None]}")
    weight = module.in_proj_weight
    ours = MultiHeadAttention(module.embed_dim, module.num_heads, dropout=module.dropout,
                              bias=in_bias is not None)
    ours.to(device=weight.device, dtype=weight.dtype)
    w_q, w_k, w_v = weight.chunk(3)  # (3D, D) -> 3 x (D, D): rows are W^Q, then W^K, then W^V
    b_q, b_k, b_v = in_bias.chunk(3) if in_bias is not None else (None,) * 3  # (3D,) -> 3 x (D,)
    _copy_linear(ours.q_proj, w_q, b_q)
    _copy_linear(ours.k_proj, w_k, b_k)
    _copy_linear(ours.v_proj, w_v, b_v)
    _copy_linear(ours.out_proj, module.out_proj.weight, out_bias)
    ours.train(module.training)
    return ours


# --- encoder layers and stacks (chapter 4) ---------------------------------------------------


def _activation_name(layer: nn.Module) -> str:
    """Our name for the activation of a PyTorch encoder or decoder layer."""
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    raise ValueError(f"from_torch supports the activations 'relu' and 'gelu' (exact), got {act!r}")


def _layer_settings(layer: nn.Module) -> dict[str, Any]:
    """Constructor arguments of our layer, read off a PyTorch encoder or decoder layer."""
    if layer.linear1.bias is None and layer.norm1.bias is not None:
        raise ValueError("from_torch needs the layer's linear and LayerNorm biases to be both "
                         "present or both absent (our layers have one bias setting)")
    return {
        "d_model": layer.self_attn.embed_dim,
        "num_heads": layer.self_attn.num_heads,
        "d_ff": layer.linear1.out_features,
        "dropout": layer.dropout.p,
        "activation": _activation_name(layer),
        "norm_first": layer.norm_first,
        "layer_norm_eps": layer.norm1.eps,
        "bias": layer.linear1.bias is not None,
    }


def _finish(ours: nn.Module, module: nn.Module) -> nn.Module:
    """Give ``ours`` the dtype, device and train/eval mode of ``module``."""
    first = next(module.parameters())
    return ours.to(device=first.device, dtype=first.dtype).train(module.training)


@torch.no_grad()
def _copy_norms(ours: nn.Module, layer: nn.Module, names: tuple[str, ...]) -> None:
    """Copy each LayerNorm's weights and eps (they may differ between a layer's norms).

    ``ours`` already has the source's dtype, so float64 weights are copied exactly."""
    for name in names:
        getattr(ours, name).load_state_dict(getattr(layer, name).state_dict())
        getattr(ours, name).eps = getattr(layer, name).eps


def _final_norm(stack: nn.Module) -> nn.LayerNorm | None:
    """A PyTorch encoder or decoder stack's final norm: None or exactly an ``nn.LayerNorm``."""
    norm = stack.norm
    if norm is not None and type(norm) is not nn.LayerNorm:
        raise ValueError(f"from_torch supports nn.{type(stack).__name__}'s norm only as "
                         f"nn.LayerNorm (or None), got {type(norm).__name__}")
    return norm


def _copy_final_norm(norm: nn.LayerNorm | None, stack: nn.Module) -> nn.LayerNorm | None:
    """Our copy of a stack's final norm, built in the stack's dtype first (an exact copy)."""
    if norm is None:
        return None
    ours = _finish(nn.LayerNorm(norm.normalized_shape, eps=norm.eps,
                                elementwise_affine=norm.elementwise_affine,
                                bias=norm.bias is not None), stack)
    ours.load_state_dict(norm.state_dict())
    return ours


@torch.no_grad()
def _copy_feed_forward(ours: FeedForward, layer: nn.Module) -> None:
    _copy_linear(ours.linear1, layer.linear1.weight, layer.linear1.bias)
    _copy_linear(ours.linear2, layer.linear2.weight, layer.linear2.bias)


@_register(nn.TransformerEncoderLayer)
def _from_encoder_layer(module: nn.TransformerEncoderLayer) -> EncoderLayer:
    ours = _finish(EncoderLayer(**_layer_settings(module)), module)
    ours.self_attn = from_torch(module.self_attn)
    _copy_feed_forward(ours.ffn, module)
    _copy_norms(ours, module, ("norm1", "norm2"))
    return ours


@_register(nn.TransformerEncoder)
def _from_encoder(module: nn.TransformerEncoder) -> Encoder:
    norm = _final_norm(module)
    settings = _layer_settings(module.layers[0])
    ours = _finish(Encoder(len(module.layers), **settings, final_norm=norm is not None), module)
    ours.layers = nn.ModuleList(_from_encoder_layer(layer) for layer in module.layers)
    ours.norm = _copy_final_norm(norm, module)
    return ours


# --- decoder layers and stacks (chapter 5) ---------------------------------------------------


@_register(nn.TransformerDecoderLayer)
def _from_decoder_layer(module: nn.TransformerDecoderLayer) -> DecoderLayer:
    # PyTorch has one dropout module per sub-layer (dropout1..3); ours shares one, so they must
    # agree
    rates = {name: getattr(module, name).p for name in ("dropout1", "dropout2", "dropout3")}
    if len(set(rates.values())) > 1:
        raise ValueError(f"from_torch needs the same dropout after every sub-layer (DecoderLayer "
                         f"has one dropout setting), got {rates}")
    ours = _finish(DecoderLayer(**_layer_settings(module)), module)
    ours.dropout.p = rates["dropout1"]
    ours.self_attn = from_torch(module.self_attn)
    ours.cross_attn = from_torch(module.multihead_attn)  # PyTorch's name for cross-attention
    _copy_feed_forward(ours.ffn, module)
    _copy_norms(ours, module, ("norm1", "norm2", "norm3"))
    return ours


@_register(nn.TransformerDecoder)
def _from_decoder(module: nn.TransformerDecoder) -> Decoder:
    norm = _final_norm(module)
    settings = _layer_settings(module.layers[0])
    ours = _finish(Decoder(len(module.layers), **settings, final_norm=norm is not None), module)
    ours.layers = nn.ModuleList(from_torch(layer) for layer in module.layers)  # own weights each
    ours.norm = _copy_final_norm(norm, module)
    return ours


# --- the whole encoder-decoder (chapter 6) ---------------------------------------------------


@_register(nn.Transformer)
def _from_transformer(module: nn.Transformer) -> EncoderDecoder:
    # nn.Transformer has no embeddings and no output projection: its equivalent is our
    # EncoderDecoder, which maps embedded (B, S, D) and (B, T, D) inputs to (B, T, D).
    return EncoderDecoder(from_torch(module.encoder), from_torch(module.decoder))


# --- Hugging Face transformers models (chapter 10) -------------------------------------------

# Hugging Face class name -> function returning our equivalent. Names, not types, so that
# transformers is imported only by whoever passes one of its models.
_HF_CONVERTERS: dict[str, _Converter] = {}


def from_hf(model: nn.Module) -> nn.Module:
    """Our equivalent of a Hugging Face ``transformers`` model, with a copy of its weights.

    The result computes the same hidden states as ``model`` (to float32 rounding) and has its
    dtype, device and train/eval mode. Hugging Face's ``attention_mask`` (1 on real tokens, 0
    on padding) is ours too.

    Supported: ``BertModel`` -> :class:`~transformer_lib.pretrained.EncoderModel` (embeddings
    and chapter 4's post-LN :class:`Encoder`; the pooler, if any, is left out: see
    :data:`~transformer_lib.pretrained.UNUSED_BERT_NAMES`); ``LlamaForCausalLM`` -> :class:`GPT`
    with chapter 11's switches (RMSNorm, SwiGLU, rotary positions, grouped queries, no biases),
    the rows of ``W^Q`` and ``W^K`` reordered from LLaMA's "halves" rotary layout to chapter 3's
    interleaved pairs.

    Args:
        model: the ``transformers`` model to convert.

    Returns:
        The converted model.

    Raises:
        TypeError: ``model`` is of a class we cannot convert.
        ValueError: ``model`` uses a setting ours does not have, or its weights do not fit;
            the message names it.
    """
    converter = _HF_CONVERTERS.get(type(model).__name__)
    if converter is None:
        name = f"{type(model).__module__}.{type(model).__qualname__}"
        raise TypeError(f"from_hf cannot convert {name}; supported classes: "
                        f"{', '.join(sorted(_HF_CONVERTERS))}")
    return converter(model)


def _from_hf_bert(model: nn.Module) -> EncoderModel:
    ours = _finish(EncoderModel(encoder_config_from_bert(model.config.to_dict())), model)
    return load_bert_weights(ours, model.state_dict())


_HF_CONVERTERS["BertModel"] = _from_hf_bert


# --- LLaMA (chapter 11) ----------------------------------------------------------------------


def _rope_theta(config: Any) -> float:
    """The rotary base of a ``LlamaConfig`` (``rope_parameters`` in recent ``transformers``)."""
    parameters = getattr(config, "rope_parameters", None) or {}
    if parameters.get("rope_type", "default") != "default":
        raise ValueError(f"from_hf: rope scaling {parameters['rope_type']!r} is not supported "
                         "(our rotary positions are chapter 3's, unscaled)")
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _halves_to_pairs(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The rows of LLaMA's ``W^Q`` or ``W^K`` reordered from the "halves" rotary layout (feature
    ``i`` of a head paired with ``i + Dh/2``) to chapter 3's interleaved pairs ``(2i, 2i+1)``."""
    head_dim = weight.size(0) // num_heads
    halves = weight.reshape(num_heads, 2, head_dim // 2, -1)  # (H, 2, Dh/2, D)
    return halves.transpose(1, 2).reshape(weight.shape)  # row 2i <- i, row 2i+1 <- i + Dh/2


def _from_hf_llama(model: nn.Module) -> GPT:
    c = model.config
    for name in ("attention_bias", "mlp_bias"):
        if getattr(c, name, False):
            raise ValueError(f"from_hf: {name}=True is not supported (our LLaMA has no biases)")
    if getattr(c, "hidden_act", "silu") != "silu":
        raise ValueError(f"from_hf: hidden_act must be 'silu', got {c.hidden_act!r}")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim * c.num_attention_heads != c.hidden_size:
        raise ValueError(f"from_hf: head_dim * num_attention_heads must be hidden_size, got "
                         f"{head_dim} * {c.num_attention_heads} and {c.hidden_size}")
    config = GPTConfig(vocab_size=c.vocab_size, context_length=c.max_position_embeddings,
                       d_model=c.hidden_size, num_heads=c.num_attention_heads,
                       num_layers=c.num_hidden_layers, d_ff=c.intermediate_size, bias=False,
                       layer_norm_eps=c.rms_norm_eps, tie_output=c.tie_word_embeddings,
                       norm="rmsnorm", activation="swiglu", positions="rope",
                       num_kv_heads=c.num_key_value_heads, rope_theta=_rope_theta(c))
    ours = GPT(config)
    theirs = model.model
    with torch.no_grad():
        ours.embed.weight.copy_(theirs.embed_tokens.weight)
        for layer, hf in zip(ours.blocks.layers, theirs.layers):
            attention, mlp = hf.self_attn, hf.mlp
            layer.self_attn.q_proj.weight.copy_(_halves_to_pairs(attention.q_proj.weight,
                                                                 c.num_attention_heads))
            layer.self_attn.k_proj.weight.copy_(_halves_to_pairs(attention.k_proj.weight,
                                                                 c.num_key_value_heads))
            layer.self_attn.v_proj.weight.copy_(attention.v_proj.weight)
            layer.self_attn.out_proj.weight.copy_(attention.o_proj.weight)
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(layer.ffn, name).weight.copy_(getattr(mlp, name).weight)
            layer.norm1.weight.copy_(hf.input_layernorm.weight)
            layer.norm2.weight.copy_(hf.post_attention_layernorm.weight)
        ours.blocks.norm.weight.copy_(theirs.norm.weight)
        if not c.tie_word_embeddings:
            ours.out_proj.weight.copy_(model.lm_head.weight)
    return _finish(ours, model)


_HF_CONVERTERS["LlamaForCausalLM"] = _from_hf_llama
