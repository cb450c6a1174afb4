"""Training and encoding speed of our BPETokenizer, with Hugging Face ``tokenizers`` beside it.

Training: a byte-level BPE tokenizer to a 1,024-token vocabulary on the first 1,000,000
characters of the standard library's source (``python_source_files``), ours and ``tokenizers``
set up the same way (the same pre-tokenizing pattern, ``ByteLevel``, all 256 bytes as the
initial alphabet). Ours runs on one core (pure Python); ``tokenizers`` trains with as many threads
as ``RAYON_NUM_THREADS`` allows (default: every core), and the table says how many it had.

Encoding: held-out files (every tenth of all the library's files of at most 32 KB, which
``python_source_files`` picks), in MB/s of UTF-8 input. "cold" starts every repeat from an empty
piece cache (every distinct piece is merged once); "warm" encodes again with the cache of the
previous pass. ``tokenizers`` encodes the text as one string (``encode``) and as a batch of files
(``encode_batch``, which it spreads over its threads).

Each figure is the best of ``--repeats`` runs (the least disturbed by other work on the machine).
Both tokenizers are checked to give the same compression (within 1%) before anything is timed.

Usage::

    python benchmarks/tokenization.py
    RAYON_NUM_THREADS=1 python benchmarks/tokenization.py   # tokenizers on one thread too
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from transformer_lib import python_source_files
from transformer_lib.tokenization import SPLIT_PATTERN, BPETokenizer


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _theirs(text: str, vocab_size: int) -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([text], trainer)
    return hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=1_000_000, help="training characters")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.chars < 10_000 or args.repeats < 1:
        parser.error("--chars must be >= 10000 and --repeats >= 1")

    text = "".join(t for _, t in python_source_files(max_chars=2 * args.chars))[:args.chars]
    held_out = [t for _, t in python_source_files(max_chars=15_000_000)[::10]]
    held_out_text = "\n".join(held_out)
    n_bytes = len(held_out_text.encode("utf-8"))

    ours = BPETokenizer.train(text, args.vocab_size)
    theirs = _theirs(text, args.vocab_size)
    ratio = len(ours.encode(held_out_text)) / len(theirs.encode(held_out_text).ids)
    if abs(ratio - 1) > 0.01:
        raise SystemExit(f"the two tokenizers compress differently: token ratio {ratio:.4f}")

    train_ours = _best(lambda: BPETokenizer.train(text, args.vocab_size), args.repeats)
    train_theirs = _best(lambda: _theirs(text, args.vocab_size), args.repeats)
    cold = _best(lambda: BPETokenizer(ours.merges).encode(held_out_text), args.repeats)
    warm = _best(lambda: ours.encode(held_out_text), args.repeats)
    one = _best(lambda: theirs.encode(held_out_text), args.repeats)
    batch = _best(lambda: theirs.encode_batch(held_out), args.repeats)

    threads = os.environ.get("RAYON_NUM_THREADS", f"{os.cpu_count()} (every core)")
    print(f"training: {len(text):,} characters to {args.vocab_size} tokens; encoding: "
          f"{len(held_out)} held-out files, {n_bytes / 1e6:.2f} MB; token ratio ours/theirs "
          f"{ratio:.4f}; tokenizers {tokenizers.__version__} with {threads} thread(s)")
    print(f"{'':<28} {'ours':>10} {'tokenizers':>11}")
    print(f"{'training (s)':<28} {train_ours:>10.2f} {train_theirs:>11.2f}")
    print(f"{'encoding, cold cache (MB/s)':<28} {n_bytes / cold / 1e6:>10.1f} "
          f"{n_bytes / one / 1e6:>11.1f}")
    print(f"{'encoding, warm cache (MB/s)':<28} {n_bytes / warm / 1e6:>10.1f} {'':>11}")
    print(f"{'encoding, batch of files':<28} {'':>10} {n_bytes / batch / 1e6:>11.1f}")


if __name__ == "__main__":
    main()
