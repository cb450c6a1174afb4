"""transformer_lib.parallel: each parallel form on two gloo CPU processes against one process,
and the pure functions (cost model, bubble fraction, ZeRO bytes, compute-optimal)."""

import math

import pytest
import torch

from transformer_lib import GPT, FeedForward, GPTConfig, MultiHeadAttention, lm_loss
from transformer_lib import parallel as par

TOL = 1e-5
CONFIG = GPTConfig(vocab_size=24, context_length=12, d_model=32, num_heads=4, num_layers=2)
PIPE_CONFIG = GPTConfig(vocab_size=24, context_length=12, d_model=32, num_heads=4, num_layers=2,
                        tie_output=False)


def _data(seed, shape=(8, 13)):
    d = torch.randint(24, shape, generator=torch.Generator().manual_seed(seed))
    return d[..., :-1], d[..., 1:]


X, Y = _data(0)
BATCHES = [_data(s) for s in (1, 2, 3)]
torch.manual_seed(0)
FFN = FeedForward(32, 64, activation="gelu")
FFN_RELU = FeedForward(32, 64, activation="relu", bias=False)
MHA = MultiHeadAttention(32, 4)
MHA_GQA_ROPE = MultiHeadAttention(32, 4, num_kv_heads=2, rope_base=10000.0, bias=False)
H = torch.randn(2, 5, 32)
GRAD_OUT = torch.randn(2, 5, 32)
MODULES = {"ffn": FFN, "ffn_relu": FFN_RELU, "mha": MHA, "mha_gqa_rope": MHA_GQA_ROPE}


@pytest.fixture(scope="module")
def ranks():
    """Every job in one launch of two processes (starting processes costs seconds)."""
    jobs = [(par.collectives_demo, ()), (par.data_parallel_demo, (CONFIG, X, Y)),
            (par.fsdp_demo, (CONFIG, BATCHES)), (par.pipeline_demo, (PIPE_CONFIG, X, Y, 4))]
    jobs += [(par.tensor_parallel_demo, (m, H, GRAD_OUT)) for m in MODULES.values()]
    results = par.launch(par.run_jobs, jobs)
    names = ["collectives", "ddp", "fsdp", "pipeline", *MODULES]
    return {name: [r[i] for r in results] for i, name in enumerate(names)}


# --- two processes against one ----------------------------------------------------------------


def test_collectives(ranks):
    r0, r1 = ranks["collectives"]
    total = r0["x"] + r1["x"]
    for r in (r0, r1):
        assert torch.equal(r["all_reduce"], total)
        assert torch.equal(r["all_gather"], torch.cat([r0["x"], r1["x"]]))
        assert torch.equal(r["broadcast"], r0["x"])
    assert torch.equal(torch.cat([r0["reduce_scatter"], r1["reduce_scatter"]]), total)


def test_data_parallel_by_hand_and_ddp_equal_one_process(ranks):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    lm_loss(model(X), Y).backward()
    for r in ranks["ddp"]:
        for way in ("by_hand", "ddp"):
            assert len(r[way]) == len(list(model.parameters()))
            for got, p in zip(r[way], model.parameters()):
                torch.testing.assert_close(got, p.grad, rtol=0, atol=TOL)


def test_fsdp_losses_equal_one_process_and_shards_the_parameters(ranks):
    torch.manual_seed(0)
    model = GPT(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for x, y in BATCHES:
        loss = lm_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    full = sum(p.numel() * 4 for p in model.parameters())
    for r in ranks["fsdp"]:
        assert r["losses"] == pytest.approx(losses, abs=TOL)
        assert r["full_bytes"] == full
        assert r["param_bytes"] <= full // 2 + 4 * 64  # half, to a row per parameter
    assert sum(r["param_bytes"] for r in ranks["fsdp"]) == full


def test_pipeline_loss_and_gradients_equal_one_process(ranks):
    torch.manual_seed(0)
    model = GPT(PIPE_CONFIG)
    loss = lm_loss(model(X), Y)
    loss.backward()
    first, last = ranks["pipeline"]
    assert first["losses"] == [] and len(last["losses"]) == 4
    assert sum(last["losses"]) / 4 == pytest.approx(loss.item(), abs=TOL)
    stages = par.split_gpt(model, 2)
    for r, stage in zip(ranks["pipeline"], stages):
        assert set(r["grads"]) == {n for n, _ in stage.named_parameters()}
        for n, p in stage.named_parameters():
            torch.testing.assert_close(r["grads"][n], p.grad, rtol=0, atol=TOL)


def _full_grads(name):
    module = MODULES[name]
    module.zero_grad()
    x = H.clone().requires_grad_()
    out = module(x) if isinstance(module, FeedForward) else module(x, x, x, is_causal=True)
    out.backward(GRAD_OUT)
    return out, x.grad, {n: p.grad for n, p in module.named_parameters()}


def _every_rank_equals_one_process(rs, name):
    """Each rank's output and input gradient equal one process's; that one's parameter grads."""
    out, x_grad, full = _full_grads(name)
    for r in rs:
        torch.testing.assert_close(r["out"], out, rtol=0, atol=TOL)
        torch.testing.assert_close(r["x_grad"], x_grad, rtol=0, atol=TOL)
    return full


@pytest.mark.parametrize("name", ["ffn", "ffn_relu"])
def test_shard_feed_forward_outputs_and_gradients(ranks, name):
    rs, full = ranks[name], _every_rank_equals_one_process(ranks[name], name)
    torch.testing.assert_close(torch.cat([r["grads"]["linear1.weight"] for r in rs]),
                               full["linear1.weight"], rtol=0, atol=TOL)
    torch.testing.assert_close(torch.cat([r["grads"]["linear2.weight"] for r in rs], 1),
                               full["linear2.weight"], rtol=0, atol=TOL)
    if "linear1.bias" in full:
        torch.testing.assert_close(torch.cat([r["grads"]["linear1.bias"] for r in rs]),
                                   full["linear1.bias"], rtol=0, atol=TOL)
        for r in rs:
            torch.testing.assert_close(r["grads"]["bias"], full["linear2.bias"], rtol=0, atol=TOL)
    else:
        assert "bias" not in rs[0]["grads"]


@pytest.mark.parametrize("name", ["mha", "mha_gqa_rope"])
def test_shard_attention_outputs_and_gradients(ranks, name):
    rs, full = ranks[name], _every_rank_equals_one_process(ranks[name], name)
    for n in full:
        if n.startswith("out_proj.weight"):
            got = torch.cat([r["grads"][n] for r in rs], 1)
        elif n == "out_proj.bias":
            got = rs[0]["grads"]["out_bias"]
            torch.testing.assert_close(rs[1]["grads"]["out_bias"], got, rtol=0, atol=0)
        else:  # q, k, v: rows of each rank's heads
            got = torch.cat([r["grads"][n] for r in rs])
        torch.testing.assert_close(got, full[n], rtol=0, atol=TOL)


# --- pure functions -------------------------------------------------------------------------------


def test_ring_all_reduce_cost_model():
    assert par.ring_all_reduce_bytes(1000, 1) == 0
    assert par.ring_all_reduce_bytes(1000, 2) == 1000
    assert par.ring_all_reduce_bytes(1000, 8) == 1750
    assert par.all_reduce_seconds(1e9, 4, 1e9) == pytest.approx(1.5)
    assert par.all_reduce_seconds(0, 4, 1e9, latency=1e-5) == pytest.approx(6e-5)
    with pytest.raises(ValueError, match="world_size"):
        par.ring_all_reduce_bytes(10, 0)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 2, 5, 16])
@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
def test_bubble_fraction_equals_the_simulation(p, m, kind):
    ops = par.pipeline_schedule(p, m, kind)
    assert len(ops) == 2 * p * m
    assert sorted((s, w, i) for s, w, i, _, _ in ops) == sorted(
        (s, w, i) for s in range(p) for w in "BF" for i in range(m))
    busy = sum(end - start for *_, start, end in ops)
    makespan = max(end for *_, end in ops)
    assert 1 - busy / (p * makespan) == pytest.approx(par.bubble_fraction(p, m))
    assert makespan == pytest.approx((m + p - 1) * 3)
    for s in range(p):  # no stage runs two operations at once
        mine = sorted((start, end) for st, _, _, start, end in ops if st == s)
        assert all(a[1] <= b[0] + 1e-12 for a, b in zip(mine, mine[1:]))


def test_1f1b_holds_fewer_activations_than_gpipe():
    def most_in_flight(ops):
        held = most = 0
        for _, what, *_ in sorted((o for o in ops if o[0] == 0), key=lambda o: o[3]):
            held += 1 if what == "F" else -1
            most = max(most, held)
        return most
    assert most_in_flight(par.pipeline_schedule(4, 16, "gpipe")) == 16
    assert most_in_flight(par.pipeline_schedule(4, 16, "1f1b")) == 4


def test_zero_bytes_per_parameter():
    # the ZeRO paper's Figure 1: 7.5B parameters, 64 GPUs
    got = [7.5e9 * par.zero_bytes_per_parameter(s, 64) / 1e9 for s in range(4)]
    assert got == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.05)
    assert par.zero_bytes_per_parameter(3, 1) == 16
    with pytest.raises(ValueError, match="stage"):
        par.zero_bytes_per_parameter(4, 8)


def test_training_flops_and_compute_optimal():
    assert par.training_flops(1e9, 2e10) == 1.2e20
    n, d = par.compute_optimal(par.training_flops(70e9, 1.4e12))  # Chinchilla itself
    assert n == pytest.approx(70e9) and d == pytest.approx(1.4e12)
    n, d = par.compute_optimal(6e18, tokens_per_param=10)
    assert math.isclose(6 * n * d, 6e18) and math.isclose(d, 10 * n)
    with pytest.raises(ValueError, match="flops"):
        par.compute_optimal(0)


# --- argument checks ------------------------------------------------------------------------------


def test_shard_argument_errors():
    with pytest.raises(ValueError, match="d_ff=64 must be divisible by world_size=3"):
        par.shard_feed_forward(FFN, 0, 3)
    with pytest.raises(ValueError, match="rank"):
        par.shard_feed_forward(FFN, 2, 2)
    with pytest.raises(TypeError, match="FeedForward"):
        par.shard_feed_forward(MHA, 0, 2)
    with pytest.raises(ValueError, match="num_kv_heads"):
        par.shard_attention(MHA_GQA_ROPE, 0, 4)
    with pytest.raises(ValueError, match="tie_output"):
        par.split_gpt(GPT(CONFIG), 2)
    with pytest.raises(ValueError, match="divisible"):
        par.split_gpt(GPT(PIPE_CONFIG), 3)
    with pytest.raises(ValueError, match="kind"):
        par.pipeline_schedule(2, 2, "zero-bubble")


def test_launch_refuses_functions_it_cannot_send():
    with pytest.raises(ValueError, match="importable module"):
        par.launch(lambda rank, world_size: rank)
