"""Portability: every notebook's asserted outcomes under several CPU kernel selections and seeds.

A trained model's accuracy, a loss reached, a measured speed-up: these depend on which CPU
kernels PyTorch picks (AVX-512, AVX2 or none; MKL's and oneDNN's instruction sets), on the
seed, and on the machine's speed. The notebooks assert each such figure with
``transformer_lib.outcomes.expect``, against a threshold with a margin. This tool runs every
chapter and lab solution under each kernel selection (and seed), collects the figures, and
prints one table: per asserted outcome, its threshold and the value observed in every run.

Kernel selections (environment variables set before the kernel starts):

- ``native``: whatever this machine picks (``make test`` runs the notebooks so);
- ``avx2``: ``ATEN_CPU_CAPABILITY=avx2``, PyTorch's own kernels limited to AVX2;
- ``baseline``: ``ATEN_CPU_CAPABILITY=default`` (no vectorized kernels of PyTorch's own)
  with ``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``, matmuls limited to AVX2 too.

A seed ``k`` other than 0 shifts every seed a notebook sets by ``1000 k`` (``torch.manual_seed``,
``torch.Generator.manual_seed``, ``random.seed``; the data generators' ``random.Random(seed)``
stay as they are, so the data do not change): new initial weights, batches, dropout masks and
samples, so a threshold is seen to hold for more than one draw of them.

Usage::

    python tools/portability.py                       # everything, 3 selections, seeds 0 1 2
    python tools/portability.py --notebooks 04_decoding --seeds 0 1 2 3 --jobs 2
    python tools/portability.py --list                # the notebooks and selections

It exits with status 1 when any run fails (an outcome below its threshold, or any error), and
writes the table to ``--out`` (Markdown), refusing to overwrite an existing file without
``--force``. ``make portability`` runs it with the defaults (about 40 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from transformer_lib.outcomes import OUTCOMES_ENV

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_FOLDERS = ("chapters", "labs/solutions")

SELECTIONS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}

SEED_CELL = '''\
# Added by tools/portability.py (seed {seed}): every seed this notebook sets is shifted by {offset}.
import random as _random

import torch as _torch

_OFFSET = {offset}
_torch_manual_seed, _random_seed = _torch.manual_seed, _random.seed
_torch.manual_seed = lambda seed: _torch_manual_seed(seed + _OFFSET)
_random.seed = lambda a=None, version=2: _random_seed(
    a + _OFFSET if isinstance(a, int) else a, version)


class _ShiftedGenerator(_torch.Generator):
    def manual_seed(self, seed):
        return super().manual_seed(seed + _OFFSET)


_torch.Generator = _ShiftedGenerator
'''


@dataclass
class Run:
    notebook: str  # relative to the repository root
    selection: str
    seed: int
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # "cell N: ErrorName: message"
    outcomes: list[dict] = field(default_factory=list)

    @property
    def column(self) -> str:
        return f"{self.selection}/s{self.seed}"

    @property
    def ok(self) -> bool:
        return not self.errors and all(o["passed"] for o in self.outcomes)


def shown(path: Path) -> str:
    """A notebook's path as the table shows it: relative to the repository when inside it."""
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def find_notebooks(patterns: list[str] | None) -> list[Path]:
    found = [p for folder in NOTEBOOK_FOLDERS for p in sorted((ROOT / folder).glob("*.ipynb"))]
    if not patterns:
        return found
    chosen = [p for p in found if any(s in p.relative_to(ROOT).as_posix() for s in patterns)]
    unmatched = [s for s in patterns if not any(s in p.relative_to(ROOT).as_posix() for p in found)]
    if unmatched:
        raise SystemExit(f"--notebooks: no notebook matches {', '.join(map(repr, unmatched))}")
    return chosen


def execute_one(notebook: Path, seed: int, record: Path, timeout: int) -> list[str]:
    """Run one notebook in this process's environment; return its errors (cell: message)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    shift = 0
    if seed:
        cell = nbformat.v4.new_code_cell(SEED_CELL.format(seed=seed, offset=1000 * seed))
        nb.cells.insert(0, cell)
        shift = 1
    os.environ[OUTCOMES_ENV] = str(record)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(notebook.parent)}})
    client.execute()
    errors = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                message = output.get("evalue", "").strip().splitlines()
                errors.append(f"cell {index - shift}: {output.get('ename')}: "
                              f"{message[0][:200] if message else ''}")
    return errors


def run(notebook: Path, selection: str, seed: int, timeout: int, threads: int) -> Run:
    result = Run(shown(notebook), selection, seed)
    env = {k: v for k, v in os.environ.items()
           if k not in {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"}}
    env.update(SELECTIONS[selection], OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1",
               MPLBACKEND="Agg")
    # torch.compile's cache does not tell kernel selections apart: code compiled for AVX-512
    # and reused under ATEN_CPU_CAPABILITY=avx2 gives NaN, and fails to build under default
    env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tempfile.gettempdir())
                                         / f"portability-inductor-{selection}")
    with tempfile.TemporaryDirectory(prefix="portability-") as tmp:
        record, errors_file = Path(tmp) / "outcomes.jsonl", Path(tmp) / "errors.json"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--execute", str(notebook), "--seed", str(seed),
             "--record", str(record), "--errors", str(errors_file), "--timeout", str(timeout)],
            env=env, capture_output=True, text=True)
        result.seconds = time.perf_counter() - start
        if done.returncode != 0 or not errors_file.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            result.errors.append(f"the run itself failed: {tail[0][:300]}")
        else:
            result.errors = json.loads(errors_file.read_text())
        if record.exists():
            result.outcomes = [json.loads(line) for line in record.read_text().splitlines()
                               if line.strip()]
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def threshold(outcome: dict) -> str:
    low, high = outcome["at_least"], outcome["at_most"]
    if low is not None and high is not None:
        return f"{low:g} .. {high:g}"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


def table(runs: list[Run]) -> str:
    """Markdown: a row per (notebook, outcome), a column per (selection, seed)."""
    lines = []
    for notebook in dict.fromkeys(r.notebook for r in runs):
        mine = {r.column: r for r in runs if r.notebook == notebook}
        columns = list(mine)  # in the runs' order: by selection, then seed
        names: dict[str, str] = {}
        for r in mine.values():
            for o in r.outcomes:
                names.setdefault(o["name"], threshold(o))
        lines += [f"### {notebook}", ""]
        header = ["outcome", "threshold", *columns, "worst margin"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, bound in names.items():
            cells, margins = [], []
            for column in columns:
                found = [o for o in mine[column].outcomes if o["name"] == name]
                if not found:
                    cells.append("missing")
                    continue
                o = found[-1]
                cells.append(f"{o['value']:.4g}" + ("" if o["passed"] else " FAIL"))
                for bound_value, sign in ((o["at_least"], 1), (o["at_most"], -1)):
                    if bound_value is not None:
                        margins.append(sign * (o["value"] - bound_value))
            worst = f"{min(margins):+.3g}" if margins else "-"
            shown_name = name.replace("|", "\\|")  # a pipe would end the table's cell
            lines.append(f"| {shown_name} | {bound} | " + " | ".join(cells) + f" | {worst} |")
        times = " | ".join(f"{mine[c].seconds:.0f} s" for c in columns)
        lines.append(f"| *wall time* | | {times} | |")
        lines.append("")
        for r in mine.values():
            for error in r.errors:
                lines.append(f"- **{r.column}** {error}")
        if any(r.errors for r in mine.values()):
            lines.append("")
    return "\n".join(lines)


def write_whole(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="+", metavar="PART",
                        help="only notebooks whose path contains one of these (default: all)")
    parser.add_argument("--selections", nargs="+", default=list(SELECTIONS),
                        help=f"kernel selections, of {', '.join(SELECTIONS)} (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds (0 is the notebook as written; default: 0 1 2)")
    parser.add_argument("--seed-notebooks", nargs="+", metavar="PART",
                        help="run seeds other than 0 only for these (default: every notebook)")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once (default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of each kernel (default 1, as make test's pytest)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "portability.md",
                        help="where to write the table (default _build/portability.md)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--list", action="store_true", help="list notebooks and selections")
    # internal: run one notebook in this process (the parent sets the environment)
    parser.add_argument("--execute", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--errors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.execute:
        errors = execute_one(args.execute, args.seed, args.record, args.timeout)
        args.errors.write_text(json.dumps(errors))
        return 0

    unknown = [s for s in args.selections if s not in SELECTIONS]
    if unknown:
        parser.error(f"--selections: unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(SELECTIONS)}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if any(s < 0 for s in args.seeds):
        parser.error("--seeds must be non-negative")
    notebooks = find_notebooks(args.notebooks)
    if args.list:
        for nb in notebooks:
            print(nb.relative_to(ROOT).as_posix())
        for name, env in SELECTIONS.items():
            print(f"{name}: {' '.join(f'{k}={v}' for k, v in env.items()) or '(no change)'}")
        return 0
    if args.out.exists() and not args.force:
        parser.error(f"--out: {args.out} exists; pass --force to overwrite it")
    seeded = find_notebooks(args.seed_notebooks) if args.seed_notebooks else notebooks

    jobs = [(nb, sel, seed) for nb in notebooks for sel in args.selections for seed in args.seeds
            if seed == 0 or nb in seeded]
    # longest-first would need timings we do not have; interleave notebooks so that two heavy
    # runs of the same notebook rarely share the machine
    jobs.sort(key=lambda j: (j[2], args.selections.index(j[1])))
    print(f"{len(jobs)} runs, {args.jobs} at a time, {args.threads} thread(s) each", flush=True)

    def one(job):
        nb, sel, seed = job
        r = run(nb, sel, seed, args.timeout, args.threads)
        status = "ok" if r.ok else "FAILED"
        print(f"  {r.notebook} [{r.column}] {status} in {r.seconds:.0f} s", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, jobs))
    runs.sort(key=lambda r: (r.notebook, args.selections.index(r.selection), r.seed))

    import torch

    header = (f"# Asserted outcomes under {len(args.selections)} kernel selections\n\n"
              f"{cpu_name()}, "
              f"{torch.backends.cpu.get_cpu_capability()} natively, torch {torch.__version__}, "
              f"{os.cpu_count()} cores, {args.jobs} run(s) at a time with "
              f"{args.threads} thread(s) each, {time.strftime('%Y-%m-%d')}.\n"
              + "".join(f"- `{name}`: {' '.join(f'{k}={v}' for k, v in env.items()) or 'as is'}\n"
                        for name, env in SELECTIONS.items() if name in args.selections)
              + "\nColumns: selection/seed. Worst margin: the smallest distance between a value "
                "and its bound, over all runs (negative: a failure).\n\n")
    text = header + table(runs)
    write_whole(args.out, text + "\n")
    print(text)
    failed = [r for r in runs if not r.ok]
    print(f"\n{len(runs) - len(failed)} of {len(runs)} runs passed; table in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
