"""tools/portability.py: notebooks run under kernel selections and seeds, outcomes tabled."""

from pathlib import Path

import nbformat
import pytest

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
portability = load_tool("portability")

PROBE = """\
import torch
from transformer_lib.outcomes import expect

torch.manual_seed(0)
draw = torch.rand(1).item()
from_generator = torch.rand(1, generator=torch.Generator().manual_seed(0)).item()
expect("a draw", draw, at_least=0.0)
expect("a draw from a generator", from_generator, at_least=0.0)
expect("vectorized kernels", float(torch.backends.cpu.get_cpu_capability() != "DEFAULT"),
       at_least=1.0)
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PROBE), nbformat.v4.new_code_cell("1 / 0")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def runs(probe):
    return {(sel, seed): portability.run(probe, sel, seed, timeout=60, threads=1)
            for sel, seed in [("native", 0), ("native", 1), ("baseline", 0)]}


def values(run):
    return {o["name"]: o["value"] for o in run.outcomes}


def test_every_outcome_is_recorded_and_errors_are_reported_by_cell(runs):
    run = runs["native", 0]
    assert set(values(run)) == {"a draw", "a draw from a generator", "vectorized kernels"}
    # not shifted by a seed cell
    assert run.errors == ["cell 1: ZeroDivisionError: division by zero"]
    assert not run.ok
    assert runs["native", 1].errors == ["cell 1: ZeroDivisionError: division by zero"]


def test_a_seed_shifts_torch_seeds_and_generators(runs):
    zero, one = values(runs["native", 0]), values(runs["native", 1])
    assert zero["a draw"] != one["a draw"]
    assert zero["a draw from a generator"] != one["a draw from a generator"]


def test_a_selection_reaches_the_kernel(runs):
    # the baseline selection turns off PyTorch's vectorized kernels: the probe's bound fails there
    baseline = {o["name"]: o for o in runs["baseline", 0].outcomes}
    assert baseline["vectorized kernels"]["value"] == 0.0
    assert not baseline["vectorized kernels"]["passed"]
    assert values(runs["baseline", 0])["a draw"] == values(runs["native", 0])["a draw"]


def test_table_shows_values_failures_margins_and_errors(runs):
    text = portability.table(list(runs.values()))
    row = next(line for line in text.splitlines() if line.startswith("| vectorized kernels |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == ">= 1"
    assert cells[2:5] == ["1", "1", "0 FAIL"]  # native/s0, native/s1, baseline/s0
    assert cells[5] == "-1"  # the worst margin: one below the bound
    assert "- **baseline/s0** cell 1: ZeroDivisionError: division by zero" in text


def test_refuses_to_overwrite_results_and_unknown_selections(tmp_path, capsys):
    out = tmp_path / "table.md"
    out.write_text("earlier results")
    with pytest.raises(SystemExit):
        portability.main(["--notebooks", "01_attention", "--out", str(out)])
    assert "pass --force" in capsys.readouterr().err
    assert out.read_text() == "earlier results"
    with pytest.raises(SystemExit):
        portability.main(["--selections", "avx512", "--out", str(tmp_path / "new.md")])
    assert "--selections: unknown avx512" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no notebook matches 'no-such-chapter'"):
        portability.main(["--notebooks", "no-such-chapter", "--out", str(tmp_path / "x.md")])


def test_lists_every_chapter_and_lab_solution(capsys):
    assert portability.main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for path in [*sorted(ROOT.glob("chapters/*.ipynb")),
                 *sorted(ROOT.glob("labs/solutions/*.ipynb"))]:
        assert path.relative_to(ROOT).as_posix() in listed
    assert ("baseline: ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2 "
            "MKL_ENABLE_INSTRUCTIONS=AVX2" in listed)
