"""Checkpoints are whole or absent, whatever moment a process dies; a bad one changes nothing.

save_checkpoint writes a new folder beside the old one and swaps them with renames;
load_checkpoint reads and checks everything before it changes the model. Tested by failing
each step of a save on purpose, by damaging files, and by killing a real training run
(``python -m transformer_lib.train``) at many moments and resuming it each time.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import transformer_lib.training as training
from transformer_lib import (
    GPT,
    CheckpointError,
    GPTConfig,
    Transformer,
    TransformerConfig,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

CONFIG = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, num_heads=2,
                           num_encoder_layers=1, num_decoder_layers=1, d_ff=32, pad_id=0)


def model(seed, config=CONFIG):
    torch.manual_seed(seed)
    return Transformer(config)


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class Crash(Exception):
    pass


def crash_on_call(monkeypatch, owner, name, call):
    """Make ``owner.name`` raise Crash on its ``call``-th call (1-based) and work otherwise."""
    original, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Crash(f"{name}, call {call}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def truncating_save_model(model, filename, metadata=None):
    training.safetensors_save_model(model, filename, metadata=metadata)  # set below
    data = Path(filename).read_bytes()
    Path(filename).write_bytes(data[: len(data) // 2])
    raise Crash("died while writing model.safetensors")


# every step of a save: the two files, the flushes, the two renames
FAULTS = [("save_model", 1), ("torch_save", 1), ("_sync", 1), ("_sync", 3), ("replace", 1),
          ("replace", 2), ("truncate", 1)]


@pytest.mark.parametrize("fault, call", FAULTS)
def test_a_save_that_dies_leaves_the_previous_or_the_new_checkpoint_whole(tmp_path, monkeypatch,
                                                                          fault, call):
    first, second = model(1), model(2)
    save_checkpoint(tmp_path / "ckpt", first, step=1)
    with monkeypatch.context() as patch:
        if fault == "torch_save":
            crash_on_call(patch, training.torch, "save", call)
        elif fault == "replace":
            crash_on_call(patch, training.os, "replace", call)
        elif fault == "truncate":
            patch.setattr(training, "safetensors_save_model", training.save_model, raising=False)
            patch.setattr(training, "save_model", truncating_save_model)
        else:
            crash_on_call(patch, training, fault, call)
        with pytest.raises(Crash):
            save_checkpoint(tmp_path / "ckpt", second, step=2)
    loaded = model(3)
    state = load_checkpoint(tmp_path / "ckpt", loaded)
    assert same_weights(loaded, first if state["step"] == 1 else second)
    # only a crash after the old folder was moved aside may leave the new one in its place
    assert state["step"] == (2 if (fault, call) == ("replace", 2) else 1)
    # the next save finishes or discards the interrupted one, and leaves nothing beside it
    save_checkpoint(tmp_path / "ckpt", second, step=3)
    assert load_checkpoint(tmp_path / "ckpt", loaded)["step"] == 3 and same_weights(loaded, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert (sorted(p.name for p in (tmp_path / "ckpt").iterdir())
            == ["model.safetensors", "state.pt"])


def test_a_refused_load_changes_nothing(tmp_path):
    save_checkpoint(tmp_path / "small", model(1), torch.optim.Adam(model(1).parameters()), step=1)
    bigger = model(2, replace(CONFIG, d_ff=48))
    before = {k: v.clone() for k, v in bigger.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model.safetensors was saved from a model "
                                              r"with another config: d_ff \(32 saved, "
                       r"48 in the model\)"):
        load_checkpoint(tmp_path / "small", bigger)
    assert all(torch.equal(before[k], v) for k, v in bigger.state_dict().items())
    # a config that shapes cannot see (num_heads) is refused too
    with pytest.raises(CheckpointError, match=r"num_heads \(2 saved, 4 in the model\)"):
        load_checkpoint(tmp_path / "small", model(2, replace(CONFIG, num_heads=4)))
    # without a config to compare, names and shapes are checked before anything changes
    gpt = GPT(GPTConfig(vocab_size=20, context_length=8, d_model=16, num_heads=2, num_layers=1))
    save_checkpoint(tmp_path / "gpt", gpt)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 16))
    weight = plain[0].weight.clone()
    with pytest.raises(CheckpointError, match="does not fit this model .missing: 0.weight, 0.bias; "
                                              "not in the model: "):
        load_checkpoint(tmp_path / "gpt", plain)
    assert torch.equal(plain[0].weight, weight)
    # an optimizer over other parameters is refused before the model changes
    fresh = model(5)
    kept = {k: v.clone() for k, v in fresh.state_dict().items()}
    two_groups = torch.optim.Adam([{"params": list(fresh.parameters())[:3]},
                                   {"params": list(fresh.parameters())[3:]}])
    with pytest.raises(CheckpointError, match="is for parameter groups of sizes"):
        load_checkpoint(tmp_path / "small", fresh, two_groups)
    assert all(torch.equal(kept[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
@pytest.mark.parametrize("file", ["model.safetensors", "state.pt"])
def test_a_damaged_file_is_named(tmp_path, file, damage):
    save_checkpoint(tmp_path, model(1), step=1)
    data = (tmp_path / file).read_bytes()
    (tmp_path / file).write_bytes({"empty": b"", "truncated": data[: len(data) // 3],
                                   "garbage": os.urandom(len(data))}[damage])
    target = model(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"{tmp_path / file} is damaged and cannot be read"):
        load_checkpoint(tmp_path, target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a checkpoint: model.safetensors and "
                                                "state.pt missing"):
        load_checkpoint(tmp_path, model(1))
    assert latest_checkpoint(tmp_path) is None


# --- a real training run, killed at many moments ----------------------------------------------

RUN = ["--preset", "cpu-smoke", "--max-steps", "30", "--warmup-steps", "3", "--log-every", "1",
       "--eval-every", "30", "--eval-batches", "1", "--batch-size", "4", "--checkpoint-every", "1",
       "--no-progress"]


def command(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    return [sys.executable, "-m", "transformer_lib.train", *RUN, "--out", str(out), *extra], env


def logged_steps(out):
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass
    return max(steps, default=0)


def test_a_run_killed_at_many_moments_resumes_to_the_same_result(tmp_path):
    cmd, env = command(tmp_path / "straight")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text()

    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    for target in (2, 5, 8, 11, 14, 17, 20, 23, 26):
        resume = ["--resume"] if (out / "metrics.jsonl").exists() else []
        cmd, env = command(out, *resume)
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while process.poll() is None and logged_steps(out) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))  # somewhere in the next step or its checkpoint
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        folder = latest_checkpoint(out / "checkpoint")
        assert folder is not None, f"no whole checkpoint after a kill near step {target}"
        state = training.read_checkpoint_state(out / "checkpoint")
        assert 1 <= state["step"] <= 30
    assert kills >= 6, kills  # most kills landed in the middle of the run
    cmd, env = command(out, "--resume")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    def without_timing(text):
        keep = ("step", "loss", "lr", "grad_norm", "val_loss")
        return [{k: v for k, v in json.loads(line).items() if k in keep}
                for line in text.splitlines()]

    assert without_timing((out / "metrics.jsonl").read_text()) == without_timing(straight)
