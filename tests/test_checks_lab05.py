"""transformer_lib.checks, lab 5 (efficient training): a catalogue of wrong implementations, each
to be rejected with the right diagnosis; correct implementations written differently, and the
library's own, to be accepted. They are registered in ``checks_catalogue`` and run by
``test_checks_catalogue.py``; the tests here ask more of a verdict than its diagnosis."""

import contextlib
import copy
import math
from pathlib import Path

import checks_catalogue as catalogue
import pytest
import torch
from torch import nn

from transformer_lib import (
    GPT,
    GPTConfig,
    checks,
    clip_grad_norm,
    lm_loss,
    load_checkpoint,
    save_checkpoint,
    warmup_cosine_schedule,
)
from transformer_lib.efficiency import flops_per_token

# --- FLOPs per token ---------------------------------------------------------------------------


def flops_with(*, forward=2, backward=4, attention=12, out=1, positions=False, d_ff=None, ffn=2,
               projections=4, heads=False, window=False, per_window=False):
    """A learner-style count, 6N + 12·L·T·D written out, with one mistake switched on."""

    def flops(config):
        L, D, V, T = config.num_layers, config.d_model, config.vocab_size, config.context_length
        F = config.d_ff if d_ff is None else d_ff(config)
        n = L * (projections * D * D + ffn * D * F) + out * D * V
        if positions:
            n += config.context_length * D
        attn = attention * L * T * D * (config.num_heads if heads else 1) * (T if window else 1)
        total = (forward + backward) * n + attn
        return float(total * T if per_window else total)

    return flops


def flops_every_parameter(config):  # nanoGPT's count, without subtracting the position table
    n = sum(p.numel() for p in GPT(config).parameters())
    return 6 * n + 12 * config.num_layers * config.context_length * config.d_model


def flops_every_parameter_no_attention(config):
    with torch.device("meta"):
        return 6 * sum(p.numel() for p in GPT(config).parameters())


def flops_matrices(config):  # every 2-d parameter but the positions: the untied input table too
    with torch.device("meta"):
        model = GPT(config)
    n = sum(p.numel() for name, p in model.named_parameters()
            if p.dim() == 2 and not name.startswith("positions"))
    return 6 * n + 12 * config.num_layers * config.context_length * config.d_model


def flops_as_list(config):
    return [flops_per_token(config)]


def flops_as_vector(config):
    return torch.tensor([flops_per_token(config)])


def flops_that_crashes(config):
    return 6 * config["d_model"]  # a GPTConfig is not a dict


def flops_stub(config):
    raise NotImplementedError("Exercise 1 (FLOPs per token): write your code here")


WRONG_FLOPS = {
    "forward only": (flops_with(backward=0, attention=4), "forward pass only"),
    "backward as one forward": (flops_with(backward=2, attention=8),
                                "backward pass is counted as one"),
    "no attention term": (flops_with(attention=0), "attention term is missing"),
    "attention forward only": (flops_with(attention=4), "attention term counts only the forward"),
    "attention halved": (flops_with(attention=6), "attention term is halved"),
    "attention times heads": (flops_with(heads=True), "multiplied by the number of heads"),
    "attention per window": (flops_with(window=True), "per window, not per token"),
    "per window": (flops_with(per_window=True), "divide by T"),
    "every parameter": (flops_every_parameter,
                        "position embeddings are a lookup, not a multiplication"),
    "every parameter, no attention": (flops_every_parameter_no_attention,
                                      "add the attention term"),
    "position table": (flops_with(positions=True), "position-embedding table (C·D) is counted"),
    "token table twice": (flops_with(out=2), "token table is counted twice"),
    "untied input table": (flops_matrices, "with tie_output=False the input token table"),
    "no output projection": (flops_with(out=0), "output projection (D·V, the logits) is missing"),
    "4 * d_model": (flops_with(d_ff=lambda c: 4 * c.d_model), "use config.d_ff (here F = 1000"),
    "one feed-forward matrix": (flops_with(ffn=1), "two matrices, D×F and F×D"),
    "three projections": (flops_with(projections=3), "four projections"),
    "a list": (flops_as_list, "as a number (a float); yours returned a list"),
    "a vector": (flops_as_vector, "tensor of shape (1,)"),
}

catalogue.wrong("check_flops_per_token", WRONG_FLOPS)


def test_check_flops_per_token_shows_every_case():
    with pytest.raises(AssertionError) as info:
        checks.check_flops_per_token(flops_with(attention=0))
    message = str(info.value)
    assert "in case 1 of 4 (GPTConfig(vocab_size=1000" in message
    assert "case 4 (L=6, D=512" in message and "<- more than 1% off" in message
    assert "expected 6N + 12·L·T·D with N = L(4D² + 2DF) + DV = 1,828,864" in message


def test_check_flops_per_token_reports_the_learners_exception():
    with pytest.raises(AssertionError) as info:
        checks.check_flops_per_token(flops_that_crashes)
    message = str(info.value)
    assert "your code raised TypeError" in message and 'config["d_model"]' in message
    assert "case 1 of 4" in message


def test_check_flops_per_token_stub():
    with pytest.raises(NotImplementedError,
                       match=r"^check_flops_per_token: Exercise 1 \(FLOPs per token\) is "
                             r"not done yet\. "):
        checks.check_flops_per_token(flops_stub)


def flops_from_linear_layers(config):  # the weights of a built GPT's Linear layers are N
    model = GPT(config)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 6 * n + 12 * config.num_layers * config.context_length * config.d_model


def flops_with_biases(config):  # everything but the lookups: biases and LayerNorms are < 1%
    with torch.device("meta"):
        model = GPT(config)
    lookups = model.positions.embedding.weight.numel()
    if not config.tie_output:
        lookups += model.embed.embedding.weight.numel()
    n = sum(p.numel() for p in model.parameters()) - lookups
    return torch.tensor(6.0 * n + 12 * config.num_layers * config.context_length * config.d_model)


def flops_as_an_int(config):
    L, D, F, V, T = (config.num_layers, config.d_model, config.d_ff, config.vocab_size,
                     config.context_length)
    per_layer = 3 * (2 * 4 * D * D + 2 * 2 * D * F + 2 * 2 * T * D)  # forward x 3: + backward
    return L * per_layer + 3 * 2 * D * V


catalogue.accepted("check_flops_per_token", [flops_per_token, flops_from_linear_layers,
                                             flops_with_biases, flops_as_an_int], cases=4)


# --- one optimizer update with gradient accumulation ---------------------------------------------


def train_step_with(*, divide=True, zero="start", step_each="", clip="after", autocast="dtype",
                    returns="mean", item=True):
    """A learner-style train_step, with one mistake switched on."""

    def train_step(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
        K = len(micro_batches)
        if zero == "start":
            optimizer.zero_grad()
        if clip == "before" and max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        losses = []
        for x, y in micro_batches:
            if zero == "each":
                optimizer.zero_grad()
            if autocast == "always":
                context = torch.autocast(device_type=x.device.type, dtype=dtype)
            elif autocast == "dtype" and dtype is not None:
                context = torch.autocast(device_type=x.device.type, dtype=dtype)
            else:
                context = contextlib.nullcontext()
            with context:
                loss = lm_loss(model(x), y)
            losses.append(loss)
            (loss / K if divide else loss).backward()
            if clip == "each" and max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            if step_each:
                optimizer.step()
                if step_each == "zero":
                    optimizer.zero_grad()
        if clip == "after" and max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if zero == "before_step":
            optimizer.zero_grad()
        if not step_each and zero != "no_step":
            optimizer.step()
        if clip == "after_step" and max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if zero == "end":
            optimizer.zero_grad()
        total = {"mean": sum(losses) / K, "last": losses[-1], "first": losses[0],
                 "sum": sum(losses), "divided": sum(loss / K for loss in losses) / K}[returns]
        return total.item() if item else total

    return train_step


def train_step_backward_after_loop(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        loss = lm_loss(model(x), y) / K
        total += loss.item()
    loss.backward()  # only the last micro-batch's graph
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total


def train_step_clips_each_gradient(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    params = [p for p in model.parameters()]
    K = len(micro_batches)
    summed = [torch.zeros_like(p) for p in params]
    total = 0.0
    for x, y in micro_batches:
        loss = lm_loss(model(x), y)
        total += loss.item() / K
        grads = torch.autograd.grad(loss / K, params)
        if max_grad_norm is not None:  # clipped alone, before it is added to the others
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            grads = [g * min(1.0, max_grad_norm / (float(norm) + 1e-6)) for g in grads]
        summed = [s + g for s, g in zip(summed, grads)]
    for p, g in zip(params, summed):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad()
    return total


def train_step_casts_the_model(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    if dtype is not None:
        model.to(dtype)
    return train_step_with()(model, optimizer, micro_batches, None, max_grad_norm)


def train_step_returns_none(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    train_step_with()(model, optimizer, micro_batches, dtype, max_grad_norm)


def train_step_that_crashes(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    for x, y in micro_batches:
        loss = lm_loss(model(x), y, reduction="mean")  # lm_loss has no reduction argument
        loss.backward()
    optimizer.step()


def train_step_stub(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    raise NotImplementedError("Exercise 2 (train_step): write your code here")


ONLY_LAST = "only the last micro-batch's gradient reaches the update"
STEP_EACH = "optimizer.step() runs after every micro-batch"
CLIP_IN_LOOP = "the gradient is clipped inside the loop, micro-batch by micro-batch"
CLIP_IGNORED = "max_grad_norm is ignored, or the clipping has no effect"

WRONG_TRAIN_STEP = {
    "loss not divided by K": (train_step_with(divide=False), "the loss is not divided by K = 2"),
    "step after every micro-batch": (train_step_with(step_each="zero"), STEP_EACH),
    "step after every micro-batch, no zero_grad": (train_step_with(step_each="keep"), STEP_EACH),
    "zero_grad before every backward": (train_step_with(zero="each"), ONLY_LAST),
    "backward once, after the loop": (train_step_backward_after_loop, ONLY_LAST),
    "never zero_grad": (train_step_with(zero="never"), "the gradients are never set to zero"),
    "zero_grad between backward and step": (train_step_with(zero="before_step"),
                                            "the parameters did not change"),
    "no optimizer.step()": (train_step_with(zero="no_step"), "the parameters did not change"),
    "clip after every backward": (train_step_with(clip="each"), CLIP_IN_LOOP),
    "clip each micro-batch's gradient": (train_step_clips_each_gradient, CLIP_IN_LOOP),
    "clipping ignored": (train_step_with(clip="never"), CLIP_IGNORED),
    "clip before the backward passes": (train_step_with(clip="before"), CLIP_IGNORED),
    "clip after step": (train_step_with(clip="after_step", zero="end"), CLIP_IGNORED),
    "autocast ignored": (train_step_with(autocast="never"), "dtype=torch.bfloat16 is ignored"),
    "autocast with dtype=None": (train_step_with(autocast="always"),
                                 "with dtype=None the forward pass ran in bfloat16"),
    "model cast to bfloat16": (train_step_casts_the_model, "changed the weights' dtype"),
    "returns the last loss": (train_step_with(returns="last"), "the last micro-batch's"),
    "returns the first loss": (train_step_with(returns="first"), "the first micro-batch's"),
    "returns the sum": (train_step_with(returns="sum"), "the sum of the K micro-batch losses"),
    "returns the loss divided twice": (train_step_with(returns="divided"), "divided by K twice"),
    "returns a tensor": (train_step_with(item=False), "as a Python float (loss.item()"),
    "returns nothing": (train_step_returns_none, "yours returned None"),
}

catalogue.wrong("check_train_step", WRONG_TRAIN_STEP)


def test_check_train_step_shows_the_update():
    with pytest.raises(AssertionError) as info:
        checks.check_train_step(train_step_with(divide=False))
    message = str(info.value)
    assert "in update 1 of 2 of case 2 of 6 (two micro-batches: K=2 micro-batches" in message
    assert "the update (the change of all parameters, L2 norm): yours" in message
    assert "largest difference at " in message


def test_check_train_step_finds_gradients_leaking_into_the_next_update():
    with pytest.raises(AssertionError) as info:
        checks.check_train_step(train_step_with(zero="never"))
    assert "in update 2 of 2 of case 1 of 6" in str(info.value)


def test_check_train_step_reports_the_learners_exception():
    with pytest.raises(AssertionError) as info:
        checks.check_train_step(train_step_that_crashes)
    message = str(info.value)
    assert "your code raised TypeError" in message and 'reduction="mean"' in message
    assert "while running update 1 of 2 in case 1 of 6" in message


def test_check_train_step_stub():
    with pytest.raises(NotImplementedError,
                       match=r"^check_train_step: Exercise 2 \(train_step\) is not done yet\. "):
        checks.check_train_step(train_step_stub)


def train_step_zero_at_the_end(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    K = len(micro_batches)
    losses = []
    for x, y in micro_batches:
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = lm_loss(model(x), y)
        (loss / K).backward()
        losses.append(loss.item())
    if max_grad_norm is not None:
        clip_grad_norm(model.parameters(), max_grad_norm)  # the library's own
    optimizer.step()
    model.zero_grad(set_to_none=False)
    return sum(losses) / len(losses)


def train_step_one_backward(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad(set_to_none=True)
    context = (torch.autocast(micro_batches[0][0].device.type, dtype=dtype) if dtype
               else contextlib.nullcontext())
    with context:
        total = sum(lm_loss(model(x), y) for x, y in micro_batches) / len(micro_batches)
    total.backward()
    if max_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total.item()


def train_step_whole_batch(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    # equal-size micro-batches: one forward on all of them is the same update
    x = torch.cat([x for x, _ in micro_batches])
    y = torch.cat([y for _, y in micro_batches])
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext():
        loss = lm_loss(model(x), y)
    loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


catalogue.accepted("check_train_step", {
    "train_step_with()": train_step_with(),
    "train_step_with(zero='end')": train_step_with(zero="end"),
    "train_step_zero_at_the_end": train_step_zero_at_the_end,
    "train_step_one_backward": train_step_one_backward,
    "train_step_whole_batch": train_step_whole_batch,
}, cases=6)


# --- the learning-rate schedule ------------------------------------------------------------------


def lr_with(*, warmup=None, progress=None, decay=None, start_at=0, clamp=True):
    """A learner-style schedule, with one mistake switched on."""

    def lr_at(step, max_lr, min_lr, warmup_steps, total_steps):
        step = step + start_at
        if step <= warmup_steps:
            if warmup is not None:
                return warmup(step, max_lr, min_lr, warmup_steps)
            return max_lr * step / warmup_steps
        if progress is not None:
            p = progress(step, warmup_steps, total_steps)
        else:
            p = (step - warmup_steps) / (total_steps - warmup_steps)
        if clamp:
            p = min(p, 1.0)
        if decay is not None:
            return decay(p, max_lr, min_lr)
        return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))

    return lr_at


def lr_factor(step, max_lr, min_lr, warmup_steps, total_steps):
    return warmup_cosine_schedule(step, warmup_steps, total_steps, min_factor=min_lr / max_lr)


def lr_counted_from_zero(step, max_lr, min_lr, warmup_steps, total_steps):
    it = step - 1  # the iteration number, from 0
    if it < warmup_steps:
        return max_lr * it / warmup_steps
    p = min(1.0, (it - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))


def lr_warmup_one_early(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return lr_with()(step, max_lr, min_lr, warmup_steps, total_steps)


def lr_no_warmup_at_all(step, max_lr, min_lr, warmup_steps, total_steps):
    p = min(1.0, step / total_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * p))


def lr_zero_after_the_end(step, max_lr, min_lr, warmup_steps, total_steps):
    if step > total_steps:
        return 0.0
    return lr_with()(step, max_lr, min_lr, warmup_steps, total_steps)


def lr_divides_by_warmup(step, max_lr, min_lr, warmup_steps, total_steps):
    warm = step / warmup_steps
    if warm <= 1:
        return max_lr * warm
    return lr_with()(step, max_lr, min_lr, warmup_steps, total_steps)


def lr_as_a_string(step, max_lr, min_lr, warmup_steps, total_steps):
    return f"{lr_with()(step, max_lr, min_lr, warmup_steps, total_steps):.6f}"


def lr_stub(step, max_lr, min_lr, warmup_steps, total_steps):
    raise NotImplementedError("Exercise 3 (the learning-rate schedule): write your code here")


OVER_TOTAL = "the decay's progress is measured over total_steps"
NO_WARMUP = "there is no warmup"

WRONG_LR = {
    "the multiplier": (lr_factor, "multiply it by max_lr"),
    "counted from 0": (lr_counted_from_zero, "your schedule is one step late"),
    "warmup step - 1": (lr_with(warmup=lambda s, M, m, w: M * (s - 1) / w), "yours uses step - 1"),
    "warmup step + 1": (lr_warmup_one_early, "yours uses step + 1"),
    "warmup / (w + 1)": (lr_with(warmup=lambda s, M, m, w: M * s / (w + 1)),
                         "divides by warmup_steps + 1"),
    "no warmup, held at max_lr": (lr_with(warmup=lambda s, M, m, w: M), NO_WARMUP),
    "no warmup at all": (lr_no_warmup_at_all, NO_WARMUP),
    "warmup from min_lr": (lr_with(warmup=lambda s, M, m, w: m + (M - m) * s / w),
                           "the warmup starts from min_lr"),
    "decays to 0": (lr_with(decay=lambda p, M, m: 0.5 * M * (1 + math.cos(math.pi * p))),
                    "the cosine decays to 0"),
    "min_lr added": (lr_with(decay=lambda p, M, m: m + 0.5 * M * (1 + math.cos(math.pi * p))),
                     "min_lr is added to the whole cosine"),
    "progress over total_steps": (lr_with(progress=lambda s, w, N: s / N), OVER_TOTAL),
    "(step - warmup) / total": (lr_with(progress=lambda s, w, N: (s - w) / N), OVER_TOTAL),
    "linear decay": (lr_with(decay=lambda p, M, m: M - (M - m) * p), "the decay is linear"),
    "not held at min_lr": (lr_with(clamp=False), "yours follows the cosine back up"),
    "0 after total_steps": (lr_zero_after_the_end, "not drop to 0"),
    "a full cosine": (lr_with(decay=lambda p, M, m: m + 0.5 * (M - m)
                              * (1 + math.cos(2 * math.pi * p))),
                      "a full cosine period"),
    "no 1 + cos": (lr_with(decay=lambda p, M, m: m + (M - m) * math.cos(math.pi * p)),
                   "which goes below min_lr"),
    "a string": (lr_as_a_string, "as a number (a float); yours returned a str"),
}

catalogue.wrong("check_lr_schedule", WRONG_LR)


def test_check_lr_schedule_shows_a_table():
    with pytest.raises(AssertionError) as info:
        checks.check_lr_schedule(lr_with(clamp=False))
    message = str(info.value)
    assert ("in case 1 of 4 (max_lr=0.001, min_lr=0.0001, warmup_steps=10, total_steps=100)"
            in message)
    assert "    step         yours      expected\n       1        0.0001        0.0001\n" in message
    assert "     150  " in message and "<- wrong" in message


def test_check_lr_schedule_division_by_zero_gets_a_hint():
    with pytest.raises(AssertionError) as info:
        checks.check_lr_schedule(lr_divides_by_warmup)
    message = str(info.value)
    assert ("your code raised ZeroDivisionError" in message
            and "warm = step / warmup_steps" in message)
    assert "hint: warmup_steps=0 means no warmup" in message


def test_check_lr_schedule_stub():
    with pytest.raises(NotImplementedError, match=r"^check_lr_schedule: Exercise 3 \(the "
                       r"learning-rate schedule\) is not done yet\. "):
        checks.check_lr_schedule(lr_stub)


def lr_by_hand(step, max_lr, min_lr, warmup_steps, total_steps):
    if warmup_steps and step < warmup_steps:
        return step / warmup_steps * max_lr
    if step >= total_steps:
        return min_lr
    cosine = math.cos((step - warmup_steps) / (total_steps - warmup_steps) * math.pi)
    return min_lr + (max_lr - min_lr) * (cosine + 1) / 2


def lr_with_torch(step, max_lr, min_lr, warmup_steps, total_steps):  # a 0-d tensor is a number
    s = torch.tensor(float(step), dtype=torch.float64)
    warm = max_lr * s / max(warmup_steps, 1)
    p = ((s - warmup_steps) / (total_steps - warmup_steps)).clamp(0, 1)
    decay = min_lr + 0.5 * (max_lr - min_lr) * (1 + torch.cos(torch.pi * p))
    return torch.where(s <= warmup_steps, warm, decay)


catalogue.accepted("check_lr_schedule", {
    "max_lr * warmup_cosine_schedule": lambda step, max_lr, min_lr, warmup_steps, total_steps:
        max_lr * warmup_cosine_schedule(step, warmup_steps, total_steps,
                                        min_factor=min_lr / max_lr),
    "lr_with()": lr_with(),
    "lr_by_hand": lr_by_hand,
    "lr_with_torch": lr_with_torch,
}, cases=4)


# --- saving and resuming a training run ----------------------------------------------------------


def save_state(path, model, optimizer, step, generator):
    save_checkpoint(path, model, optimizer, step=step, generator=generator.get_state())


def load_state(path, model, optimizer, generator):
    state = load_checkpoint(path, model, optimizer)
    generator.set_state(state["generator"])
    return state["step"]


def load_state_no_return(path, model, optimizer, generator):
    load_state(path, model, optimizer, generator)


def load_state_next_step(path, model, optimizer, generator):
    return load_state(path, model, optimizer, generator) + 1


def load_state_into_a_copy(path, model, optimizer, generator):
    return load_state(path, copy.deepcopy(model), optimizer, generator)


def save_state_a_new_model(path, model, optimizer, step, generator):
    save_checkpoint(path, GPT(model.config), optimizer, step=step,
                    generator=generator.get_state())


def save_state_without_optimizer(path, model, optimizer, step, generator):
    save_checkpoint(path, model, step=step, generator=generator.get_state())


def load_state_without_optimizer(path, model, optimizer, generator):
    return load_state(path, model, None, generator)


def load_state_without_generator(path, model, optimizer, generator):
    return load_checkpoint(path, model, optimizer)["step"]


def save_state_new_generator(path, model, optimizer, step, generator):
    save_checkpoint(path, model, optimizer, step=step, generator=torch.Generator().get_state())


def save_state_the_generator(path, model, optimizer, step, generator):
    save_checkpoint(path, model, optimizer, step=step, generator=generator)


def load_state_new_parameters(path, model, optimizer, generator):
    step = load_state(path, model, optimizer, generator)
    fresh = {name: value.clone() for name, value in model.state_dict().items()}
    model.load_state_dict(fresh, assign=True)  # new tensors: the optimizer keeps the old ones
    return step


def save_state_stub(path, model, optimizer, step, generator):
    raise NotImplementedError("Exercise 4 (save and resume): write your code here")


WRONG_RESUME = {
    "no return": ((save_state, load_state_no_return), "load_state returned None"),
    "the next step": ((save_state, load_state_next_step), "load_state returned 4: return the step"),
    "weights not loaded": ((save_state, load_state_into_a_copy),
                           "the model's weights were not loaded"),
    "another model's weights": ((save_state_a_new_model, load_state),
                                "the model's weights differ from the ones saved"),
    "optimizer not saved": ((save_state_without_optimizer, load_state_without_optimizer),
                            "the optimizer's state was not restored"),
    "optimizer not loaded": ((save_state, load_state_without_optimizer),
                             "the optimizer's state was not restored"),
    "generator not restored": ((save_state, load_state_without_generator),
                               "the generator's state was not restored"),
    "another generator's state": ((save_state_new_generator, load_state),
                                  "the generator's state differs from the one saved"),
    "the generator itself": ((save_state_the_generator, load_state),
                             "your code raised ValueError: state 'generator' is a Generator"),
    "new parameter tensors": ((save_state, load_state_new_parameters),
                              "the resumed run differs from the run without a break"),
}

catalogue.wrong("check_resume", WRONG_RESUME)


def test_check_resume_hints_at_plain_state():
    with pytest.raises(AssertionError) as info:
        checks.check_resume(save_state_the_generator, load_state)
    message = str(info.value)
    assert "generator=generator)" in message  # the learner's line
    assert "hint: save_checkpoint's keyword arguments are plain values" in message
    assert "while saving after step 3 in case 1 of 2" in message


def test_check_resume_stub():
    with pytest.raises(NotImplementedError, match=r"^check_resume: Exercise 4 \(save and resume\) "
                       r"is not done yet\. "):
        checks.check_resume(save_state_stub, load_state)


def save_state_by_hand(path, model, optimizer, step, generator):
    Path(path).mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": torch.tensor(step), "rng": generator.get_state()}, Path(path) / "all.pt")


def load_state_by_hand(path, model, optimizer, generator):
    state = torch.load(Path(path) / "all.pt", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["rng"])
    return state["step"]  # a 0-d tensor of ints


catalogue.accepted("check_resume", [(save_state, load_state),
                                    (save_state_by_hand, load_state_by_hand)], cases=2)


# --- all four ----------------------------------------------------------------------------------


def test_the_catalogue_is_large():
    assert len(WRONG_FLOPS) + len(WRONG_TRAIN_STEP) + len(WRONG_LR) + len(WRONG_RESUME) >= 60


def test_training_checks_leave_the_callers_state_alone(capsys):
    threads = torch.get_num_threads()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    checks.check_flops_per_token(flops_per_token)
    checks.check_train_step(train_step_with())
    checks.check_lr_schedule(lr_with())
    checks.check_resume(save_state, load_state)
    torch.testing.assert_close(torch.rand(3), expected)  # the same random stream
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert not torch.is_autocast_enabled("cpu")
    with torch.no_grad():  # a notebook cell under no_grad: the training checks still train
        checks.check_train_step(train_step_with())
        assert not torch.is_grad_enabled()
    assert capsys.readouterr().out.count("pass\n") == 5


def test_the_tiny_gpt_is_the_briefs():
    config = GPTConfig(vocab_size=11, context_length=8, d_model=16, num_heads=2, num_layers=1)
    assert config.dropout == 0.0 and GPT(config).config == config
