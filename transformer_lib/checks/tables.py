"""Table models for the decoding checks (lab 4, ``lab04_decoding.py``): hand-made
encoder-decoders whose next-token probabilities come from a table, so that the right answer of
greedy decoding and of beam search is known, and each table can be built to make one mistake show.

Hand-written (not generated from a chapter). :class:`TableModel` is the model;
:func:`table_model` builds one from tables written as text, :func:`table_sources` the batch of
sources that selects its tables, and the ``*_table`` functions are the tables the checks use
(their docstrings say what each one tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_FLOOR = -20.0  # the log-probability of a token a table model never produces (~1e-9)


def _jitter(*numbers: int) -> float:
    """A fixed pseudo-random number in [0, 1) for a tuple of ints (the same on every machine)."""
    h = 17
    for n in numbers:
        h = (h * 1000003 + n + 11) % 2_147_483_647
    return (h * 2654435761 % 2**32) / 2**32


class TableModel(nn.Module):
    """A hand-made encoder-decoder whose next-token probabilities come from a table.

    ``tables[s]`` holds the probabilities for the sources whose first token is ``s``: it maps a
    prefix, written as names (``"BOS A"``), to ``{name: probability}``; the key ``"*"`` is the
    default for prefixes it does not list, otherwise such a prefix ends with EOS (probability
    ~0.998; the rest goes to ``pad``). After an EOS the model predicts no token in particular (a
    model trained on sequences that stop at EOS has no reason to). Each probability is nudged by
    a fixed factor in [1, 1.002), so that no two candidates tie anywhere (ties would make the
    right answer depend on how a sort breaks them); tokens a prefix does not list get
    log-probabilities near ``_FLOOR``, each a slightly different one.

    Its logits are the log-probabilities plus a constant of the prefix (between 2 and 5), as a
    trained model's are: the softmax removes the constant, so code that adds up raw logits,
    instead of log-probabilities, gets different scores.

    ``encode`` returns a memory of shape ``(B, 1, 1)`` holding each row's source id, so a row
    that reads another source's memory predicts that source's tokens.
    """

    def __init__(self, names: Sequence[str],
                 tables: dict[str, dict[str, dict[str, float]]]) -> None:
        super().__init__()
        self.names = list(names)
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.bos_id, self.eos_id = self.ids["BOS"], self.ids["EOS"]
        self.tables = {self.ids[s]: table for s, table in tables.items()}
        self.floor = _FLOOR - 0.0731 * torch.arange(len(self.names), dtype=torch.float32)
        self.cache: dict[tuple[int, tuple[int, ...]], Tensor] = {}

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return src[:, :1, None].float()  # (B, S) -> (B, 1, 1): which source each row reads

    def distribution(self, source: int, prefix: tuple[int, ...]) -> dict[int, float] | None:
        """``{token: probability}`` after ``prefix`` (None after EOS: no token in particular)."""
        if self.eos_id in prefix[1:]:
            return None
        table = self.tables.get(source, {})
        text = " ".join(self.names[i] if 0 <= i < len(self.names) else "?" for i in prefix)
        if text in table or "*" in table:
            probs = {self.ids[name]: p for name, p in table.get(text, table.get("*")).items()}
        else:
            rest = 0.001 * (1.0 + _jitter(source, *prefix, -1))
            probs = {self.eos_id: 1.0 - rest, self.ids.get("pad", 0): rest}
        probs = {v: p * (1.0 + 0.002 * _jitter(source, *prefix, v)) for v, p in probs.items()}
        total = sum(probs.values())
        return {v: p / total for v, p in probs.items()}

    def next_logits(self, source: int, prefix: tuple[int, ...]) -> Tensor:
        key = (source, prefix)
        if key not in self.cache:
            probs = self.distribution(source, prefix)
            if probs is None:
                logits = -0.1 * torch.tensor([_jitter(source, *prefix, v)
                                              for v in range(len(self.names))])
            else:
                logits = self.floor.clone()
                for v, p in probs.items():
                    logits[v] = math.log(p)
                logits += 2.0 + 3.0 * _jitter(source, *prefix, -7)  # logits, not log-probabilities
            self.cache[key] = logits
        return self.cache[key]

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None = None,
               tgt_mask: Tensor | None = None) -> Tensor:
        N, T = tgt.shape
        if memory.size(0) != N:
            raise ValueError(f"model.decode got {N} prefix{'' if N == 1 else 'es'} (rows of tgt) "
                             f"but memory for {memory.size(0)} rows: each row of tgt needs its own "
                             f"row of memory (one per source; in beam search, one per hypothesis)")
        rows = []
        for n in range(N):
            source, prefix = int(memory[n, 0, 0]), tuple(tgt[n].tolist())
            rows.append(torch.stack([self.next_logits(source, prefix[: t + 1]) for t in range(T)]))
        return torch.stack(rows) if rows else torch.zeros(0, T, len(self.names))  # (N, T, V)

    def possible(self, source: int, tokens: Sequence[int]) -> bool:
        """Can the model produce ``tokens`` (up to the first EOS) for this source?"""
        for t in range(1, len(tokens)):
            probs = self.distribution(source, tuple(tokens[:t]))
            if probs is None:
                break
            if tokens[t] not in probs:
                return False
        return True

    def spell(self, tokens: Sequence[int]) -> str:
        return " ".join(self.names[i] if 0 <= i < len(self.names) else str(i) for i in tokens)


def table_model(names: str, **tables: dict[str, dict[str, float]]) -> TableModel:
    """A :class:`TableModel` whose vocabulary is ``names`` (split at spaces, in id order), with
    one table per source name (``A={"BOS": {"A": 0.5, ...}, ...}``)."""
    return TableModel(names.split(), tables)


def table_sources(model: TableModel, *names: str) -> Tensor:
    """One source per name, ``(B, 2)``: the name's id (which table the model reads), then pad."""
    return torch.tensor([[model.ids[n], 0] for n in names])


# --- the tables the checks use ---

_CHAPTER_TABLE = {
    "BOS": {"A": 0.5, "B": 0.4, "EOS": 0.1},
    "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
    "BOS B": {"B": 0.05, "C": 0.04, "EOS": 0.91},
}
_NAMES = "pad BOS EOS A B C D E F G H I J K L"


def chapter_table() -> TableModel:
    """Chapter 6's example: greedy decoding finds A B EOS (p = 0.18), beam search B EOS (0.364)."""
    return table_model(_NAMES, A=_CHAPTER_TABLE)


def three_sources_table() -> TableModel:
    """Three sources with their own tokens and answers of different lengths; G never ends."""
    return table_model(_NAMES, A={
        "BOS": {"A": 0.5, "B": 0.45, "EOS": 0.05},
        "BOS A": {"A": 0.26, "B": 0.25, "C": 0.25, "EOS": 0.24},
        "BOS B": {"C": 0.55, "A": 0.44, "EOS": 0.01},
    }, D={
        "BOS": {"D": 0.6, "E": 0.25, "EOS": 0.15},
        "BOS D": {"E": 0.5, "F": 0.3, "EOS": 0.2},
        "BOS D E": {"F": 0.9, "EOS": 0.1},
        "BOS D F": {"E": 0.6, "EOS": 0.4},
    }, G={
        "*": {"G": 0.8, "EOS": 0.15, "H": 0.05},
    })


def late_table() -> TableModel:
    """Hypotheses finish early, but a live one beats them later: the stopping rule matters. J:
    EOS ranks third at the first step, below the k = 2 live candidates, and would beat every
    hypothesis that follows them (it is no candidate in beam search)."""
    return table_model(_NAMES, A={
        "BOS": {"A": 0.4, "EOS": 0.31, "B": 0.29},
        "BOS A": {"C": 0.9, "EOS": 0.1},
        "BOS B": {"EOS": 0.9, "C": 0.1},
    }, D={
        "BOS": {"D": 0.5, "E": 0.4, "EOS": 0.1},
        "BOS D": {"EOS": 0.45, "F": 0.55},
        "BOS E": {"EOS": 0.8, "F": 0.2},
        "BOS D F": {"E": 0.8, "EOS": 0.2},
    }, J={
        "BOS": {"J": 0.36, "K": 0.33, "EOS": 0.31},
        "BOS J": {"K": 0.55, "J": 0.45},
        "BOS K": {"K": 0.65, "J": 0.35},
        "BOS J K": {"EOS": 0.9, "L": 0.1},
        "BOS K K": {"EOS": 0.9, "L": 0.1},
    })


def eos_second_table() -> TableModel:
    """EOS is the second-best first token, and greedy decoding's path ends below it."""
    return table_model(_NAMES, A={
        "BOS": {"A": 0.5, "EOS": 0.4, "B": 0.1},
        "BOS A": {"B": 0.36, "C": 0.34, "EOS": 0.3},
    })


def length_table() -> TableModel:
    """A short and a long answer: the short one is more probable, the long one wins with the
    length penalty (alpha = 1); source D's short answer finishes while the long one's prefix is
    less probable, so the stopping rule must allow for the penalty."""
    return table_model(_NAMES, A={
        "BOS": {"A": 0.79, "B": 0.21},
        "BOS A": {"C": 0.57, "EOS": 0.43},
        "BOS A C": {"C": 0.99, "EOS": 0.01},
        "BOS A C C": {"EOS": 0.67, "B": 0.33},
        "BOS B": {"EOS": 0.6, "C": 0.4},
    }, D={
        "BOS": {"D": 0.66, "E": 0.34},
        "BOS D": {"EOS": 0.515, "F": 0.485},
        "BOS D F": {"F": 0.97, "EOS": 0.03},
        "BOS E": {"EOS": 0.3, "F": 0.7},
    })


# the winner with a length penalty, K K K EOS, ranks below an EOS candidate at the first step: it
# survives only if k live hypotheses are kept besides the finished ones
_EOS_FIRST = {
    "BOS": {"J": 0.5, "EOS": 0.3, "K": 0.2},
    "BOS J": {"J": 0.28, "K": 0.27, "L": 0.25, "EOS": 0.2},
    "BOS K": {"K": 0.99, "EOS": 0.01},
    "BOS K K": {"K": 0.99, "EOS": 0.01},
    "BOS K K K": {"EOS": 0.99, "K": 0.01},
}


def penalty_table() -> TableModel:
    """Three sources for length_alpha=1. D: the long answer is a little more probable than the
    short one, and wins unless the penalty multiplies the log-probability. G: the long answer
    wins only if |y| leaves BOS out. J: the winner ranks below an EOS candidate at the first step
    (it survives only if k live hypotheses are kept besides the finished ones)."""
    return table_model(_NAMES, D={
        "BOS": {"D": 0.7, "EOS": 0.3},
        "BOS D": {"E": 0.68, "F": 0.32},
        "BOS D E": {"F": 0.8, "EOS": 0.2},
        "BOS D E F": {"EOS": 0.84, "E": 0.16},
    }, G={
        "BOS": {"G": 0.6, "EOS": 0.4},
        "BOS G": {"H": 0.55, "I": 0.45},
        "BOS G H": {"EOS": 0.912, "I": 0.088},
    }, J=_EOS_FIRST)


def shorter_wins_table() -> TableModel:
    """Sources whose short answer (X EOS) must beat a long one (X Y Z EOS) with the length
    penalty: with length_alpha=1, A's long answer wins if the penalty is divided twice, if |y|
    leaves EOS out, or if the score is the mean; D's only if the penalty is divided twice or the
    score is the mean."""
    return table_model(_NAMES, A={
        "BOS": {"A": 0.9, "B": 0.1},
        "BOS A": {"EOS": 0.5, "B": 0.433, "C": 0.067},
        "BOS A B": {"C": 0.95, "EOS": 0.05},
        "BOS A B C": {"EOS": 0.95, "D": 0.05},
    }, D={
        "BOS": {"D": 0.9, "E": 0.1},
        "BOS D": {"EOS": 0.5, "E": 0.399, "F": 0.101},
        "BOS D E": {"F": 0.99, "EOS": 0.01},
        "BOS D E F": {"EOS": 0.85, "G": 0.15},
    })


def squared_penalty_table() -> TableModel:
    """Sources for length_alpha=2, a short answer (X EOS) against a long one (X Y Z EOS): A's
    short one wins, but not if |y| leaves EOS out; D's long one wins, but not if |y| counts BOS;
    G's short one wins, but not if the score is the mean or the penalty is divided twice. J:
    the winner ranks below an EOS candidate at the first step."""
    return table_model(_NAMES, A={
        "BOS": {"A": 0.9, "B": 0.1},
        "BOS A": {"EOS": 0.5, "B": 0.312, "C": 0.188},
        "BOS A B": {"C": 0.95, "EOS": 0.05},
        "BOS A B C": {"EOS": 0.95, "D": 0.05},
    }, D={
        "BOS": {"D": 0.9, "E": 0.1},
        "BOS D": {"EOS": 0.5, "E": 0.343, "F": 0.157},
        "BOS D E": {"F": 0.95, "EOS": 0.05},
        "BOS D E F": {"EOS": 0.95, "G": 0.05},
    }, G={
        "BOS": {"G": 0.9, "H": 0.1},
        "BOS G": {"EOS": 0.5, "H": 0.270, "I": 0.230},
        "BOS G H": {"I": 0.95, "EOS": 0.05},
        "BOS G H I": {"EOS": 0.95, "J": 0.05},
    }, J=_EOS_FIRST)
