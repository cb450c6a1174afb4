"""Chapter 6's decoding: greedy_decode, beam_search, sequence_log_prob, IncrementalDecoder."""

import inspect
import itertools
import math

import pytest
import torch
from torch import nn

from transformer_lib import (
    IncrementalDecoder,
    Transformer,
    TransformerConfig,
    beam_search,
    greedy_decode,
    length_penalty,
    padding_mask,
    sequence_log_prob,
)

BOS, EOS = 0, 1


class TableModel(nn.Module):
    """Next-token probabilities from a table keyed by (source id, prefix); unknown prefixes end."""

    def __init__(self, tables, vocab_size=5):
        super().__init__()
        self.tables, self.vocab_size = tables, vocab_size

    def encode(self, src, src_mask=None):
        return src[:, :1, None].float()  # (B, 1, 1): remembers which table each source uses

    def decode(self, tgt, memory, src_mask=None, tgt_mask=None):
        logits = torch.full((*tgt.shape, self.vocab_size), -1e9)
        for b in range(tgt.size(0)):
            table = self.tables[int(memory[b, 0, 0])]
            for t in range(tgt.size(1)):
                for token, p in table.get(tuple(tgt[b, 1: t + 1].tolist()), {EOS: 1.0}).items():
                    logits[b, t, token] = math.log(p)
        return logits


A, B_, C = 2, 3, 4
TRAP = {(): {A: 0.5, B_: 0.4, EOS: 0.1}, (A,): {B_: 0.4, C: 0.3, EOS: 0.3},
        (B_,): {B_: 0.05, C: 0.05, EOS: 0.9}}  # greedy: A B EOS (0.2); best: B EOS (0.36)
PLAIN = {(): {C: 0.9, EOS: 0.1}, (C,): {C: 0.2, EOS: 0.8}}  # greedy is right: C EOS (0.72)


def tiny_transformer(seed=0, **overrides):
    torch.manual_seed(seed)
    base = dict(src_vocab_size=12, tgt_vocab_size=12, d_model=32, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, d_ff=64, dropout=0.0, max_len=64, pad_id=11)
    model = Transformer(TransformerConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # sharpen the random model so hypotheses differ in probability
        model.out_proj.bias.normal_(0, 2.0)
    return model


def test_beam_finds_the_higher_probability_hypothesis_greedy_misses():
    model = TableModel({0: TRAP})
    src = torch.zeros(1, 1, dtype=torch.long)
    greedy = greedy_decode(model, src, 5, BOS, EOS)[0]
    beam, scores = beam_search(model, src, 5, BOS, EOS, beam_size=2, return_scores=True)
    assert greedy.tolist() == [BOS, A, B_, EOS]
    assert beam[0].tolist() == [BOS, B_, EOS]
    assert math.isclose(math.exp(scores[0]), 0.36, rel_tol=1e-5)
    p_greedy = sequence_log_prob(model, src, greedy[None]).exp().item()
    assert math.isclose(p_greedy, 0.2, rel_tol=1e-5)
    assert torch.equal(beam_search(model, src, 5, BOS, EOS, beam_size=1)[0], greedy)


def test_each_source_in_a_batch_gets_its_own_answer():
    model = TableModel({0: TRAP, 1: PLAIN})
    src = torch.tensor([[1], [0], [1]])
    out = beam_search(model, src, 5, BOS, EOS, beam_size=2)
    assert [o.tolist() for o in out] == [[BOS, C, EOS], [BOS, B_, EOS], [BOS, C, EOS]]
    for i in range(3):  # the same as decoding each source on its own
        assert torch.equal(beam_search(model, src[i:i + 1], 5, BOS, EOS, beam_size=2)[0], out[i])


@pytest.mark.parametrize("use_cache", [False, True])
def test_beam_size_one_is_greedy(use_cache):
    model = tiny_transformer()
    src = torch.randint(2, 11, (6, 7))
    greedy = greedy_decode(model, src, 10, BOS, EOS, use_cache=use_cache)
    beam = beam_search(model, src, 10, BOS, EOS, beam_size=1, use_cache=use_cache)
    assert all(torch.equal(g, b) for g, b in zip(greedy, beam))


def test_hypotheses_start_with_bos_and_stop_at_eos():
    model = tiny_transformer(seed=3)
    with torch.no_grad():  # EOS about as likely as the rest: some hypotheses end early, some not
        model.out_proj.bias.zero_()
        model.out_proj.bias[EOS] = 1.5
    src = torch.randint(2, 11, (8, 5), generator=torch.Generator().manual_seed(0))
    greedy = greedy_decode(model, src, 12, BOS, EOS)
    for outputs in (greedy, beam_search(model, src, 12, BOS, EOS, beam_size=3)):
        for out in outputs:
            assert out[0].item() == BOS
            assert (out[1:-1] != EOS).all()  # no EOS before the end
            assert out[-1].item() == EOS or len(out) == 13
    lengths = {len(out) for out in greedy}
    assert min(lengths) < 13 and max(lengths) == 13


def test_beam_search_is_exact_with_a_beam_as_wide_as_the_tree():
    model = tiny_transformer(seed=1, tgt_vocab_size=4, pad_id=None)
    src = torch.randint(2, 11, (2, 5))
    max_new_tokens = 3
    out, scores = beam_search(model, src, max_new_tokens, BOS, EOS, beam_size=4 ** max_new_tokens,
                              return_scores=True)
    for b in range(2):  # brute force over every sequence of at most max_new_tokens tokens
        candidates = []
        for n in range(1, max_new_tokens + 1):
            for body in itertools.product(range(4), repeat=n):
                if EOS in body[:-1] or (n < max_new_tokens and body[-1] != EOS):
                    continue
                candidates.append(torch.tensor((BOS, *body)))
        log_probs = [sequence_log_prob(model, src[b:b + 1], c[None]).item() for c in candidates]
        best = max(range(len(candidates)), key=log_probs.__getitem__)
        assert torch.equal(out[b], candidates[best])
        assert math.isclose(scores[b], log_probs[best], rel_tol=1e-4, abs_tol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_cached_decoding_gives_the_same_tokens(beam_size):
    model = tiny_transformer(seed=2, norm_first=True)
    src = torch.randint(0, 11, (5, 9))
    src[1, 6:] = 11  # padding
    mask = padding_mask(src, 11)
    for fn, kwargs in [(greedy_decode, {}), (beam_search, {"beam_size": beam_size})]:
        cached = fn(model, src, 15, BOS, EOS, src_mask=mask, use_cache=True, **kwargs)
        plain = fn(model, src, 15, BOS, EOS, src_mask=mask, use_cache=False, **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(cached, plain))


def test_incremental_decoder_log_probs_match_full_decode():
    model = tiny_transformer(seed=4, positions="learned")
    src = torch.randint(0, 11, (3, 6))
    memory = model.encode(src)
    stepper = IncrementalDecoder(model, memory, None)
    prefix = torch.full((3, 1), BOS)
    for _ in range(6):
        full = torch.log_softmax(model.decode(prefix, memory)[:, -1], dim=-1)
        torch.testing.assert_close(stepper(prefix), full, atol=1e-5, rtol=1e-5)
        prefix = torch.cat([prefix, torch.randint(0, 12, (3, 1))], dim=1)
    with pytest.raises(ValueError, match="one token longer"):
        stepper(prefix[:, :2])


def test_length_penalty_formula_and_effect():
    assert length_penalty(7, 0.0) == 1.0
    assert math.isclose(length_penalty(7, 1.0), 2.0)
    model = TableModel({0: TRAP})
    src = torch.zeros(1, 1, dtype=torch.long)
    short = beam_search(model, src, 5, BOS, EOS, beam_size=3, length_alpha=0.0)[0]
    long_ = beam_search(model, src, 5, BOS, EOS, beam_size=3, length_alpha=5.0)[0]
    assert len(short) == 3 and len(long_) == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(beam_size=0), ValueError, "beam_size must be a positive int"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens must be a positive int"),
        (dict(bos_id=12), ValueError,
         r"bos_id=12 is outside the model's target vocabulary \[0, 12\)"),
        (dict(eos_id=-1), ValueError, "eos_id must be a non-negative int"),
        (dict(src=torch.tensor([[3, 12]])), ValueError, r"src contains the id 12"),
        (dict(src=torch.tensor([3, 4])), ValueError, r"src must be a \(B, S\) tensor"),
        (dict(length_alpha=-1.0), ValueError, "length_alpha must be >= 0"),
        (dict(src_mask=torch.ones(3, 3, dtype=torch.bool)), ValueError,
         r"src_mask must broadcast to \(B, 1, 1, S\)"),
    ],
)
def test_bad_arguments(kwargs, error, pattern):
    model = tiny_transformer()
    args = dict(model=model, src=torch.tensor([[3, 4]]), max_new_tokens=5, bos_id=BOS,
                eos_id=EOS)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        beam_search(**args)


@pytest.mark.parametrize("decode", [greedy_decode, beam_search])
def test_max_len_is_the_old_name_of_max_new_tokens(decode):
    model, src = tiny_transformer(), torch.tensor([[3, 4, 5]])
    with pytest.warns(FutureWarning, match="max_len= is renamed max_new_tokens="):
        old = decode(model, src, max_len=4, bos_id=BOS, eos_id=EOS)
    new = decode(model, src, max_new_tokens=4, bos_id=BOS, eos_id=EOS)
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    with pytest.raises(TypeError, match="got both max_len= and max_new_tokens="):
        decode(model, src, max_len=4, max_new_tokens=4, bos_id=BOS, eos_id=EOS)
    assert list(inspect.signature(decode).parameters)[2] == "max_new_tokens"


def test_use_cache_needs_a_transformer_and_models_need_encode_decode():
    with pytest.raises(ValueError, match="use_cache=True needs a transformer_lib Transformer"):
        greedy_decode(TableModel({0: TRAP}), torch.zeros(1, 1, dtype=torch.long), 3, BOS, EOS,
                      use_cache=True)
    with pytest.raises(TypeError, match="model must have encode"):
        greedy_decode(nn.Linear(2, 2), torch.zeros(1, 1, dtype=torch.long), 3, BOS, EOS)


def test_incremental_decoder_runs_the_models_decode_with_its_caches():
    from transformer_lib import AttentionCache, LayerCache

    model = tiny_transformer(seed=5, norm_first=True)
    src = torch.randint(0, 11, (4, 7))
    src[2, 4:] = 11
    src_mask = padding_mask(src, 11)
    memory = model.encode(src, src_mask)
    calls = []
    for layer in model.decoder.layers:  # the decoder's only way in: the layers' forward
        layer.register_forward_hook(
            lambda module, args, kwargs, out: calls.append(kwargs.get("cache")), with_kwargs=True)
    stepper = IncrementalDecoder(model, memory, src_mask)
    assert stepper.length == 0 and len(stepper.caches) == 2
    assert isinstance(stepper.caches[0], LayerCache) and stepper.caches[0].cross_attn.cross
    prefix = torch.full((4, 1), BOS)
    for step in range(1, 5):
        full = torch.log_softmax(model.decode(prefix, memory, src_mask)[:, -1], dim=-1)
        torch.testing.assert_close(stepper(prefix), full, atol=1e-5, rtol=1e-5)
        assert stepper.length == step
        assert ([(c.self_attn.length, c.cross_attn.length) for c in stepper.caches]
                == [(step, 7)] * 2)
        prefix = torch.cat([prefix, full.argmax(-1, keepdim=True)], dim=1)
    assert calls[-2:] == stepper.caches and calls[0] is None  # the full decodes pass no cache
    # beam search's reorder: the rows of every cache, of the memory and of the mask follow
    index = torch.tensor([3, 3, 0, 1])
    keys = stepper.caches[1].self_attn.keys.clone()
    stepper.reorder(index)
    torch.testing.assert_close(stepper.caches[1].self_attn.keys, keys[index], rtol=0, atol=0)
    full = torch.log_softmax(model.decode(prefix[index], memory[index], src_mask[index])[:, -1],
                             dim=-1)
    torch.testing.assert_close(stepper(prefix[index]), full, atol=1e-5, rtol=1e-5)
    empty = AttentionCache()
    empty.reorder(index)  # nothing cached yet: nothing to reorder
    assert empty.length == 0 and empty.keys is None and not empty.cross


def test_decode_with_a_cache_in_pieces_and_its_weights():
    from transformer_lib import LayerCache

    model = tiny_transformer(seed=6, positions="learned").double()
    src, tgt = torch.randint(0, 11, (3, 5)), torch.randint(0, 11, (3, 8))
    memory = model.encode(src)
    full, full_weights = model.decode(tgt, memory, need_weights=True)
    torch.testing.assert_close(full, model.decode(tgt, memory), rtol=1e-12, atol=1e-12)
    caches = [LayerCache() for _ in model.decoder.layers]
    first = model.decode(tgt[:, :3], memory, cache=caches)
    second, weights = model.decode(tgt[:, 3:], memory, cache=caches, need_weights=True)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-10, atol=1e-10)
    for (self_w, cross_w), (full_self, full_cross) in zip(weights, full_weights, strict=True):
        torch.testing.assert_close(self_w, full_self[:, :, 3:], rtol=1e-10,
                                   atol=1e-10)  # (B, H, 5, 8)
        torch.testing.assert_close(cross_w, full_cross[:, :, 3:], rtol=1e-10, atol=1e-10)
