"""Chapter 7's training machinery: label smoothing, schedules, clipping, checkpoints, the
trainer."""

import inspect
import math
import pickle
import random
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from transformer_lib import (
    IGNORE_INDEX,
    BucketBatchSampler,
    Seq2SeqTokenizer,
    Trainer,
    Transformer,
    TransformerConfig,
    TranslationDataset,
    bleu,
    clip_grad_norm,
    collate_translation,
    exact_match,
    label_smoothed_cross_entropy,
    load_checkpoint,
    save_checkpoint,
    seq2seq_loss,
    transformer_schedule,
    translate,
    warmup_cosine_schedule,
)
from transformer_lib.outcomes import expect

# --- label smoothing ------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_smoothing_matches_pytorch_with_padding(eps, dtype):
    logits = torch.randn(3, 6, 10, dtype=dtype)
    target = torch.randint(0, 10, (3, 6))
    target[0, 4:] = IGNORE_INDEX
    target[2, 1:] = IGNORE_INDEX
    ours = label_smoothed_cross_entropy(logits, target, eps)
    theirs = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=eps)
    torch.testing.assert_close(ours, theirs)


def test_label_smoothing_with_a_padding_id_as_ignore_index_and_gradients():
    logits = torch.randn(20, 7, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 7, (20,))
    target[::3] = 0  # id 0 is padding here
    ours = label_smoothed_cross_entropy(logits, target, 0.1, ignore_index=0)
    theirs = F.cross_entropy(logits, target, label_smoothing=0.1, ignore_index=0)
    torch.testing.assert_close(ours, theirs)
    g_ours, = torch.autograd.grad(ours, logits)
    g_theirs, = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs)
    assert (g_ours[::3] == 0).all()  # ignored positions get no gradient


def test_label_smoothing_edge_cases():
    logits = torch.randn(4, 5)
    all_ignored = torch.full((4,), IGNORE_INDEX)
    assert torch.isnan(label_smoothed_cross_entropy(logits, all_ignored, 0.1))
    assert torch.isnan(F.cross_entropy(logits, all_ignored, label_smoothing=0.1))
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothed_cross_entropy(logits, torch.zeros(4, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="logits"):
        label_smoothed_cross_entropy(logits, torch.zeros(3, dtype=torch.long))


def test_seq2seq_loss_is_the_loss_of_the_logits():
    model, tokenizer, pairs = _tiny_task(n=12)
    dataset = TranslationDataset(pairs, tokenizer)
    batch = collate_translation([dataset[i] for i in range(12)], pad_id=tokenizer.pad_id)
    logits = model(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_mask)
    expected = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(), label_smoothing=0.1)
    torch.testing.assert_close(seq2seq_loss(model, batch, label_smoothing=0.1), expected)


# --- schedules ------------------------------------------------------------------------------------


def test_transformer_schedule_values():
    d, w = 512, 4000
    assert math.isclose(transformer_schedule(1, d, w), d ** -0.5 * w ** -1.5)
    assert math.isclose(transformer_schedule(w, d, w), (d * w) ** -0.5)  # the peak
    assert math.isclose(transformer_schedule(4 * w, d, w), (d * w) ** -0.5 / 2)
    assert math.isclose(transformer_schedule(100, d, w),
                        100 * d ** -0.5 * w ** -1.5)  # linear warmup
    rates = [transformer_schedule(s, d, w) for s in range(1, 3 * w)]
    assert max(range(len(rates)), key=rates.__getitem__) == w - 1
    assert all(a < b for a, b in zip(rates[: w - 1], rates[1:w]))
    assert all(a > b for a, b in zip(rates[w:], rates[w + 1:]))


def test_warmup_cosine_schedule_values():
    f = partial(warmup_cosine_schedule, warmup_steps=10, total_steps=110)
    assert f(1) == 0.1 and f(5) == 0.5 and f(10) == 1.0
    assert math.isclose(f(60), 0.5) and f(110) == 0.0 and f(500) == 0.0
    assert math.isclose(warmup_cosine_schedule(110, 10, 110, min_factor=0.2), 0.2)
    assert math.isclose(warmup_cosine_schedule(60, 10, 110, min_factor=0.2), 0.6)
    assert warmup_cosine_schedule(1, 0, 100) < 1.0 and warmup_cosine_schedule(1, 0, 100) > 0.99
    values = [f(s) for s in range(1, 120)]
    assert max(values) == 1.0 and values.index(1.0) == 9


@pytest.mark.parametrize("call, match", [
    (lambda: transformer_schedule(0, 512), "step"),
    (lambda: transformer_schedule(1, 0), "d_model"),
    (lambda: transformer_schedule(1, 512, warmup_steps=0), "warmup_steps"),
    (lambda: warmup_cosine_schedule(0, 10, 100), "step"),
    (lambda: warmup_cosine_schedule(5, 100, 100), "total_steps"),
    (lambda: warmup_cosine_schedule(5, -1, 100), "warmup_steps"),
    (lambda: warmup_cosine_schedule(5, 10, 100, min_factor=1.5), "min_factor"),
])
def test_schedule_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- clipping -------------------------------------------------------------------------------------


def _net_with_gradients(scale):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    (net(torch.randn(16, 6)).sum() * scale).backward()
    return net


@pytest.mark.parametrize("scale, max_grad_norm", [(100.0, 1.0), (0.01, 1.0), (5.0, 0.5)])
def test_clip_grad_norm_matches_pytorch(scale, max_grad_norm):
    ours, theirs = _net_with_gradients(scale), _net_with_gradients(scale)
    norm = clip_grad_norm(ours.parameters(), max_grad_norm)
    torch.testing.assert_close(norm,
                               torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_grad_norm))
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours.parameters()]))
    assert after <= max_grad_norm * (1 + 1e-5)


def test_clip_grad_norm_edge_cases():
    p = nn.Parameter(torch.ones(3))
    assert clip_grad_norm([p], 1.0) == 0  # no gradients
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        clip_grad_norm([p], 0.0)
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert clip_grad_norm([p], float("inf")) == 5.0 and p.grad.tolist() == [3.0, 4.0, 0.0]


def test_old_keyword_names_still_work_with_a_warning():
    ours, theirs = _net_with_gradients(100.0), _net_with_gradients(100.0)
    with pytest.warns(FutureWarning, match="max_norm= is renamed max_grad_norm="):
        old = clip_grad_norm(ours.parameters(), max_norm=1.0)
    assert torch.equal(old, clip_grad_norm(theirs.parameters(), max_grad_norm=1.0))
    with pytest.raises(TypeError, match="got both max_norm= and max_grad_norm="):
        clip_grad_norm(ours.parameters(), max_norm=1.0, max_grad_norm=1.0)
    for fn, new in [(clip_grad_norm, "max_grad_norm"), (translate, "max_new_tokens")]:
        assert new in inspect.signature(fn).parameters  # help() shows the new name only


# --- checkpoints ----------------------------------------------------------------------------------


def _config(**overrides):
    base = dict(src_vocab_size=20, tgt_vocab_size=20, d_model=16, num_heads=2, num_encoder_layers=1,
                num_decoder_layers=1, d_ff=32, dropout=0.1, max_len=32, pad_id=0,
                share_embeddings=True)
    return TransformerConfig(**{**base, **overrides})


def test_checkpoint_round_trip_with_tied_weights_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = Transformer(_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        src, tgt = torch.randint(1, 20, (4, 7)), torch.randint(1, 20, (4, 5))
        optimizer.zero_grad()
        model(src, tgt).sum().backward()
        optimizer.step()
    state = {"step": 3, "history": {"loss": [1.5, 1.25]}, "rng": torch.get_rng_state(),
             "name": None, "pair": (1, "a")}
    save_checkpoint(tmp_path / "ckpt", model, optimizer, **state)
    assert (sorted(p.name for p in (tmp_path / "ckpt").iterdir())
            == ["model.safetensors", "state.pt"])

    torch.manual_seed(1)
    fresh = Transformer(_config())
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    loaded = load_checkpoint(tmp_path / "ckpt", fresh, fresh_optimizer)
    assert loaded.keys() == state.keys() and torch.equal(loaded["rng"], state["rng"])
    assert loaded["history"] == state["history"] and loaded["pair"] == (1, "a")
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh.out_proj.weight is fresh.tgt_embed.weight is fresh.src_embed.weight
    saved_opt, loaded_opt = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved_opt["param_groups"] == loaded_opt["param_groups"]
    for k, v in saved_opt["state"].items():
        for key in v:
            assert torch.equal(v[key], loaded_opt["state"][k][key])


class _Payload:
    """Unpickling this object would create a file: the code an unsafe load would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_object_is_refused_and_never_runs(tmp_path):
    model = Transformer(_config())
    save_checkpoint(tmp_path, model)
    marker = tmp_path / "pwned"
    torch.save({"optimizer": None, "state": {"evil": _Payload(marker)}}, tmp_path / "state.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path, model)
    assert not marker.exists()


def test_save_checkpoint_refuses_state_it_could_not_load(tmp_path):
    model = Transformer(_config())
    for bad in ({"obj": object()}, {"nested": {"x": [1, random.Random(0)]}},
                {"np": {1: _Payload("x")}}):
        with pytest.raises(ValueError, match="checkpoint holds only"):
            save_checkpoint(tmp_path / "bad", model, **bad)


def test_load_checkpoint_errors(tmp_path):
    model = Transformer(_config())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path, model)
    save_checkpoint(tmp_path, model)
    with pytest.raises(ValueError, match="optimizer"):
        load_checkpoint(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"another config: d_ff \(32 saved, 64 in the model\)"):
        load_checkpoint(tmp_path, Transformer(_config(d_ff=64)))


# --- the trainer ----------------------------------------------------------------------------------


def _tiny_task(n=600, seed=0):
    """Copy strings of 3-6 letters: a tiny translation task."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        pairs.append((word, word))
    tokenizer = Seq2SeqTokenizer("abcdefgh")
    torch.manual_seed(seed)
    model = Transformer(_config(src_vocab_size=len(tokenizer), tgt_vocab_size=len(tokenizer),
                                d_model=32, num_heads=4, d_ff=64, dropout=0.0))
    return model, tokenizer, pairs


def _loader(pairs, tokenizer, batch_size=32, shuffle=True):
    dataset = TranslationDataset(pairs, tokenizer)
    sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=shuffle, seed=0)
    return DataLoader(dataset, batch_sampler=sampler,
                      collate_fn=partial(collate_translation, pad_id=tokenizer.pad_id))


def _resumable_run(tmp_path, steps, stop_at=None, resume=False, dropout=0.1):
    model, tokenizer, pairs = _tiny_task(n=200)
    torch.manual_seed(0)
    model = Transformer(_config(src_vocab_size=len(tokenizer), tgt_vocab_size=len(tokenizer),
                                dropout=dropout))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    trainer = Trainer(model, optimizer, partial(seq2seq_loss, label_smoothing=0.1),
                      _loader(pairs, tokenizer),
                      valid_loader=_loader(pairs[:64], tokenizer, shuffle=False),
                      schedule=partial(warmup_cosine_schedule, warmup_steps=4, total_steps=steps),
                      max_grad_norm=0.5, progress=False)
    if resume:
        trainer.load(tmp_path)
    trainer.fit(max_steps=stop_at or steps)
    if stop_at is not None:
        trainer.save(tmp_path)
    return trainer


@pytest.mark.parametrize("stop_at", [5, 7, 14])  # mid-epoch, exactly at the end of epoch 1, epoch 2
def test_resuming_gives_exactly_the_uninterrupted_losses(tmp_path, stop_at):
    straight = _resumable_run(tmp_path, 18)  # 7 batches per epoch
    _resumable_run(tmp_path, 18, stop_at=stop_at)
    resumed = _resumable_run(tmp_path, 18, resume=True)
    assert resumed.history == straight.history  # losses, learning rates, gradient norms, validation
    assert resumed.step == straight.step == 18 and resumed.epoch == straight.epoch == 2
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)


def test_trainer_learns_a_tiny_task():
    model, tokenizer, pairs = _tiny_task(n=1200)
    train, valid = pairs[:1000], pairs[1000:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def metrics(m):
        predictions = translate(m, tokenizer, [p[0] for p in valid], max_new_tokens=10)
        return {"exact_match": exact_match(predictions, [p[1] for p in valid])}

    trainer = Trainer(model, optimizer, seq2seq_loss, _loader(train, tokenizer), metrics_fn=metrics,
                      schedule=partial(warmup_cosine_schedule, warmup_steps=20, total_steps=320),
                      max_grad_norm=1.0, patience=3, monitor="exact_match", mode="max",
                      progress=False)
    history = trainer.fit(epochs=10)  # 32 batches per epoch
    assert trainer.step == 320 and history["valid"]["epoch"] == list(range(1, 11))
    assert (len(history["train"]["loss"]) == 320
            and history["train"]["lr"][19] == pytest.approx(1e-2))
    expect("Trainer: last loss / first loss",
           history["train"]["loss"][-1] / history["train"]["loss"][0], at_most=0.2)
    expect("Trainer: validation exact match after 10 epochs", history["valid"]["exact_match"][-1],
           at_least=0.9)


def test_early_stopping_and_generic_batches():
    """Any model and loss: a linear regression on (x, y) tuples, validated by a scripted metric."""
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    data = [(x[i:i + 8], x[i:i + 8].sum(-1, keepdim=True)) for i in range(0, 64, 8)]
    model = nn.Linear(3, 1)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.9])

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      lambda m, batch: F.mse_loss(m(batch[0]), batch[1]), data,
                      metrics_fn=lambda m: {"score": next(scores)}, patience=3, monitor="score",
                      mode="max", progress=False)
    trainer.fit(epochs=10)
    assert trainer.stopped_early and trainer.epoch == 5 and trainer.best_epoch == 2
    assert trainer.best == 0.7 and trainer.history["valid"]["score"] == [0.5, 0.7, 0.6, 0.65, 0.69]
    assert trainer.history["train"]["loss"][-1] < trainer.history["train"]["loss"][0]
    assert trainer.fit(epochs=10) and trainer.epoch == 5  # stopped stays stopped


def test_trainer_accepts_dict_and_named_tuple_batches():
    from collections import namedtuple

    Pair = namedtuple("Pair", "x y")
    x = torch.randn(16, 3)
    model = nn.Linear(3, 1)
    for data, loss_fn in [
        ([{"x": x, "y": x.sum(-1, keepdim=True)}], lambda m, b: F.mse_loss(m(b["x"]), b["y"])),
        ([Pair(x, x.sum(-1, keepdim=True))], lambda m, b: F.mse_loss(m(b.x), b.y)),
    ]:
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, data,
                          progress=False)
        trainer.fit(epochs=3)
        assert trainer.step == 3 and trainer.history["valid"]["epoch"] == [1, 2, 3]


def test_trainer_arguments():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, match in [({"mode": "up"}, "mode"), ({"patience": 0}, "patience"),
                          ({"max_grad_norm": 0}, "max_grad_norm")]:
        with pytest.raises(ValueError, match=match):
            Trainer(model, optimizer, lambda m, b: m(b).sum(), [torch.ones(1, 2)], **kwargs)
    trainer = Trainer(model, optimizer, lambda m, b: m(b).sum(), [torch.ones(1, 2)], progress=False,
                      patience=1, monitor="accuracy")
    with pytest.raises(ValueError, match="epochs, max_steps"):
        trainer.fit()
    with pytest.raises(ValueError, match="monitor 'accuracy'"):
        trainer.fit(epochs=1)


# --- evaluation -----------------------------------------------------------------------------------


def test_exact_match_and_bleu():
    refs = ["2021-03-03", "1985-11-22", "2049-12-31", "1950-01-01"]
    assert exact_match(refs, refs) == 1.0 and bleu(refs, refs) == pytest.approx(100.0)
    near = ["2021-03-04", "1985-11-22", "2049-12-31", "1950-01-01"]
    assert exact_match(near, refs) == 0.75
    assert 75.0 < bleu(near, refs) < 100.0  # characters give partial credit for the near miss
    far = ["1999-99-99"] * 4
    assert bleu(far, refs) < bleu(near, refs)
    with pytest.raises(ValueError, match="predictions"):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="predictions"):
        bleu([], [])


def test_translate_decodes_texts_greedy_or_beam():
    model, tokenizer, _ = _tiny_task()
    model.train()
    sources = ["abc", "hgfedc", "ab"]
    greedy = translate(model, tokenizer, sources, max_new_tokens=8, batch_size=2)
    assert len(greedy) == 3 and all(isinstance(o, str) for o in greedy)
    assert greedy == translate(model, tokenizer, sources, max_new_tokens=8, beam_size=1)
    beams = translate(model, tokenizer, sources, max_new_tokens=8, beam_size=3, length_alpha=0.5)
    assert len(beams) == 3
    assert model.training  # translate restores the mode it found
    with pytest.raises(ValueError, match="beam_size"):
        translate(model, tokenizer, ["abc"], beam_size=0)
