"""transformer_lib.checks, lab 5 (efficient training): a second catalogue of wrong implementations,
written as learners write them, each to be rejected with a diagnosis that names the mistake made
(or, for the few marked GENERIC, the check's message that it knows no mistake that fits); and
correct implementations written differently, each to be accepted. They are registered in
``checks_catalogue`` and run by ``test_checks_catalogue.py``."""

import contextlib
import math
import statistics

import checks_catalogue as catalogue
import numpy as np
import torch
from checks_catalogue import GENERIC
from torch import nn

from transformer_lib import GPT, lm_loss

# --- exercise 1: FLOPs per token ------------------------------------------------------------------


def flops_forward_factor_on_weights(config):
    L, D, F, V, T = (config.num_layers, config.d_model, config.d_ff, config.vocab_size,
                     config.context_length)
    n_params = L * (4 * D * D + 2 * D * F) + D * V
    attention = 12 * L * T * D
    return 2 * n_params + attention  # 2 FLOPs per weight: one multiply, one add


def flops_multiply_adds(config):
    # one multiply-accumulate per weight going forward, two going back
    L, D, F = config.num_layers, config.d_model, config.d_ff
    macs = L * (4 * D**2 + 2 * D * F) + D * config.vocab_size
    attention_macs = 2 * L * config.context_length * D
    return 3 * (macs + attention_macs)


def flops_one_layer(config):
    D, F, T = config.d_model, config.d_ff, config.context_length
    per_layer = 6 * (4 * D * D + 2 * D * F) + 12 * T * D
    head = 6 * D * config.vocab_size
    return per_layer + head


def flops_head_inside_the_layer_loop(config):
    D, F, V, T = config.d_model, config.d_ff, config.vocab_size, config.context_length
    total = 0
    for _ in range(config.num_layers):
        weights = 4 * D * D + 2 * D * F + D * V
        total += 6 * weights + 12 * T * D
    return total


def flops_attention_once(config):
    L, D, F, V, T = (config.num_layers, config.d_model, config.d_ff, config.vocab_size,
                     config.context_length)
    N = L * (4 * D * D + 2 * D * F) + D * V
    return 6 * N + 12 * T * D  # the attention term


def flops_attention_per_head_size(config):
    L, D, H = config.num_layers, config.d_model, config.num_heads
    head_dim = D // H
    N = L * (4 * D * D + 2 * D * config.d_ff) + D * config.vocab_size
    return 6 * N + 12 * L * config.context_length * head_dim


def flops_attention_t_squared(config):
    L, D, T = config.num_layers, config.d_model, config.context_length
    N = L * (4 * D * D + 2 * D * config.d_ff) + D * config.vocab_size
    scores = 2 * T * T * D  # Q K^T for the window
    mix = 2 * T * T * D  # weights @ V
    return 6 * N + 3 * L * (scores + mix)


def flops_attention_t_instead_of_d(config):
    L, D, T = config.num_layers, config.d_model, config.context_length
    N = L * (4 * D * D + 2 * D * config.d_ff) + D * config.vocab_size
    return 6 * N + 12 * L * T * T


def flops_gpt_ffn_width(config):
    L, D, V, T = config.num_layers, config.d_model, config.vocab_size, config.context_length
    F = 4 * D  # GPT's feed-forward is 4x wider
    return 6 * (L * (4 * D * D + 2 * D * F) + D * V) + 12 * L * T * D


def flops_every_matrix(config):
    with torch.device("meta"):
        model = GPT(config)
    n = sum(p.numel() for p in model.parameters() if p.dim() == 2)  # the matrices, not biases
    return 6 * n + 12 * config.num_layers * config.context_length * config.d_model


def flops_two_token_tables(config):
    L, D, F, V, T = (config.num_layers, config.d_model, config.d_ff, config.vocab_size,
                     config.context_length)
    embedding = V * D
    unembedding = D * V
    N = L * (4 * D * D + 2 * D * F) + embedding + unembedding
    return 6 * N + 12 * L * T * D


def flops_forward_only_and_no_attention(config):  # two mistakes at once
    L, D, F = config.num_layers, config.d_model, config.d_ff
    return 2 * (L * (4 * D * D + 2 * D * F) + D * config.vocab_size)


def flops_positions_and_forward_weights(config):  # two mistakes at once
    L, D, F = config.num_layers, config.d_model, config.d_ff
    N = L * (4 * D * D + 2 * D * F) + D * config.vocab_size + config.context_length * D
    return 2 * N + 12 * L * config.context_length * D


WRONG_FLOPS = {
    "2N for the weights": (flops_forward_factor_on_weights,
                           "the weights are counted for the forward pass only (2N)"),
    "multiply-adds": (flops_multiply_adds, "a multiply-add is counted as 1 FLOP"),
    "one layer": (flops_one_layer, "the layers are counted once"),
    "output projection per layer": (flops_head_inside_the_layer_loop,
                                    "the output projection (D·V) is counted once per layer"),
    "attention once": (flops_attention_once,
                       "the attention term is counted once, not once per layer"),
    "attention with the head size": (flops_attention_per_head_size,
                                     "the attention term uses the head size D/H"),
    "attention over T * T pairs": (flops_attention_t_squared,
                                   "per window, not per token (12·L·T²·D)"),
    "attention with T for D": (flops_attention_t_instead_of_d,
                               "the attention term has T where D belongs"),
    "F = 4 * D": (flops_gpt_ffn_width, "use config.d_ff (here F = 1000, not 4·D = 1536)"),
    "every matrix": (flops_every_matrix, "your N includes the embedding tables"),
    "two token tables": (flops_two_token_tables, "the token table is counted twice"),
    "forward only, no attention": (flops_forward_only_and_no_attention, GENERIC),
    "positions and 2N": (flops_positions_and_forward_weights, GENERIC),
}


def flops_by_counting_linears(config):
    with torch.device("meta"):
        model = GPT(config)
    n = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    L, T, D = config.num_layers, config.context_length, config.d_model
    return 6.0 * n + 12.0 * L * T * D


def flops_per_window(config):
    # the cost of one window of T tokens (attention grows with T²), divided by its T tokens
    L, D, F, V, T = (config.num_layers, config.d_model, config.d_ff, config.vocab_size,
                     config.context_length)
    weights = L * (4 * D * D + 2 * D * F) + D * V
    window = 6 * weights * T + 12 * L * T * T * D
    return window / T


def flops_per_matmul(config):
    D, F, V, T = config.d_model, config.d_ff, config.vocab_size, config.context_length
    forward = {
        "q, k, v": 3 * 2 * D * D,
        "scores": 2 * T * D,
        "weighted sum": 2 * T * D,
        "out_proj": 2 * D * D,
        "ffn": 2 * D * F + 2 * F * D,
    }
    per_layer = sum(forward.values())
    return np.float64(3 * (config.num_layers * per_layer + 2 * D * V))  # backward = 2 x forward


CORRECT_FLOPS = [flops_by_counting_linears, flops_per_window, flops_per_matmul]


# --- exercise 2: one update with gradient accumulation ------------------------------------------


def autocast_for(x, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=dtype)


def step_loss_summed(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    total = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y)
        loss.backward()
        total += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total / len(micro_batches)


def step_zero_grad_in_the_loop(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    losses = []
    for x, y in micro_batches:
        model.zero_grad()
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / len(micro_batches)
        loss.backward()
        losses.append(loss.item())
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return sum(losses)


def step_never_zeroes(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    K = len(micro_batches)
    running = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y)
        (loss / K).backward()
        running += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return running / K


def step_clips_before_the_last_backward(model, optimizer, micro_batches, dtype=None,
                                        max_grad_norm=None):
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for i, (x, y) in enumerate(micro_batches):
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / K
        if i == K - 1 and max_grad_norm is not None:  # the last micro-batch: clip, then step
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        loss.backward()
        total += loss.item()
    optimizer.step()
    return total


def step_clips_before_every_backward(model, optimizer, micro_batches, dtype=None,
                                     max_grad_norm=None):
    optimizer.zero_grad(set_to_none=True)
    K = len(micro_batches)
    losses = []
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y)
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        (loss / K).backward()
        losses.append(loss.item())
    optimizer.step()
    return statistics.mean(losses)


def step_steps_first(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.step()
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / K
        loss.backward()
        total += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    return total


def step_skips_the_first(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for x, y in micro_batches[1:]:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / K
        loss.backward()
        total += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total


def step_range_k_minus_one(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    K = len(micro_batches)
    optimizer.zero_grad()
    losses = []
    for k in range(K - 1):
        x, y = micro_batches[k]
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y)
        (loss / K).backward()
        losses.append(loss.item())
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return sum(losses) / K


def step_first_micro_batch_only(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    K = len(micro_batches)
    x, y = micro_batches[0]
    total = 0.0
    for _ in range(K):
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / K
        loss.backward()
        total += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total


def step_shifts_the_targets(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            logits = model(x)
            loss = lm_loss(logits[:, :-1], y[:, 1:]) / K  # predict the next token
        loss.backward()
        total += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total


def step_inputs_and_targets_swapped(model, optimizer, micro_batches, dtype=None,
                                    max_grad_norm=None):
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for targets, inputs in micro_batches:
        with autocast_for(inputs, dtype):
            loss = lm_loss(model(inputs), targets) / K
        loss.backward()
        total += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total


def step_divides_by_batch_size(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    losses = []
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y)
        (loss / x.size(0)).backward()  # average over the batch
        losses.append(loss.item())
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return sum(losses) / len(losses)


def step_scaler_clips_scaled_gradients(model, optimizer, micro_batches, dtype=None,
                                       max_grad_norm=None):
    scaler = torch.amp.GradScaler("cpu")
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / K
        scaler.scale(loss).backward()
        total += loss.item()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return total


def step_scaler_without_scaler_step(model, optimizer, micro_batches, dtype=None,
                                    max_grad_norm=None):
    scaler = torch.amp.GradScaler("cpu")
    optimizer.zero_grad()
    K = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / K
        scaler.scale(loss).backward()
        total += loss.item()
    if max_grad_norm is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return total


def step_returns_the_last_loss(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / len(micro_batches)
        loss.backward()
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def step_no_division_and_clip_in_loop(model, optimizer, micro_batches, dtype=None,
                                      max_grad_norm=None):
    optimizer.zero_grad()  # two mistakes: the loss is not divided by K, and clipping is in the loop
    total = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        total += loss.item()
    optimizer.step()
    return total / len(micro_batches)


WRONG_TRAIN_STEP = {
    "loss summed": (step_loss_summed, "the loss is not divided by K = 2"),
    "zero_grad in the loop": (step_zero_grad_in_the_loop,
                              "only the last micro-batch's gradient reaches the update"),
    "never zeroes": (step_never_zeroes, "the gradients are never set to zero"),
    "clip before the last backward": (step_clips_before_the_last_backward,
                                      "clipped before the last micro-batch's backward"),
    "clip before every backward": (step_clips_before_every_backward,
                                   "clipped before the last micro-batch's backward"),
    "step first": (step_steps_first, "optimizer.step() runs before the backward passes"),
    "skips the first": (step_skips_the_first, "one micro-batch is left out"),
    "range(K - 1)": (step_range_k_minus_one, "one micro-batch is left out"),
    "the first micro-batch K times": (step_first_micro_batch_only,
                                      "only the first micro-batch's data reaches the update"),
    "targets shifted again": (step_shifts_the_targets, "the targets are shifted once more"),
    "inputs and targets swapped": (step_inputs_and_targets_swapped,
                                   "the inputs and the targets are swapped"),
    "divided by the batch size": (step_divides_by_batch_size,
                                  "divided by the micro-batch's size (B = 4 windows)"),
    "scaler: clipped while scaled": (step_scaler_clips_scaled_gradients,
                                     "clipped while the GradScaler's scale still multiplies it"),
    "scaler: optimizer.step()": (step_scaler_without_scaler_step,
                                 "optimizer.step() sees the gradients still multiplied"),
    "returns the last loss / K": (step_returns_the_last_loss,
                                  "the loss returned is the last micro-batch's, divided by K"),
    "not divided, clipped in the loop": (step_no_division_and_clip_in_loop,
                                         "the loss is not divided by K = 2"),
}


def step_grads_divided_afterwards(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    optimizer.zero_grad()
    K = len(micro_batches)
    losses = []
    for x, y in micro_batches:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = lm_loss(model(x), y)
        loss.backward()
        losses.append(loss.detach())
    for p in model.parameters():
        if p.grad is not None:
            p.grad /= K  # the mean of the K gradients
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return torch.stack(losses).mean().item()


def step_with_a_grad_scaler(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    scaler = torch.amp.GradScaler("cpu")
    K = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        with autocast_for(x, dtype):
            loss = lm_loss(model(x), y) / K
        scaler.scale(loss).backward()
        total += loss.item()
    scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    return total


def step_autograd_backward(model, optimizer, micro_batches, dtype=None, max_grad_norm=None):
    model.zero_grad(set_to_none=True)
    K = len(micro_batches)
    losses = []
    for i in range(K):
        x, y = micro_batches[i]
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            out = model(x)
        loss = lm_loss(out, y)  # outside autocast: lm_loss works in float32 anyway
        torch.autograd.backward(loss / K)
        losses.append(float(loss.detach()))
    if max_grad_norm:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        factor = torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(factor)
    optimizer.step()
    return float(np.mean(losses))


CORRECT_TRAIN_STEP = [step_grads_divided_afterwards, step_with_a_grad_scaler,
                      step_autograd_backward]


# --- exercise 3: the learning-rate schedule ------------------------------------------------------


def lr_floor_warmup(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * (step // warmup_steps)
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_floor_progress(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min((step - warmup_steps) // decay_steps, 1)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_decays_to_zero(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * step / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return max_lr * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_progress_over_the_run(step, max_lr, min_lr, warmup_steps, total_steps):
    if warmup_steps and step <= warmup_steps:
        return step / warmup_steps * max_lr
    fraction = min(step / total_steps, 1.0)  # how far through training
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * fraction)) / 2


def lr_remaining_unclamped(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * step / warmup_steps
    remaining = (total_steps - step) / (total_steps - warmup_steps)  # 1 -> 0
    return min_lr + 0.5 * (max_lr - min_lr) * (1 - math.cos(math.pi * remaining))


def lr_starts_at_max(step, max_lr, min_lr, warmup_steps, total_steps):
    progress = max(0, step - warmup_steps) / (total_steps - warmup_steps)
    progress = min(progress, 1.0)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_decay_counted_from_zero(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * step / warmup_steps
    decay_step = step - warmup_steps - 1  # the decay's own steps, from 0
    decay_steps = total_steps - warmup_steps - 1
    progress = min(1.0, decay_step / decay_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_one_minus_cos(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * step / warmup_steps
    p = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (max_lr - min_lr) * (1 - math.cos(math.pi * p)) / 2


def lr_without_the_half(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * step / warmup_steps
    p = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * p))


def lr_without_pi(step, max_lr, min_lr, warmup_steps, total_steps):
    if step <= warmup_steps:
        return max_lr * step / warmup_steps
    p = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + np.cos(p))


def lr_from_zero_and_to_zero(step, max_lr, min_lr, warmup_steps, total_steps):
    # two mistakes: steps counted from 0 in the warmup, and the cosine ends at 0
    if step <= warmup_steps:
        return max_lr * (step - 1) / warmup_steps
    p = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * max_lr * (1 + math.cos(math.pi * p))


WRONG_LR = {
    "floor division in the warmup": (lr_floor_warmup, "the warmup uses floor division (//)"),
    "floor division in the progress": (lr_floor_progress,
                                       "the decay's progress uses floor division (//)"),
    "max_lr * cosine": (lr_decays_to_zero, "the cosine decays to 0"),
    "progress over the whole run": (lr_progress_over_the_run,
                                    "the decay's progress is measured over total_steps"),
    "negative progress after total_steps": (lr_remaining_unclamped,
                                            "yours follows the cosine back up"),
    "starts at max_lr": (lr_starts_at_max, "there is no warmup"),
    "decay counted from 0": (lr_decay_counted_from_zero, "the decay starts one step late"),
    "1 - cos": (lr_one_minus_cos, "the decay runs backwards"),
    "no 0.5": (lr_without_the_half, "the factor 0.5 is missing"),
    "no pi": (lr_without_pi, "the cosine's argument is missing π"),
    "step - 1 and decays to 0": (lr_from_zero_and_to_zero, GENERIC),
}


def lr_strict_warmup(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:  # at step == warmup_steps both branches give max_lr
        return max_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_with_numpy(step, max_lr, min_lr, warmup_steps, total_steps):
    warm = max_lr * step / max(warmup_steps, 1)
    p = np.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    cosine = min_lr + (max_lr - min_lr) * (np.cos(np.pi * p) + 1) / 2
    return warm if step <= warmup_steps else cosine  # a numpy float64 is a float


def lr_remaining_clamped(step, max_lr, min_lr, warmup_steps, total_steps):
    if warmup_steps > 0 and step <= warmup_steps:
        return step * (max_lr / warmup_steps)
    remaining = max(0.0, (total_steps - step) / (total_steps - warmup_steps))
    return max_lr - (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * remaining))


CORRECT_LR = [lr_strict_warmup, lr_with_numpy, lr_remaining_clamped]


# --- the entries, run by test_checks_catalogue.py ----------------------------------------------

catalogue.wrong("check_flops_per_token", WRONG_FLOPS)
catalogue.accepted("check_flops_per_token", CORRECT_FLOPS, cases=4)
catalogue.wrong("check_train_step", WRONG_TRAIN_STEP)
catalogue.accepted("check_train_step", CORRECT_TRAIN_STEP, cases=6)
catalogue.wrong("check_lr_schedule", WRONG_LR)
catalogue.accepted("check_lr_schedule", CORRECT_LR, cases=4)


def test_the_catalogue_is_large():
    assert len(WRONG_FLOPS) + len(WRONG_TRAIN_STEP) + len(WRONG_LR) >= 30
