"""Chapter 7's data: the date task, the character tokenizer, batches, masks and bucketing."""

import datetime
from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader

from transformer_lib import (
    DATE_FORMATS,
    FIRST_DATE,
    IGNORE_INDEX,
    LAST_DATE,
    UNSEEN_DATE_FORMATS,
    BucketBatchSampler,
    Seq2SeqTokenizer,
    TranslationBatch,
    TranslationDataset,
    causal_mask,
    collate_translation,
    format_date,
    make_date_splits,
    ordinal,
)

ALL_FORMATS = {**DATE_FORMATS, **UNSEEN_DATE_FORMATS}


@pytest.fixture(scope="module")
def splits():
    return make_date_splits(num_train=3000, num_valid=300, num_test=300, num_unseen=300, seed=0)


@pytest.fixture(scope="module")
def tokenizer(splits):
    return Seq2SeqTokenizer.from_texts(p.source + p.target for p in splits.train)


def test_generator_is_deterministic(splits):
    again = make_date_splits(num_train=3000, num_valid=300, num_test=300, num_unseen=300, seed=0)
    assert again == splits
    other = make_date_splits(num_train=3000, num_valid=300, num_test=300, num_unseen=300, seed=1)
    assert other.train != splits.train
    assert ([len(s) for s in (splits.train, splits.valid, splits.test, splits.unseen)]
            == [3000, 300, 300, 300])


def test_splits_share_no_date(splits):
    dates = [{p.target for p in getattr(splits, n)} for n in ("train", "valid", "test")]
    assert not dates[0] & dates[1] and not dates[0] & dates[2] and not dates[1] & dates[2]
    # the unseen split uses test days only
    seen_days = dates[0] | dates[1]
    assert not {p.target for p in splits.unseen} & seen_days


def _all_days():
    return [FIRST_DATE + datetime.timedelta(days=i)
            for i in range((LAST_DATE - FIRST_DATE).days + 1)]


def test_unseen_formats_are_unseen(splits):
    assert {p.format for p in splits.train} == set(DATE_FORMATS)
    assert {p.format for p in splits.valid} | {p.format for p in splits.test} <= set(DATE_FORMATS)
    assert {p.format for p in splits.unseen} == set(UNSEEN_DATE_FORMATS)
    assert not set(DATE_FORMATS) & set(UNSEEN_DATE_FORMATS)
    assert not set(DATE_FORMATS.values()) & set(UNSEEN_DATE_FORMATS.values())


def test_targets_are_iso_dates_of_the_source(splits):
    for pair in splits.train + splits.unseen:
        day = datetime.date.fromisoformat(pair.target)
        assert FIRST_DATE <= day <= LAST_DATE
        assert day.isoformat() == pair.target and len(pair.target) == 10
        assert format_date(day, ALL_FORMATS[pair.format]) == pair.source


def test_every_source_has_one_meaning():
    """No text means two different dates, across all formats (e.g. no day/month confusion)."""
    meaning = {}
    for day in _all_days()[::7]:
        for template in ALL_FORMATS.values():
            source = format_date(day, template)
            assert meaning.setdefault(source, day) == day, source


def test_format_names_are_the_formats_of_3_march_2021():
    for name, template in ALL_FORMATS.items():
        assert format_date(datetime.date(2021, 3, 3), template) == name


@pytest.mark.parametrize("n, expected", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"),
                                         (11, "11th"), (12, "12th"), (13, "13th"), (21, "21st"),
                                         (22, "22nd"), (23, "23rd"), (30, "30th"), (31, "31st")])
def test_ordinal(n, expected):
    assert ordinal(n) == expected


def test_format_date_two_digit_year_and_errors():
    assert format_date(datetime.date(1985, 11, 22), "{mon} {d}, '{yy}") == "Nov 22, '85"
    assert format_date(datetime.date(2005, 1, 9), "{m}/{d}/{yy}") == "1/9/05"
    with pytest.raises(ValueError, match="unknown field"):
        format_date(datetime.date(2021, 3, 3), "{hour}")
    with pytest.raises(TypeError, match="day"):
        format_date("2021-03-03", "{d}")
    with pytest.raises(ValueError, match="num_train"):
        make_date_splits(num_train=-1)


def test_tokenizer_round_trip_and_specials(splits, tokenizer):
    assert tokenizer.tokens[:4] == ("<pad>", "<s>", "</s>", "<unk>")
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    for pair in splits.test:
        for text in (pair.source, pair.target):
            ids = tokenizer.encode(text, add_bos=True, add_eos=True)
            assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
            assert len(ids) == len(text) + 2 and tokenizer.decode(ids) == text
    assert Seq2SeqTokenizer(tokenizer.chars).tokens == tokenizer.tokens
    assert (len(tokenizer) == tokenizer.vocab_size
            == 4 + len(set("".join(p.source + p.target for p in splits.train))))


def test_tokenizer_unknown_characters(tokenizer):
    ids = tokenizer.encode("MARCH 3")  # no name in training has a capital R, C or H
    assert ids[2:5] == [tokenizer.unk_id] * 3 and ids[5:] == tokenizer.encode(" 3")
    assert ids[:2] == tokenizer.encode("MA") and tokenizer.unk_id not in ids[:2]
    assert tokenizer.decode(ids) == "MA" + "<unk>" * 3 + " 3"
    # decoding drops padding and BOS and stops at the first EOS
    assert tokenizer.decode([1, *tokenizer.encode("12"), 2, *tokenizer.encode("9"), 0]) == "12"
    assert tokenizer.decode(torch.tensor(tokenizer.encode("3-4"))) == "3-4"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([len(tokenizer)])
    with pytest.raises(ValueError, match="single characters"):
        Seq2SeqTokenizer(["ab"])


def test_collate_shapes_shift_and_masks(splits, tokenizer):
    dataset = TranslationDataset(splits.train[:5], tokenizer)
    batch = collate_translation([dataset[i] for i in range(5)], pad_id=tokenizer.pad_id)
    assert isinstance(batch, TranslationBatch)
    lengths = [len(p.source) for p in splits.train[:5]]
    B, S, T = 5, max(lengths), 11  # ten characters and EOS to predict
    assert (batch.src.shape == (B, S) and batch.tgt_in.shape == (B, T)
            and batch.tgt_out.shape == (B, T))
    assert batch.src_mask.shape == (B, 1, 1, S) and batch.tgt_mask.shape == (B, 1, T, T)
    assert batch.src_mask.dtype == batch.tgt_mask.dtype == torch.bool
    for b, n in enumerate(lengths):
        assert batch.src_mask[b, 0, 0].tolist() == [True] * n + [False] * (S - n)
        assert (batch.src[b, n:] == tokenizer.pad_id).all()
    assert ((batch.tgt_in[:, 0] == tokenizer.bos_id).all()
            and (batch.tgt_out[:, -1] == tokenizer.eos_id).all())
    assert torch.equal(batch.tgt_in[:, 1:], batch.tgt_out[:, :-1])  # shifted by one
    assert torch.equal(batch.tgt_mask[0, 0], causal_mask(T))
    assert batch.num_tokens == B * T
    moved = batch.to("cpu")
    assert isinstance(moved, TranslationBatch) and torch.equal(moved.tgt_mask, batch.tgt_mask)


def test_collate_pads_targets_with_ignore_index():
    examples = [(torch.tensor([5, 6, 7]), torch.tensor([1, 8, 2])),
                (torch.tensor([5]), torch.tensor([1, 8, 9, 9, 2]))]
    batch = collate_translation(examples, pad_id=0)
    assert batch.tgt_in.tolist() == [[1, 8, 2, 0], [1, 8, 9, 9]]
    assert batch.tgt_out.tolist() == [[8, 2, IGNORE_INDEX, IGNORE_INDEX], [8, 9, 9, 2]]
    assert batch.num_tokens == 6
    # padded decoder inputs are hidden from every query; causal order is kept
    assert batch.tgt_mask[0, 0].tolist() == [[True, False, False, False],
                                             [True, True, False, False],
                                            [True, True, True, False], [True, True, True, False]]
    assert batch.src_mask[1, 0, 0].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="examples"):
        collate_translation([])


def test_bucket_sampler_covers_each_index_once_and_is_deterministic():
    lengths = [(i * 7919) % 23 + 5 for i in range(1000)]
    sampler = BucketBatchSampler(lengths, batch_size=32, bucket_size=320, seed=3)
    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(1000))
    assert len(epoch0) == len(sampler) and all(1 <= len(b) <= 32 for b in epoch0)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(i for b in epoch1 for i in b) == list(range(1000))
    fresh = BucketBatchSampler(lengths, batch_size=32, bucket_size=320, seed=3)
    fresh.set_epoch(1)
    assert list(fresh) == epoch1  # the order depends only on (seed, epoch)


def test_bucketing_reduces_padding():
    lengths = [(i * 7919) % 23 + 5 for i in range(2000)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    bucketed = list(BucketBatchSampler(lengths, batch_size=32, seed=0))
    random_batches = [b.tolist() for b in torch.randperm(2000).split(32)]
    assert padded(bucketed) - sum(lengths) < (padded(random_batches) - sum(lengths)) / 5
    in_order = list(BucketBatchSampler(lengths, batch_size=32, shuffle=False, bucket_size=2000))
    assert [lengths[b[0]] for b in in_order] == sorted(lengths[b[0]] for b in in_order)


def test_bucket_sampler_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([3, 4], batch_size=0)
    with pytest.raises(ValueError, match="bucket_size"):
        BucketBatchSampler([3, 4], batch_size=8, bucket_size=4)
    assert (len(BucketBatchSampler(list(range(115)), batch_size=10, bucket_size=50))
            == 12)  # 5 + 5 + 2


def test_works_with_dataloader(splits, tokenizer):
    dataset = TranslationDataset(splits.train[:200], tokenizer)
    loader = DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset.lengths, 16, seed=0),
                        collate_fn=partial(collate_translation, pad_id=tokenizer.pad_id))
    batches = list(loader)
    assert len(batches) == len(loader) == 13
    assert sum(b.src.size(0) for b in batches) == 200
    assert sum(b.num_tokens for b in batches) == 200 * 11
    for b in batches:
        assert b.src.size(1) == int(b.src_mask.sum(-1).max())  # padded to the longest in the batch
