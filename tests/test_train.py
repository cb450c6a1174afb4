"""transformer_lib.train: the training command, resuming, and DDP."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from transformer_lib import GPT, GPTConfig, read_checkpoint_state
from transformer_lib import train as tr
from transformer_lib.outcomes import expect

SMOKE = replace(tr.PRESETS["cpu-smoke"], max_steps=12, warmup_steps=3, log_every=1, eval_every=6,
                eval_batches=2, batch_size=8)


def read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def run_command(*args, nproc=None, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "transformer_lib.train", *args]
    else:
        cmd = [sys.executable, "-m", "transformer_lib.train", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


# --- data -----------------------------------------------------------------------------------------


def test_get_batch_ranks_take_slices_of_one_global_batch():
    data = torch.arange(1000)
    whole = tr.get_batch(data, 8, 16, torch.Generator().manual_seed(5))
    parts = [tr.get_batch(data, 2, 16, torch.Generator().manual_seed(5), rank, 4)
             for rank in range(4)]
    assert torch.equal(torch.cat([x for x, _ in parts]), whole[0])
    assert torch.equal(torch.cat([y for _, y in parts]), whole[1])
    assert torch.equal(whole[1][:, :-1], whole[0][:, 1:])  # targets are inputs shifted by one
    assert not torch.equal(parts[0][0], parts[1][0])  # ranks see different windows
    with pytest.raises(ValueError, match="too few"):
        tr.get_batch(torch.arange(10), 2, 16, torch.Generator())
    with pytest.raises(ValueError, match="rank"):
        tr.get_batch(data, 2, 16, torch.Generator(), rank=4, world_size=4)


def test_load_corpus_splits_by_file():
    tokenizer, train_ids, val_ids = tr.load_corpus(100_000)
    assert train_ids.dtype == torch.int64 and len(train_ids) > 5 * len(val_ids) > 0
    assert int(train_ids.max()) < tokenizer.vocab_size


def test_make_optimizer_decays_matrices_only():
    model = GPT(GPTConfig(20, 8, 16, 2, 1))
    optimizer = tr.make_optimizer(model, 1e-3, weight_decay=0.1)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert tr.make_optimizer(model, 1e-3, fused=True).defaults["fused"]


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, match", [
    ({"warmup_steps": 12}, "warmup_steps must be < max_steps"),
    ({"d_model": 30}, "divisible"),
    ({"dtype": "float16"}, "dtype"),
    ({"batch_size": 0}, "batch_size"),
    ({"grad_accum": 1.5}, "grad_accum must be an int"),
    ({"compile": 1}, "compile must be a bool"),
    ({"min_lr": 1.0}, "min_lr"),
    ({"data": "random"}, "vocab_size must be set"),
])
def test_config_errors_name_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        replace(SMOKE, **changes)


def test_presets_are_valid_and_gpu_one_is_10_to_20m_parameters():
    assert {"cpu-smoke", "cpu", "gpu", "gpt2-small-bench"} <= set(tr.PRESETS)
    gpu = tr.PRESETS["gpu"].gpt_config(100)
    n = sum(p.numel() for p in GPT(gpu).parameters())
    assert 10e6 <= n <= 20e6, n
    bench = tr.PRESETS["gpt2-small-bench"].gpt_config(0)
    assert ((bench.d_model, bench.num_layers, bench.num_heads, bench.context_length)
            == (768, 12, 12, 1024))


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", [0.0, 0.1])  # with dropout, torch's RNG state is restored too
def test_resume_continues_exactly(tmp_path, dropout):
    config = replace(SMOKE, dropout=dropout)
    whole = tr.train(config, tmp_path / "whole", progress=False)
    tr.train(config, tmp_path / "parts", progress=False, stop_after=5)
    assert [m["step"] for m in read_metrics(tmp_path / "parts")] == [1, 2, 3, 4, 5]
    resumed = tr.train(config, tmp_path / "parts", progress=False, resume=True)
    a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts")
    assert [m["step"] for m in b] == list(range(1, 13))
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    # the interrupted run also measured the validation loss where it stopped, at step 5
    assert [m.get("val_loss") for m in a if m["step"] != 5] == \
        [m.get("val_loss") for m in b if m["step"] != 5]
    assert resumed["val_loss"] == whole["val_loss"]
    model_a, model_b = (GPT(config.gpt_config(whole_vocab(tmp_path / d)))
                        for d in ("whole", "parts"))
    tr.load_checkpoint(tmp_path / "whole" / "checkpoint", model_a)
    tr.load_checkpoint(tmp_path / "parts" / "checkpoint", model_b)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)


def test_resume_refuses_other_settings_but_allows_logging_changes(tmp_path):
    tr.train(SMOKE, tmp_path, progress=False, stop_after=2)
    with pytest.raises(ValueError, match=r"other settings: batch_size \(8 -> 4\), lr"):
        tr.train(replace(SMOKE, batch_size=4, lr=1e-3), tmp_path, progress=False, resume=True)
    result = tr.train(replace(SMOKE, log_every=3), tmp_path, progress=False, resume=True)
    assert result["steps"] == SMOKE.max_steps


def test_command_refuses_to_resume_with_other_settings(tmp_path, capsys):
    tr.train(SMOKE, tmp_path, progress=False, stop_after=2)
    with pytest.raises(SystemExit) as info:
        tr.main(["--preset", "cpu-smoke", "--out", str(tmp_path), "--resume"])
    assert info.value.code == 2
    assert "cannot resume" in capsys.readouterr().err


def whole_vocab(folder):
    return read_checkpoint_state(folder / "checkpoint")["vocab_size"]


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = tr.train(replace(SMOKE, max_steps=6, warmup_steps=2), tmp_path / "big", progress=False)
    small = tr.train(replace(SMOKE, max_steps=6, warmup_steps=2, batch_size=4, grad_accum=2),
                     tmp_path / "acc", progress=False)
    a, b = read_metrics(tmp_path / "big"), read_metrics(tmp_path / "acc")
    assert big["tokens_per_step"] == small["tokens_per_step"]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)


def test_training_lowers_the_loss(tmp_path):
    result = tr.train(replace(tr.PRESETS["cpu-smoke"], max_steps=40), tmp_path, progress=False)
    metrics = read_metrics(tmp_path)
    expect("cpu-smoke: first loss", metrics[0]["loss"], at_least=3.9)  # about ln V = 4.1
    expect("cpu-smoke: validation loss after 40 steps", result["val_loss"], at_most=3.2)
    assert all(m["tokens_per_sec"] > 0 and m["mfu"] is None for m in metrics)  # no known CPU peak


def test_bf16_and_math_attention_train(tmp_path):
    config = replace(SMOKE, max_steps=4, warmup_steps=1, dtype="bfloat16", fused_attention=False)
    result = tr.train(config, tmp_path, progress=False)
    expect("bf16, math attention: loss after 4 steps", result["final_loss"], at_least=2.0,
           at_most=6.0)


@pytest.mark.parametrize("preset", ["gpu", "gpt2-small-bench"])
def test_gpu_presets_run_shrunk_on_a_cpu(tmp_path, preset):
    """Every switch of the GPU presets (bf16, TF32, fused AdamW, dropout, random tokens) on a tiny
    model; compiling is left to lab 5, which runs it."""
    config = replace(tr.PRESETS[preset], context_length=16, d_model=32, num_heads=2, num_layers=1,
                     max_chars=50_000, max_file_bytes=32_000, batch_size=2, max_steps=3,
                     warmup_steps=1, eval_every=3, eval_batches=1, log_every=1, compile=False,
                     vocab_size=None if preset == "gpu" else 64)
    result = tr.train(config, tmp_path, device="cpu", progress=False)
    assert result["steps"] == 3 and 0 < result["val_loss"] < 10
    assert len(read_metrics(tmp_path)) == 3


# --- the command, alone and under torchrun --------------------------------------------------------

FLAGS = ["--preset", "cpu-smoke", "--max-steps", "8", "--warmup-steps", "2", "--log-every", "1",
         "--eval-every", "4", "--eval-batches", "2", "--no-progress"]


def test_command_writes_metrics_and_a_checkpoint(tmp_path):
    done = run_command(*FLAGS, "--batch-size", "8", "--out", str(tmp_path))
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 8 and summary["world_size"] == 1
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert all({"step", "loss", "tokens_per_sec", "lr", "grad_norm"} <= set(m) for m in metrics)
    assert {m["step"] for m in metrics if "val_loss" in m} == {4, 8}
    assert ({p.name for p in (tmp_path / "checkpoint").iterdir()}
            == {"model.safetensors", "state.pt"})


def test_help_lists_every_field_with_its_reason():
    text = tr._parser().format_help()
    for name in ("--batch-size", "--grad-accum", "--dtype", "--no-compile", "--stop-after"):
        assert name in text
    assert "windows per micro-batch in each process" in text  # the reason in the field's metadata
    assert set(tr._field_reasons()) == {f.name for f in tr.fields(tr.TrainConfig)}


def test_max_grad_norm_none_turns_clipping_off_and_grad_clip_is_its_old_name(capsys):
    def settings(*flags):
        return tr._overrides(tr._parser().parse_args(["--out", "x", *flags]))
    assert settings("--max-grad-norm", "none") == {"max_grad_norm": None}
    assert settings("--max-grad-norm", "0.5") == {"max_grad_norm": 0.5}
    assert settings("--grad-clip", "0") == {"max_grad_norm": None}  # 0 meant "off"
    assert settings("--grad-clip", "2") == {"max_grad_norm": 2.0}
    assert "--grad-clip is renamed --max-grad-norm" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give only one"):
        settings("--grad-clip", "2", "--max-grad-norm", "1")
    with pytest.raises(ValueError, match="max_grad_norm must be None"):
        replace(SMOKE, max_grad_norm=0.0)


def test_a_checkpoint_saved_with_grad_clip_reads_as_max_grad_norm(tmp_path):
    tr.train(SMOKE, tmp_path, progress=False, stop_after=2)
    config = read_checkpoint_state(tmp_path / "checkpoint")["config"]
    old = {("grad_clip" if k == "max_grad_norm" else k): v for k, v in config.items()}
    assert tr._saved_config(old) == config
    assert tr._saved_config({**old, "grad_clip": 0.0})["max_grad_norm"] is None


def test_command_rejects_bad_flags(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "transformer_lib.train", "--preset", "cpu-smoke",
                           "--max-steps", "5", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "warmup_steps must be < max_steps" in done.stderr


@pytest.mark.parametrize("flags, message", [
    (["--out", ""], "out must name a folder, got an empty string"),
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--device", "cuda:x"], "device must be cpu, cuda or cuda:N, got 'cuda:x'"),
    (["--vocab-size", "5"], "vocab_size must be at least the"),
    (["--max-chars", "10"], "max_chars=10 (with max_file_bytes=32000) gives 0 training"),
    (["--lr", "1e300"], "lr must be a finite number within float32's range"),
    (["--max-grad-norm", "nan"], "max_grad_norm must be a finite number"),
    (["--resume", "--overwrite"], "resume and overwrite exclude each other"),
])
def test_command_rejects_bad_settings_in_one_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                                   flags, message):
    monkeypatch.chdir(tmp_path)  # --out "" must not train into the current folder
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        tr.main(["--preset", "cpu-smoke", "--max-steps", "3", "--warmup-steps", "1",
                 "--no-progress", "--out", str(out), *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m transformer_lib.train: error:")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the folder


def test_command_names_a_cuda_device_it_cannot_use(tmp_path, capsys):
    if torch.cuda.is_available():  # a GPU machine: ask for one it does not have
        device, message = "cuda:99", "device 'cuda:99': this machine has"
    else:
        device, message = "cuda", "device 'cuda' needs a CUDA GPU, and this PyTorch sees none"
    with pytest.raises(SystemExit):
        tr.main(["--preset", "cpu-smoke", "--out", str(tmp_path / "run"), "--device", device])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_earlier_run_is_never_overwritten_silently(tmp_path, capsys):
    tr.train(SMOKE, tmp_path, progress=False, stop_after=2)
    before = {p.name: p.read_bytes() for p in [tmp_path / "metrics.jsonl",
                                               *(tmp_path / "checkpoint").iterdir()]}
    with pytest.raises(tr.ConfigError, match="already holds a run .metrics.jsonl and checkpoint."):
        tr.train(SMOKE, tmp_path, progress=False)
    with pytest.raises(SystemExit):
        tr.main(["--preset", "cpu-smoke", "--out", str(tmp_path), "--no-progress"])
    assert "pass --resume to continue it, --overwrite to delete it" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in [tmp_path / "metrics.jsonl",
                                              *(tmp_path / "checkpoint").iterdir()]}
    assert after == before
    # --overwrite starts over: the new run's metrics alone, from step 1
    tr.train(replace(SMOKE, max_steps=4), tmp_path, progress=False, overwrite=True)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_ddp_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    """Two gloo processes with 4 windows each (and 2 micro-batches of 2) = one process with 8."""
    run_command(*FLAGS, "--batch-size", "8", "--out", str(tmp_path / "one"))
    run_command(*FLAGS, "--batch-size", "2", "--grad-accum", "2", "--out", str(tmp_path / "ddp"),
                nproc=2)
    one, ddp = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "ddp")
    assert [m["step"] for m in ddp] == list(range(1, 9))  # rank 0 alone writes
    for a, b in zip(one, ddp):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (a, b)
    assert one[-1]["val_loss"] == pytest.approx(ddp[-1]["val_loss"], abs=2e-5)
