"""Edge cases and bad inputs across the package: a clear error naming the argument, or the
answer the edge case calls for, never a crash deep inside PyTorch."""

import pytest
import torch

from transformer_lib import (
    CharTokenizer,
    Seq2SeqTokenizer,
    Transformer,
    TransformerConfig,
    beam_search,
    greedy_decode,
    next_token_probs,
    sample_next_token,
)

CONFIG = TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=8, num_heads=2,
                           num_encoder_layers=1, num_decoder_layers=1, d_ff=16)


@pytest.mark.parametrize("use_cache", [True, False])
def test_decoders_on_an_empty_batch_return_nothing(use_cache):
    model = Transformer(CONFIG).eval()
    src = torch.zeros(0, 5, dtype=torch.long)
    assert greedy_decode(model, src, 5, 1, 2, use_cache=use_cache) == []
    assert beam_search(model, src, 5, 1, 2, use_cache=use_cache) == []
    assert beam_search(model, src, 5, 1, 2, use_cache=use_cache, return_scores=True) == ([], [])


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), "1e-5"])
def test_transformer_config_refuses_a_bad_layer_norm_eps(eps):
    with pytest.raises(ValueError, match="layer_norm_eps must be a positive finite number"):
        TransformerConfig(**{**CONFIG.__dict__, "layer_norm_eps": eps})


def test_a_tiny_temperature_is_greedy_not_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]])
    probs = next_token_probs(logits, temperature=1e-39)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    g = torch.Generator().manual_seed(0)
    assert sample_next_token(logits, temperature=1e-39, generator=g).tolist() == [1, 0]
    # an ordinary temperature gives the plain softmax
    torch.testing.assert_close(next_token_probs(logits, temperature=0.7),
                               (logits / 0.7).softmax(-1))


@pytest.mark.parametrize("row",
                         [[float("-inf")] * 3, [0.0, float("inf"), 1.0], [0.0, float("nan"), 1.0]])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_row_with_nothing_to_sample_is_a_clear_error(row, temperature):
    logits = torch.tensor([[1.0, 2.0, 3.0], row])
    with pytest.raises(ValueError, match="logits must have a finite largest value in every row"):
        sample_next_token(logits, temperature=temperature)


def test_masked_tokens_stay_impossible():
    logits = torch.tensor([[1.0, float("-inf"), 3.0]])
    assert next_token_probs(logits)[0, 1] == 0


def test_char_tokenizer_refuses_bytes():
    tokenizer = CharTokenizer.from_text("abc")
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tokenizer.encode(b"abc")


def test_seq2seq_tokenizer_decodes_one_sequence_and_names_a_batch():
    tokenizer = Seq2SeqTokenizer.from_texts(["abc"])
    ids = torch.tensor(tokenizer.encode("cab", add_bos=True, add_eos=True))
    assert tokenizer.decode(ids) == "cab"
    with pytest.raises(ValueError,
                       match=r"ids must be one sequence.*got a tensor of shape \(2, 5\)"):
        tokenizer.decode(torch.stack([ids, ids]))
    with pytest.raises(ValueError,
                       match=r"ids must be one sequence of ints, got an element \[1, 2\]"):
        tokenizer.decode([[1, 2]])
