"""transformer_lib.outcomes.expect: a measured figure asserted against a threshold, and recorded."""

import json
import math

import pytest
import torch

from transformer_lib.outcomes import OUTCOMES_ENV, expect


def test_within_bounds_prints_the_figure_and_its_bound(capsys, monkeypatch):
    monkeypatch.delenv(OUTCOMES_ENV, raising=False)
    assert expect("exact match", 0.985, at_least=0.95) is None  # no Out[...] in a notebook
    expect("loss", torch.tensor(1.25), at_most=2)  # a one-element tensor
    expect("ratio", 3, at_least=1, at_most=3)  # both bounds are inclusive
    out = capsys.readouterr().out.splitlines()
    assert out == ["exact match: 0.985 (asserted >= 0.95)", "loss: 1.25 (asserted <= 2)",
                   "ratio: 3 (asserted >= 1 and <= 3)"]


@pytest.mark.parametrize(("value", "bounds", "message"), [
    (0.94, {"at_least": 0.95}, "exact match = 0.94, expected >= 0.95"),
    (2.5, {"at_most": 2.0}, "exact match = 2.5, expected <= 2"),
    (0.5, {"at_least": 0.6, "at_most": 1.0}, "exact match = 0.5, expected >= 0.6 and <= 1"),
    (math.nan, {"at_least": 0.0}, "exact match = nan, expected >= 0"),
    (math.inf, {"at_least": 0.0}, "exact match = inf, expected >= 0"),
])
def test_outside_bounds_names_the_figure_value_and_bound(value, bounds, message):
    with pytest.raises(AssertionError) as err:
        expect("exact match", value, **bounds)
    assert str(err.value) == message


def test_records_every_call_when_asked_even_a_failing_one(tmp_path, monkeypatch):
    path = tmp_path / "outcomes.jsonl"
    monkeypatch.setenv(OUTCOMES_ENV, str(path))
    expect("a", 1.0, at_least=0.5)
    with pytest.raises(AssertionError):
        expect("b", 0.1, at_least=0.5, at_most=0.9)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"name": "a", "value": 1.0, "at_least": 0.5, "at_most": None, "passed": True},
        {"name": "b", "value": 0.1, "at_least": 0.5, "at_most": 0.9, "passed": False},
    ]


def test_records_nothing_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(OUTCOMES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    expect("a", 1.0, at_least=0.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "", "value": 1.0, "at_least": 0}, "name must be a non-empty string"),
    ({"name": "x", "value": 1.0}, "give at_least, at_most or both"),
    ({"name": "x", "value": "0.9", "at_least": 0}, "value must be a number, got str"),
    ({"name": "x", "value": True, "at_least": 0}, "value must be a number, got bool"),
    ({"name": "x", "value": torch.ones(2), "at_least": 0},
     "value must be one number, got a Tensor with 2"),
    ({"name": "x", "value": 1.0, "at_least": math.nan}, "at_least must be a number"),
    ({"name": "x", "value": 1.0, "at_most": "1"}, "at_most must be a number"),
    ({"name": "x", "value": 1.0, "at_least": 2, "at_most": 1}, "at_least (2) must not exceed"),
])
def test_bad_arguments_are_value_errors_that_name_them(kwargs, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        expect(**kwargs)
