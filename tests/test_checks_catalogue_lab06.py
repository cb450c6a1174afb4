"""Lab 6's checks against a catalogue of wrong implementations written as learners write them:
each to be rejected with the diagnosis it states (or, where marked ``GENERIC``, with the generic
message, for at most a tenth of them); correct implementations written differently, to be
accepted. They are registered in ``checks_catalogue`` and run by ``test_checks_catalogue.py``.

Every entry is a whole function, in the style of a learner's cell; none repeats one of
``tests/test_checks_lab06.py``.
"""

import heapq
import itertools
from collections import Counter, defaultdict

import checks_catalogue as catalogue
import torch
from checks_catalogue import GENERIC

from transformer_lib.tokenization import bytes_to_text, pretokenize

# --- exercise 1: pair_counts -------------------------------------------------------------------


def counts_zip_wrapped(ids):
    counts = defaultdict(int)
    for a, b in zip(ids, ids[1:] + ids[:1]):
        counts[a, b] += 1
    return dict(counts)


def counts_from_one(ids):
    counts = {}
    for i in range(1, len(ids) - 1):
        counts[ids[i], ids[i + 1]] = counts.get((ids[i], ids[i + 1]), 0) + 1
    return counts


def counts_backwards(ids):
    counts = Counter()
    for i in range(1, len(ids)):
        counts[ids[i], ids[i - 1]] += 1
    return counts


def counts_while_step_two(ids):
    counts, i = {}, 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2
    return counts


def counts_from_a_set(ids):
    return dict.fromkeys(set(zip(ids, ids[1:])), 1)


def counts_slices_to_the_end(ids):
    return Counter(tuple(ids[i:i + 2]) for i in range(len(ids)))  # the last slice has one id


def counts_string_keys(ids):
    return Counter(f"{a},{b}" for a, b in zip(ids, ids[1:]))


def counts_last_pair_dropped_by_slice(ids):
    return Counter(zip(ids[:-1], ids[1:-1]))


def counts_with_floats(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0.0) + 1.0
    return counts


WRONG_COUNTS = {
    "zip with ids[:1] appended": (counts_zip_wrapped, "the sequence wraps around"),
    "range(1, ...)": (counts_from_one, "the first pair is not counted"),
    "(ids[i], ids[i - 1])": (counts_backwards, "the pairs are the wrong way round"),
    "while loop, i += 2": (counts_while_step_two, "only the pairs that start at even"),
    "dict.fromkeys(set(...), 1)": (counts_from_a_set, "each pair is counted once"),
    "slices up to the end": (counts_slices_to_the_end, "yours has the key (98,)"),
    "string keys": (counts_string_keys, "the keys must be pairs of ids"),
    "zip(ids[:-1], ids[1:-1])": (counts_last_pair_dropped_by_slice, "the last pair is not counted"),
    "float counts": (counts_with_floats, "the counts must be ints"),
}


def counts_pairwise(ids):
    return dict(Counter(itertools.pairwise(ids)))


def counts_defaultdict(ids):
    counts = defaultdict(int)
    for i in range(len(ids) - 1):
        counts[ids[i], ids[i + 1]] += 1
    return counts


def counts_slices(ids):
    return Counter(tuple(ids[i:i + 2]) for i in range(len(ids) - 1))


CORRECT_COUNTS = [counts_pairwise, counts_defaultdict, counts_slices]

# --- exercise 2: merge_pair --------------------------------------------------------------------


def merge_for_loop_forgets_to_skip(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2  # has no effect on a for loop
        else:
            out.append(ids[i])
    return out


def merge_for_loop_loses_the_end(ids, pair, new_id):
    out, skip = [], False
    for i in range(len(ids) - 1):
        if skip:
            skip = False
            continue
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            skip = True
        else:
            out.append(ids[i])
    return out


def merge_list_compared_with_tuple(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == pair:  # a list is never equal to a tuple
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_marks_every_start(ids, pair, new_id):
    starts = {i for i in range(len(ids) - 1) if (ids[i], ids[i + 1]) == pair}
    out = [new_id if i in starts else x for i, x in enumerate(ids)]
    return [x for i, x in enumerate(out) if i in starts or i - 1 not in starts]


def merge_reversed_scan(ids, pair, new_id):
    rev, out, i = ids[::-1], [], 0
    while i < len(rev):
        if i + 1 < len(rev) and (rev[i + 1], rev[i]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(rev[i])
            i += 1
    return out[::-1]


def merge_sorted_pair(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and sorted(ids[i:i + 2]) == sorted(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_once_with_break(ids, pair, new_id):
    out, i, done = [], 0, False
    while i < len(ids):
        if not done and i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
            done = True
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_hard_coded_id(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == list(pair):
            out.append(256)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_returns_a_tensor(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return torch.tensor(out)


WRONG_MERGE = {
    "i += 2 inside a for loop": (merge_for_loop_forgets_to_skip, "moves on by one id, not two"),
    "for loop to len - 1 with a skip flag": (merge_for_loop_loses_the_end, "the last id is lost"),
    "ids[i:i + 2] == pair": (merge_list_compared_with_tuple, "nothing is merged"),
    "every start marked": (merge_marks_every_start, "overlapping occurrences are all merged"),
    "scan of the reversed list": (merge_reversed_scan, "the scan runs right to left"),
    "sorted pairs compared": (merge_sorted_pair, "the pair's order is ignored"),
    "a done flag": (merge_once_with_break, "only the first occurrence is merged"),
    "256 hard-coded": (merge_hard_coded_id, "use the new_id argument"),
    "returns a tensor": (merge_returns_a_tensor, "return a list of ids (ints); yours returned a "
                                                 "Tensor"),
}


def merge_recursive(ids, pair, new_id):
    if len(ids) < 2:
        return list(ids)
    if (ids[0], ids[1]) == pair:
        return [new_id] + merge_recursive(ids[2:], pair, new_id)
    return [ids[0]] + merge_recursive(ids[1:], pair, new_id)


def merge_with_skip_flag(ids, pair, new_id):
    out, skip = [], False
    for i, x in enumerate(ids):
        if skip:
            skip = False
        elif i + 1 < len(ids) and (x, ids[i + 1]) == pair:
            out.append(new_id)
            skip = True
        else:
            out.append(x)
    return out


def merge_in_place_search(ids, pair, new_id):
    ids, i = list(ids), 0
    while i < len(ids) - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


CORRECT_MERGE = [merge_recursive, merge_with_skip_flag, merge_in_place_search]

# --- exercise 3: train_merges ------------------------------------------------------------------


def learner_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_sorted_ties_last(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for k in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = sorted(counts.items(), key=lambda item: item[1])[-1][0]
        merges.append(best)
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


def train_most_common(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for k in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = counts.most_common(1)[0][0]
        merges.append(best)
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


def train_ids_after_append(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for _ in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        words = [learner_merge(w, best, 256 + len(merges)) for w in words]
    return merges


def train_forgets_to_merge(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for _ in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        merges.append(min(counts, key=lambda p: (-counts[p], p)))
    return merges


def train_counts_once(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    counts = Counter(p for w in words for p in zip(w, w[1:]))
    merges = []
    for k in range(num_merges):
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        del counts[best]
        merges.append(best)
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


def train_on_code_points(text, num_merges):
    words = [[ord(c) for c in piece] for piece in pretokenize(text)]
    merges = []
    for k in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


def train_while_less_or_equal(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    while len(merges) <= num_merges:
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        words = [learner_merge(w, best, 256 + len(merges)) for w in words]
        merges.append(best)
    return merges


def train_stops_at_singletons(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for k in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts or max(counts.values()) == 1:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


def train_one_new_id(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for _ in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        words = [learner_merge(w, best, 256) for w in words]
    return merges


def train_on_split(text, num_merges):
    words = [list(word.encode("utf-8")) for word in text.split()]
    merges = []
    for k in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


def train_returns_a_dict(text, num_merges):
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = {}
    for k in range(num_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges[best] = 256 + k
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


WRONG_TRAIN = {
    "sorted by count, last": (train_sorted_ties_last, "which pair was counted last"),
    "Counter.most_common(1)": (train_most_common, "which pair was counted first"),
    "id 256 + len(merges) after append": (train_ids_after_append, "merge k creates id 257 + k"),
    "forgets to merge": (train_forgets_to_merge, "the merges repeat one pair"),
    "counts once": (train_counts_once, "counted once, before the first merge"),
    "ord(c)": (train_on_code_points, "read as characters (ord(c))"),
    "while len(merges) <= num_merges": (train_while_less_or_equal, "one merge too many"),
    "stops at count 1": (train_stops_at_singletons, "stops when the most frequent pair occurs "
                                                    "only once"),
    "new id always 256": (train_one_new_id, "every merge creates id 256"),
    "text.split()": (train_on_split, "split with text.split()"),
    "returns a dict": (train_returns_a_dict, "not a dict"),
}


def train_full_recount(text, num_merges):
    """The naive trainer: every piece of the text, recounted after every merge."""
    words = [list(piece.encode("utf-8")) for piece in pretokenize(text)]
    merges = []
    for k in range(num_merges):
        counts = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        words = [learner_merge(w, best, 256 + k) for w in words]
    return merges


def train_with_a_heap(text, num_merges):
    """Distinct pieces with their frequencies; the best pair from a heap of (-count, pair)."""
    freq = Counter(pretokenize(text))
    words = {piece: list(piece.encode("utf-8")) for piece in freq}
    merges = []
    for k in range(num_merges):
        counts = Counter()
        for piece, w in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += freq[piece]
        heap = [(-c, pair) for pair, c in counts.items()]  # the largest count, then the pair
        if not heap:
            break
        heapq.heapify(heap)
        _, best = heapq.heappop(heap)
        merges.append(best)
        words = {piece: learner_merge(w, best, 256 + k) for piece, w in words.items()}
    return merges


def train_incremental(text, num_merges):
    """Counts kept up to date: a merge revisits only the pieces that contain its pair."""
    freq = Counter(pretokenize(text))
    words = [list(piece.encode("utf-8")) for piece in freq]
    weights = list(freq.values())
    counts = Counter()
    for w, n in zip(words, weights):
        for pair in zip(w, w[1:]):
            counts[pair] += n
    merges = []
    for k in range(num_merges):
        counts = +counts  # drop the pairs whose count fell to 0
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for j, (w, n) in enumerate(zip(words, weights)):
            if best not in zip(w, w[1:]):
                continue
            counts.subtract({p: c * n for p, c in Counter(zip(w, w[1:])).items()})
            words[j] = w = learner_merge(w, best, 256 + k)
            counts.update({p: c * n for p, c in Counter(zip(w, w[1:])).items()})
    return merges


CORRECT_TRAIN = [train_full_recount, train_with_a_heap, train_incremental]

# --- exercise 4: encode ------------------------------------------------------------------------


def encode_latest_first(text, merges):
    ranks = {pair: k for k, pair in enumerate(merges)}
    out = []
    for piece in pretokenize(text):
        ids = list(piece.encode("utf-8"))
        while True:
            known = [p for p in zip(ids, ids[1:]) if p in ranks]
            if not known:
                break
            pair = max(known, key=lambda p: ranks[p])
            ids = learner_merge(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def encode_one_merge_per_piece(text, merges):
    ranks = {pair: k for k, pair in enumerate(merges)}
    out = []
    for piece in pretokenize(text):
        ids = list(piece.encode("utf-8"))
        known = [p for p in zip(ids, ids[1:]) if p in ranks]
        if known:
            pair = min(known, key=ranks.get)
            ids = learner_merge(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def encode_code_points(text, merges):
    ranks = {pair: k for k, pair in enumerate(merges)}
    out = []
    for piece in pretokenize(text):
        ids = [ord(c) for c in piece]
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break
            ids = learner_merge(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def encode_ids_from_257(text, merges):
    new_ids = {pair: 257 + k for k, pair in enumerate(merges)}
    out = []
    for piece in pretokenize(text):
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: new_ids.get(p, float("inf")))
            if pair not in new_ids:
                break
            ids = learner_merge(ids, pair, new_ids[pair])
        out += ids
    return out


def encode_whole_text_in_table_order(text, merges):
    ids = list(text.encode("utf-8"))
    for k, pair in enumerate(merges):
        ids = learner_merge(ids, pair, 256 + k)
    return ids


def encode_default_rank_zero(text, merges):
    ranks = {pair: k for k, pair in enumerate(merges)}
    out = []
    for piece in pretokenize(text):
        ids = list(piece.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 0))  # unknown pairs first
            if pair not in ranks:
                break
            ids = learner_merge(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def encode_most_frequent_pair(text, merges):
    ranks = {pair: k for k, pair in enumerate(merges)}
    out = []
    for piece in pretokenize(text):
        ids = list(piece.encode("utf-8"))
        while True:
            counts = Counter(p for p in zip(ids, ids[1:]) if p in ranks)
            if not counts:
                break
            pair = counts.most_common(1)[0][0]
            ids = learner_merge(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def encode_as_tensor(text, merges):
    ids = list(text.encode("utf-8"))
    return torch.tensor(ids)


WRONG_ENCODE = {
    "highest rank first": (encode_latest_first, "latest first"),
    "one merge per piece": (encode_one_merge_per_piece, "only one merge is applied per piece"),
    "ord(c)": (encode_code_points, "read as characters (ord(c))"),
    "ids from 257": (encode_ids_from_257, "merge k gives id 257 + k"),
    "table order on the whole text": (encode_whole_text_in_table_order,
                                      "across pre-token boundaries"),
    "ranks.get(p, 0)": (encode_default_rank_zero, "your ids spell the text, but its bytes are "
                                                  "merged differently"),
    "Counter.most_common in the piece": (encode_most_frequent_pair, "in order of frequency"),
    "returns a tensor": (encode_as_tensor, "yours returned a Tensor"),
}


def encode_in_table_order(text, merges):
    """Each merge once over each piece, in the order learned: the same as by rank."""
    out = []
    for piece in pretokenize(text):
        ids = list(piece.encode("utf-8"))
        for k, pair in enumerate(merges):
            ids = learner_merge(ids, pair, 256 + k)
        out += ids
    return out


def encode_recursive(text, merges):
    ranks = {tuple(pair): k for k, pair in enumerate(merges)}

    def piece_ids(ids):
        known = [p for p in zip(ids, ids[1:]) if p in ranks]
        if not known:
            return ids
        pair = min(known, key=ranks.__getitem__)
        return piece_ids(learner_merge(ids, pair, 256 + ranks[pair]))

    return [i for piece in pretokenize(text) for i in piece_ids(list(piece.encode("utf-8")))]


def encode_with_a_cache(text, merges):
    ranks = {pair: k for k, pair in enumerate(merges)}
    cache = {}
    out = []
    for piece in pretokenize(text):
        if piece not in cache:
            ids = list(piece.encode("utf-8"))
            while len(ids) > 1:
                i = min(range(len(ids) - 1),
                        key=lambda j: ranks.get((ids[j], ids[j + 1]), len(ranks)))
                pair = (ids[i], ids[i + 1])
                if pair not in ranks:
                    break
                ids = learner_merge(ids, pair, 256 + ranks[pair])
            cache[piece] = ids
        out.extend(cache[piece])
    return out


CORRECT_ENCODE = [encode_in_table_order, encode_recursive, encode_with_a_cache]

# --- exercise 5: decode ------------------------------------------------------------------------


def learner_vocab(merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (a, b) in enumerate(merges):
        vocab[256 + k] = vocab[a] + vocab[b]
    return vocab


def decode_swapped_merges(ids, merges):
    vocab = [bytes([i]) for i in range(256)]
    for a, b in merges:
        vocab.append(vocab[b] + vocab[a])
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def decode_with_str(ids, merges):
    vocab = learner_vocab(merges)
    return str(b"".join(vocab[i] for i in ids))


def decode_chr_of_each_byte(ids, merges):
    vocab = learner_vocab(merges)
    return "".join(chr(b) for i in ids for b in vocab[i])


def decode_token_by_token(ids, merges):
    vocab = learner_vocab(merges)
    text = ""
    for i in ids:
        text += vocab[i].decode("utf-8", errors="replace")
    return text


def decode_ignoring_errors(ids, merges):
    vocab = learner_vocab(merges)
    data = b"".join(vocab[i] for i in ids)
    return data.decode(errors="ignore")


def decode_token_by_token_ignoring(ids, merges):
    vocab = learner_vocab(merges)
    return "".join(vocab[i].decode("utf-8", errors="ignore") for i in ids)


def decode_returns_bytes(ids, merges):
    vocab = learner_vocab(merges)
    return b"".join(vocab[i] for i in ids)


def decode_strict(ids, merges):
    vocab = learner_vocab(merges)
    return b"".join(vocab[i] for i in ids).decode("utf-8")


WRONG_DECODE = {
    "merges joined b + a": (decode_swapped_merges, "joined the wrong way round"),
    "str(data)": (decode_with_str, "str(data) gives the bytes object's repr"),
    "chr of each byte": (decode_chr_of_each_byte, "decoded as Latin-1"),
    "token by token": (decode_token_by_token, "each token is decoded on its own"),
    "decode(errors='ignore')": (decode_ignoring_errors, "errors='ignore' drops the bytes"),
    "token by token, ignoring errors": (decode_token_by_token_ignoring, GENERIC),  # two mistakes
    "returns bytes": (decode_returns_bytes, "return a str: decode the joined bytes"),
    "strict decode": (decode_strict, "errors='replace' (the default, errors='strict', raises)"),
}


def decode_with_bytes_to_text(ids, merges):
    vocab = learner_vocab(merges)
    return bytes_to_text(b"".join(vocab[i] for i in ids))


def decode_recursive(ids, merges):
    def expand(i):
        if i < 256:
            return [i]
        a, b = merges[i - 256]
        return expand(a) + expand(b)

    return bytes(b for i in ids for b in expand(i)).decode("utf-8", errors="replace")


def decode_with_bytearray(ids, merges):
    vocab = learner_vocab(merges)
    data = bytearray()
    for i in ids:
        data += vocab[i]
    return data.decode("utf-8", "replace")


CORRECT_DECODE = [decode_with_bytes_to_text, decode_recursive, decode_with_bytearray]

# --- the entries, run by test_checks_catalogue.py ----------------------------------------------

catalogue.wrong("check_pair_counts", WRONG_COUNTS)
catalogue.accepted("check_pair_counts", CORRECT_COUNTS, cases=7)
catalogue.wrong("check_merge_pair", WRONG_MERGE)
catalogue.accepted("check_merge_pair", CORRECT_MERGE, cases=9)
catalogue.wrong("check_train_merges", WRONG_TRAIN)
catalogue.accepted("check_train_merges", CORRECT_TRAIN, cases=7)
catalogue.wrong("check_encode", WRONG_ENCODE)
catalogue.accepted("check_encode", CORRECT_ENCODE, cases=9)
catalogue.wrong("check_decode", WRONG_DECODE)
catalogue.accepted("check_decode", CORRECT_DECODE, cases=9)


def test_the_catalogue_is_large():
    wrong = WRONG_COUNTS | WRONG_MERGE | WRONG_TRAIN | WRONG_ENCODE | WRONG_DECODE
    assert len(wrong) >= 40
