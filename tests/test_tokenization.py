"""Chapter 9's byte-level BPE tokenizer: the two BPE operations, training (against a full
recount), encoding by rank (against replaying every merge), round trips for every string
(property-style, with lone surrogates and cut characters), saving and loading, bad arguments,
and agreement with Hugging Face ``tokenizers``."""

import json
import os
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_lib import python_source_files
from transformer_lib.tokenization import (
    SPLIT_PATTERN,
    BPETokenizer,
    bytes_to_text,
    encode_piece,
    merge_pair,
    pair_counts,
    pretokenize,
    text_to_bytes,
    train_merges,
)

# any code point, lone surrogates included (hypothesis leaves them out unless asked)
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)


@pytest.fixture(scope="module")
def corpus():
    files = python_source_files(max_chars=250_000)
    train = "\n".join(text for i, (_, text) in enumerate(files) if i % 10)
    return train, [text for _, text in files[::10]]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return BPETokenizer.train(corpus[0], 600, special_tokens=["<|endoftext|>", "<|pad|>"])


def recount_merges(text, num_merges):
    """The definition, slowly: recount every pair of every piece at every merge."""
    words = Counter(tuple(text_to_bytes(piece)) for piece in pretokenize(text))
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for word, freq in words.items():
            for pair, c in pair_counts(word).items():
                counts[pair] += c * freq
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        words = Counter({tuple(merge_pair(w, best, 256 + k)): f for w, f in words.items()})
    return merges


def test_pair_counts_and_merge_pair():
    assert pair_counts([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1}
    assert pair_counts([]) == {} and pair_counts([5]) == {}
    counts = pair_counts([1, 2], pair_counts([1, 2, 3]))
    assert counts == {(1, 2): 2, (2, 3): 1}
    assert merge_pair([97, 97, 97], (97, 97), 256) == [256, 97]  # left to right, no overlap
    assert merge_pair([97, 97, 97, 97], (97, 97), 256) == [256, 256]
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge_pair([], (1, 2), 9) == []


@given(ANY_TEXT)
def test_pretokenize_covers_every_character(text):
    assert "".join(pretokenize(text)) == text


def test_pretokenize_splits_words_numbers_symbols_and_spaces():
    assert pretokenize("  return self.x_1 = 42") == [
        " ", " return", " self", ".", "x", "_", "1", " =", " 42"]
    assert pretokenize("it's") == ["it", "'s"]
    with pytest.raises(ValueError, match="pattern must match every character"):
        pretokenize("a b", pattern=r"\w+")


@pytest.mark.parametrize("seed", range(6))
def test_train_merges_equals_a_full_recount(seed):
    rng = random.Random(seed)
    words = ["self", " self", " return", "_", "aaa", " aa", "é", "😀", "\n", "    ", "ab", "ba"]
    text = "".join(rng.choice(words) for _ in range(400))
    assert train_merges(text, 40) == recount_merges(text, 40)


def test_train_merges_on_source_code_and_its_arguments(corpus):
    text = corpus[0][:60_000]
    assert train_merges(text, 80) == recount_merges(text, 80)
    assert train_merges("ab", 10) == [(97, 98)]  # no pair left after one merge
    assert train_merges("", 5) == []
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_merges must be a non-negative int"):
            train_merges("abc", bad)


def test_encode_piece_replays_the_merges_in_rank_order(tokenizer, corpus):
    pieces = set(pretokenize(corpus[1][0][:20_000]))
    for piece in pieces:
        ids = list(text_to_bytes(piece))
        for k, pair in enumerate(tokenizer.merges):
            ids = merge_pair(ids, pair, 256 + k)
        assert encode_piece(text_to_bytes(piece), tokenizer.ranks) == ids
    assert encode_piece(b"abc", {(97, 98): 0, (98, 99): 1}) == [256, 99]
    assert encode_piece(b"abc", {(98, 99): 0, (97, 98): 1}) == [97, 256]


@settings(max_examples=300)
@given(ANY_TEXT)
def test_decode_of_encode_is_the_identity_for_every_string(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(st.lists(st.integers(0, 599), max_size=30))
def test_decode_never_fails_on_valid_ids(tokenizer, ids):
    text = tokenizer.decode(ids)
    assert isinstance(text, str)


def test_bytes_and_text():
    for s in ["", "héllo", "😀", "\ud800", "a\udfffb", "\x00\x1b"]:
        assert bytes_to_text(text_to_bytes(s)) == s
    emoji = text_to_bytes("😀")
    assert bytes_to_text(emoji[:3]) == "\ufffd" * 3  # cut inside a character: one U+FFFD a byte
    assert bytes_to_text(b"\xff" + emoji) == "\ufffd😀"


def test_held_out_code_round_trips_and_compresses(tokenizer, corpus):
    for text in corpus[1]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    text = "\n".join(corpus[1])
    bytes_per_token = len(text_to_bytes(text)) / len(tokenizer.encode(text))
    assert 1.8 < bytes_per_token < 3.0  # 342 merges learned from 220,000 characters


def test_special_tokens_are_one_token_each(tokenizer):
    eot, pad = tokenizer.special_tokens["<|endoftext|>"], tokenizer.special_tokens["<|pad|>"]
    assert (eot, pad) == (598, 599) and tokenizer.vocab_size == 600 and len(tokenizer.merges) == 342
    ids = tokenizer.encode("x<|endoftext|><|pad|>y<|endoftext")
    assert ids.count(eot) == 1 and ids.count(pad) == 1
    assert tokenizer.decode(ids) == "x<|endoftext|><|pad|>y<|endoftext"
    longest = BPETokenizer([], special_tokens=["<a>", "<a><b>"])
    assert longest.encode("<a><b>") == [257]  # the longest special token wins


def test_save_and_load_round_trip(tokenizer, tmp_path, corpus):
    path = tmp_path / "tok.json"
    tokenizer.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == tokenizer.merges and loaded.special_tokens == tokenizer.special_tokens
    assert loaded.pattern == SPLIT_PATTERN
    assert loaded.encode(corpus[1][0]) == tokenizer.encode(corpus[1][0])
    assert repr(loaded) == repr(tokenizer)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    BPETokenizer([(97, 98)]).save(path)
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        tokenizer.save(path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe", "is not a BPETokenizer file"),
    (b"{not json", "is not a BPETokenizer file"),
    (b"[1, 2]", "no format marker"),
    (json.dumps({"format": "transformer_lib.BPETokenizer", "version": 2}).encode(),
     "unknown BPETokenizer file version 2"),
    (json.dumps({"format": "transformer_lib.BPETokenizer", "version": 1, "merges": [[97, 300]],
                 "special_tokens": [], "pattern": SPLIT_PATTERN}).encode(),
     r"merges\[0\] must be a pair of ids made before it"),
    (json.dumps({"format": "transformer_lib.BPETokenizer", "version": 1, "merges": [],
                 "special_tokens": [""], "pattern": SPLIT_PATTERN}).encode(),
     "special_tokens must be non-empty strings"),
    (json.dumps({"format": "transformer_lib.BPETokenizer", "version": 1, "merges": [],
                 "special_tokens": [], "pattern": "("}).encode(),
     "pattern is not a valid regular expression"),
])
def test_load_refuses_what_is_not_a_tokenizer(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(merges=[(97, 98), (97, 98)]), "merges must not repeat a pair"),
    (dict(merges=[(97, 256)]), r"merges\[0\] must be a pair of ids made before it"),
    (dict(merges=[(97,)]), r"merges\[0\] must be a pair"),
    (dict(merges=[(True, 98)]), r"merges\[0\] must be a pair"),
    (dict(merges="ab"), "merges must be a list"),
    (dict(merges=[], special_tokens=["<s>", "<s>"]), "special_tokens must not repeat"),
    (dict(merges=[], special_tokens=5), "special_tokens must be non-empty strings"),
    (dict(merges=[], pattern=None), "pattern must be a regular expression"),
])
def test_bad_tables_name_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer(**kwargs)


def test_bad_calls_name_the_argument(tokenizer):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 256"):
        BPETokenizer.train("abc", 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("abc", 300.0)
    with pytest.raises(TypeError, match="text must be a str"):
        tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match=r"ids must be ints in \[0, 600\), got 600"):
        tokenizer.decode([1, 600])
    with pytest.raises(ValueError, match=r"ids must be ints in \[0, 600\), got -1"):
        tokenizer.decode([-1])


def _as_text(data: bytes) -> str:
    """GPT-2's byte-to-character table, as ``tokenizers``' ByteLevel uses it."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    moved = {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)}
    return "".join(chr(b) if b in printable else moved[b] for b in data)


def test_agrees_with_hugging_face_tokenizers(corpus):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Regex, models, pre_tokenizers, trainers

    train, held_out = corpus
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    theirs = tokenizers.Tokenizer(models.BPE())
    theirs.pre_tokenizer = pre
    theirs.train_from_iterator([train], trainers.BpeTrainer(
        vocab_size=768, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ours = BPETokenizer.train(train, 768)
    text = "\n".join(held_out)
    ratio = len(ours.encode(text)) / len(theirs.encode(text).ids)
    assert abs(ratio - 1) < 0.01  # the same compression, within 1%
    their_merges = {tuple(m) for m in json.loads(theirs.to_str())["model"]["merges"]}
    our_merges = {(_as_text(ours.vocab[a]), _as_text(ours.vocab[b])) for a, b in ours.merges}
    assert len(our_merges & their_merges) >= 0.98 * len(our_merges)  # ties may be broken apart
    # given our merge table, tokenizers' BPE produces our ids exactly
    same_table = tokenizers.Tokenizer(models.BPE(
        {_as_text(t): i for i, t in enumerate(ours.vocab)},
        [(_as_text(ours.vocab[a]), _as_text(ours.vocab[b])) for a, b in ours.merges]))
    same_table.pre_tokenizer = pre
    for file in held_out:
        assert same_table.encode(file).ids == ours.encode(file)
    for text in ["naïve café → 😀", "日本語 テキスト", "x\u00a0=\u20281", "\t\r\n  \n", "'ll've"]:
        assert same_table.encode(text).ids == ours.encode(text)
