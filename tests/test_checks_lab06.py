"""transformer_lib.checks, lab 6 (tokenization, byte-level BPE): wrong implementations, each to be
rejected with the right diagnosis; correct implementations written differently, and the library's
own, to be accepted. They are registered in ``checks_catalogue`` and run by
``test_checks_catalogue.py``; the tests here ask more of a verdict than its diagnosis (the diff
it shows, the case it names, a crash's hint, the friendly stub message)."""

from collections import Counter

import checks_catalogue as catalogue
import pytest

from transformer_lib import BPETokenizer, checks
from transformer_lib.tokenization import merge_pair, pair_counts, pretokenize, train_merges

# --- exercise 1: pair counts --------------------------------------------------------------------


def counts_without_the_last_pair(ids):
    counts = {}
    for i in range(len(ids) - 2):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def counts_wrapping_around(ids):
    counts = {}
    for i in range(len(ids)):
        pair = (ids[i], ids[(i + 1) % len(ids)])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def counts_in_steps_of_two(ids):
    return dict(Counter(zip(ids[::2], ids[1::2])))


def counts_of_reversed_pairs(ids):
    return dict(Counter(zip(ids[1:], ids)))


def counts_each_pair_once(ids):
    return {pair: 1 for pair in zip(ids, ids[1:])}


def counts_of_single_ids(ids):
    return dict(Counter(ids))


def counts_as_a_list(ids):
    return Counter(zip(ids, ids[1:])).most_common()


def pair_counts_stub(ids):
    raise NotImplementedError("Exercise 1 (Pair counts): write your code here")


WRONG_COUNTS = {
    "range(len(ids) - 2)": (counts_without_the_last_pair, "the last pair is not counted"),
    "wraps around with %": (counts_wrapping_around, "the sequence wraps around"),
    "zip(ids[::2], ids[1::2])": (counts_in_steps_of_two, "only the pairs that start at even"),
    "pairs reversed": (counts_of_reversed_pairs, "the pairs are the wrong way round"),
    "each pair once": (counts_each_pair_once, "each pair is counted once"),
    "counts single ids": (counts_of_single_ids, "the keys are single ids"),
    "most_common() list": (counts_as_a_list, "return a dict {(a, b): count}"),
}

catalogue.wrong("check_pair_counts", WRONG_COUNTS)


def test_check_pair_counts_shows_the_counts_that_differ():
    with pytest.raises(AssertionError) as info:
        checks.check_pair_counts(counts_without_the_last_pair)
    message = str(info.value)
    assert "case 1 of 7 ('abab': ids [97, 98, 97, 98])" in message
    assert "pair (97, 98): yours 1, expected 2" in message


def pair_counts_counter(ids):
    return Counter(zip(ids, ids[1:]))


catalogue.accepted("check_pair_counts", [pair_counts, pair_counts_counter], cases=7)

# --- exercise 2: one merge ---------------------------------------------------------------------


def merge_with(*, step=2, stop=0, fixed=None):
    """A learner-style merge (a while loop), with one mistake switched on."""

    def merge_pair(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids) - stop:
            if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                out.append(new_id if fixed is None else fixed)
                i += step
            else:
                out.append(ids[i])
                i += 1
        return out

    return merge_pair


def merge_by_neighbours(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        elif i > 0 and (ids[i - 1], ids[i]) == pair:
            continue  # the second half of a merged pair
        else:
            out.append(ids[i])
    return out


def merge_from_the_right(ids, pair, new_id):
    out, i = [], len(ids) - 1
    while i >= 0:
        if i > 0 and (ids[i - 1], ids[i]) == pair:
            out.insert(0, new_id)
            i -= 2
        else:
            out.insert(0, ids[i])
            i -= 1
    return out


def merge_the_first_only(ids, pair, new_id):
    ids = list(ids)
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return ids


def merge_either_order(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and {ids[i], ids[i + 1]} == set(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_pair_stub(ids, pair, new_id):
    raise NotImplementedError("Exercise 2 (One merge): write your code here")


WRONG_MERGE = {
    "i += 1 after a merge": (merge_with(step=1), "moves on by one id, not two"),
    "decided by neighbours": (merge_by_neighbours, "overlapping occurrences are all merged"),
    "right to left": (merge_from_the_right, "the scan runs right to left"),
    "first occurrence only": (merge_the_first_only, "only the first occurrence is merged"),
    "either order": (merge_either_order, "the pair's order is ignored"),
    "loses the last id": (merge_with(stop=1), "the last id is lost"),
    "always 256": (merge_with(fixed=256), "use the new_id argument"),
}

catalogue.wrong("check_merge_pair", WRONG_MERGE)


def test_check_merge_pair_shows_the_ids():
    with pytest.raises(AssertionError) as info:
        checks.check_merge_pair(merge_by_neighbours)
    message = str(info.value)
    assert "case 1 of 9 ('aaa', whose two occurrences of (a, a) overlap: " in message
    assert "yours    (2 ids) [256, 256]" in message and "expected (2 ids) [256, 97]" in message
    assert "the first difference is at index 1" in message


catalogue.accepted("check_merge_pair", {"merge_pair": merge_pair,
                                        "merge_with()": merge_with()}, cases=9)

# --- exercise 3: training ----------------------------------------------------------------------


def train_with(*, split=True, weight=True, key="smallest", offset=256, stop_when_empty=True):
    """A learner-style trainer (pieces counted once, every merge recounts), with one mistake
    switched on."""
    keys = {"smallest": lambda counts: lambda p: (counts[p], -p[0], -p[1]),
            "first": lambda counts: counts.get,
            "largest": lambda counts: lambda p: (counts[p], p)}

    def train_merges(text, num_merges):
        pieces = Counter(pretokenize(text) if split else [text])
        words = {piece: list(piece.encode("utf-8")) for piece in pieces}
        merges = []
        for k in range(num_merges):
            counts = {}
            for piece, ids in words.items():
                for pair, n in pair_counts(ids).items():
                    counts[pair] = counts.get(pair, 0) + n * (pieces[piece] if weight else 1)
            if not counts and stop_when_empty:
                break
            best = max(counts, key=keys[key](counts))
            merges.append(best)
            words = {piece: merge_pair(ids, best, offset + k) for piece, ids in words.items()}
        return merges

    return train_merges


def train_merges_stub(text, num_merges):
    raise NotImplementedError("Exercise 3 (Training): write your code here")


WRONG_TRAIN = {
    "no pretokenize": (train_with(split=False), "counted across pre-token boundaries"),
    "distinct pieces unweighted": (train_with(weight=False), "each distinct piece is counted once"),
    "max(counts, key=counts.get)": (train_with(key="first"), "which pair was counted first"),
    "ties to the largest": (train_with(key="largest"), "towards the largest pair"),
    "ids from 257": (train_with(offset=257), "merge k creates id 257 + k"),
}

catalogue.wrong("check_train_merges", WRONG_TRAIN)


def test_check_train_merges_spells_the_merges():
    with pytest.raises(AssertionError) as info:
        checks.check_train_merges(train_with(key="first"))
    message = str(info.value)
    assert "case 1 of 7 (the classic example, one piece: train_merges('aaabdaaabac', 3))" in message
    assert "merge 1: yours    (256, 97) = 'aa' + 'a'" in message
    assert "expected (97, 98) = 'a' + 'b'" in message


def test_check_train_merges_hints_where_no_pair_is_left():
    with pytest.raises(AssertionError) as info:
        checks.check_train_merges(train_with(stop_when_empty=False))
    message = str(info.value)
    assert "your code raised ValueError: max() arg is an empty sequence" in message
    assert "hint: no pair is left to merge" in message


catalogue.accepted("check_train_merges", {"train_merges": train_merges,
                                          "train_with()": train_with()}, cases=7)

# --- exercise 4: encoding ----------------------------------------------------------------------


def encode_with(*, split=pretokenize, order="rank"):
    """A learner-style encoder, with one mistake switched on."""

    def encode(text, merges):
        ranks = {pair: k for k, pair in enumerate(merges)}
        out = []
        for piece in split(text):
            ids = list(piece.encode("utf-8"))
            while True:
                pairs = [p for p in zip(ids, ids[1:]) if p in ranks]
                if not pairs:
                    break
                if order == "rank":
                    pair = min(pairs, key=ranks.get)
                elif order == "frequency":
                    counts = pair_counts(ids)
                    pair = max(pairs, key=counts.get)
                else:
                    pair = pairs[0]
                ids = merge_pair(ids, pair, 256 + ranks[pair])
            out.extend(ids)
        return out

    return encode


def encode_stub(text, merges):
    raise NotImplementedError("Exercise 4 (Encoding): write your code here")


WRONG_ENCODE = {
    "no pretokenize": (encode_with(split=lambda text: [text]), "across pre-token boundaries"),
    "text.split()": (encode_with(split=str.split), "text.split() drops the spaces"),
    "most frequent pair first": (encode_with(order="frequency"), "in order of frequency"),
    "leftmost pair first": (encode_with(order="leftmost"), "the leftmost pair that has one"),
}

catalogue.wrong("check_encode", WRONG_ENCODE)


def test_check_encode_shows_the_tokens():
    with pytest.raises(AssertionError) as info:
        checks.check_encode(encode_with(order="frequency"))
    message = str(info.value)
    assert "case 1 of 9 (rank, not frequency: (b, c) was learned before (a, b): " in message
    assert "yours    (3 ids) [257, 257, 99]" in message
    assert "as tokens ['ab', 'ab', 'c']" in message and "as tokens ['ab', 'a', 'bc']" in message


def bpe_tokenizer_encode(text, merges):
    return BPETokenizer(merges).encode(text)


catalogue.accepted("check_encode", [bpe_tokenizer_encode, encode_with()], cases=9)

# --- exercise 5: decoding ----------------------------------------------------------------------


def decode_with(*, errors="replace", per_token=False, codec="utf-8"):
    """A learner-style decoder, with one mistake switched on."""

    def decode(ids, merges):
        vocab = {i: bytes([i]) for i in range(256)}
        for k, (a, b) in enumerate(merges):
            vocab[256 + k] = vocab[a] + vocab[b]
        if per_token:
            return "".join(vocab[i].decode(codec, errors=errors) for i in ids)
        return b"".join(vocab[i] for i in ids).decode(codec, errors=errors)

    return decode


def decode_bytes_only(ids, merges):
    return bytes(ids).decode("utf-8", errors="replace")


def decode_stub(ids, merges):
    raise NotImplementedError("Exercise 5 (Decoding): write your code here")


WRONG_DECODE = {
    "errors='ignore'": (decode_with(errors="ignore"), "errors='ignore' drops the bytes"),
    "each token on its own": (decode_with(per_token=True), "each token is decoded on its own"),
    "latin-1": (decode_with(codec="latin-1"), "decoded as Latin-1"),
    "errors='strict'": (decode_with(errors="strict"), "hint: a token can hold part of a character"),
    "bytes(ids)": (decode_bytes_only, "hint: the ids of merged tokens are 256 and above"),
}

catalogue.wrong("check_decode", WRONG_DECODE)


def test_check_decode_shows_both_strings():
    with pytest.raises(AssertionError) as info:
        checks.check_decode(decode_with(errors="ignore"))
    message = str(info.value)
    assert "cut inside a character" in message
    assert "yours    'a'" in message and "expected 'a\ufffd\ufffd'" in message


def bpe_tokenizer_decode(ids, merges):
    return BPETokenizer(merges).decode(ids)


catalogue.accepted("check_decode", [bpe_tokenizer_decode, decode_with()], cases=9)


@pytest.mark.parametrize("check, stub, exercise", [
    ("check_pair_counts", pair_counts_stub, "Exercise 1 (Pair counts)"),
    ("check_merge_pair", merge_pair_stub, "Exercise 2 (One merge)"),
    ("check_train_merges", train_merges_stub, "Exercise 3 (Training)"),
    ("check_encode", encode_stub, "Exercise 4 (Encoding)"),
    ("check_decode", decode_stub, "Exercise 5 (Decoding)"),
])
def test_a_stub_gives_the_friendly_not_implemented_message(check, stub, exercise):
    with pytest.raises(NotImplementedError) as info:
        getattr(checks, check)(stub)
    assert str(info.value).startswith(f"{check}: {exercise} is not done yet. ")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_package_round_trips_what_the_checks_train():
    """The checks' references are the package's: a table trained by train_merges encodes and
    decodes any text back to itself."""
    merges = train_merges("the cat sat on the mat; naïve → 😀", 12)
    tokenizer = BPETokenizer(merges)
    for text in ["the mat", "naïve → 😀", "", "\u2028 x"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
