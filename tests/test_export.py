"""tools/export.py: markers, generated headers, --check, stale modules; and the repo is in sync."""

import json
from pathlib import Path

import pytest

from conftest import load_tool

ROOT = Path(__file__).resolve().parent.parent
export = load_tool("export")


def write_notebook(path: Path, cells: list[tuple[str, str]]) -> None:
    nb = {
        "cells": [
            {"cell_type": kind, "metadata": {}, "source": text,
             **({"outputs": [], "execution_count": None} if kind == "code" else {})}
            for kind, text in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))


@pytest.fixture
def project(tmp_path):
    (tmp_path / "transformer_lib").mkdir()
    write_notebook(tmp_path / "chapters" / "01_demo.ipynb", [
        ("markdown", "# Demo\n#| export  (markdown cells are never exported)"),
        ("code", "#| default_exp demo\nimport math"),
        ("code",
         "#| export\nfrom __future__ import annotations\n\nimport math\n\n\ndef area(r: float) -> "
         "float:\n    return math.pi * r * r"),
        ("code", "def scratch():\n    return 'not exported'"),
        ("code", "#| export\nUNIT = 'm2'\n_private = 1\n\n\nclass Circle:\n    pass"),
        ("code", "#| export helpers\ndef helper():\n    return 2"),
        ("code", "x = 1  # #| export in a comment later in the cell does not count"),
    ])
    return tmp_path


def test_only_marked_cells_are_exported_to_the_named_modules(project):
    out = export.build(project, handwritten=())
    demo = out[project / "transformer_lib" / "demo.py"]
    helpers = out[project / "transformer_lib" / "helpers.py"]
    assert "def area" in demo and "class Circle" in demo and "UNIT = 'm2'" in demo
    assert "scratch" not in demo and "x = 1" not in demo and "helper" not in demo
    assert "def helper" in helpers
    assert "#|" not in demo.split("\n", 2)[2]  # directive lines are dropped
    assert "__all__ = ['area', 'UNIT', 'Circle']" in demo  # public names only
    compile(demo, "demo.py", "exec")  # __future__ import hoisted to the top: valid Python


def test_header_names_the_notebook_and_says_do_not_edit(project):
    out = export.build(project, handwritten=())
    first = out[project / "transformer_lib" / "demo.py"].splitlines()[0]
    assert first.startswith(export.GENERATED_MARK)
    assert "chapters/01_demo.ipynb" in first and "DO NOT EDIT" in first


def test_init_reexports_public_names(project):
    export.write(project, handwritten=())
    init = (project / "transformer_lib" / "__init__.py").read_text()
    assert "from transformer_lib.demo import UNIT, Circle, area" in init  # isort's order
    assert "from transformer_lib.helpers import helper" in init


def test_check_passes_after_write_and_catches_a_hand_edit(project):
    assert export.check(project, handwritten=())  # nothing written yet: missing modules
    export.write(project, handwritten=())
    assert export.check(project, handwritten=()) == []
    module = project / "transformer_lib" / "demo.py"
    module.write_text(module.read_text().replace("math.pi * r * r", "3.14 * r * r"))
    problems = export.check(project, handwritten=())
    assert len(problems) == 1
    assert "demo.py differs" in problems[0]
    assert ("-    return 3.14 * r * r" in problems[0]
            and "+    return math.pi * r * r" in problems[0])
    export.write(project, handwritten=())
    assert export.check(project, handwritten=()) == []


def test_removed_export_leaves_no_stale_code(project):
    export.write(project, handwritten=())
    (project / "transformer_lib" / "handmade.py").write_text("# written by hand\n")
    nb_path = project / "chapters" / "01_demo.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"] = [c for c in nb["cells"] if "export helpers" not in c["source"]]
    nb_path.write_text(json.dumps(nb))
    problems = export.check(project, handwritten=())
    assert any("helpers.py is generated but no notebook exports it" in p for p in problems)
    assert any("__init__.py differs" in p for p in problems)
    changed = export.write(project, handwritten=())
    assert "removed stale transformer_lib/helpers.py" in changed
    assert not (project / "transformer_lib" / "helpers.py").exists()
    assert (project / "transformer_lib" / "handmade.py").exists()  # hand-written files are kept
    assert "helpers" not in (project / "transformer_lib" / "__init__.py").read_text()
    assert export.check(project, handwritten=()) == []


def test_export_without_default_exp_is_an_error(tmp_path):
    (tmp_path / "transformer_lib").mkdir()
    write_notebook(tmp_path / "chapters" / "02_bad.ipynb", [("code", "#| export\nx = 1")])
    with pytest.raises(export.ExportError, match="default_exp"):
        export.build(tmp_path, handwritten=())


def test_two_notebooks_cannot_write_one_module(project):
    write_notebook(project / "chapters" / "02_other.ipynb",
                   [("code", "#| default_exp demo"), ("code", "#| export\ny = 2")])
    with pytest.raises(export.ExportError, match="exported by both"):
        export.build(project, handwritten=())


def test_handwritten_modules_are_reexported(project):
    (project / "transformer_lib"
     / "extra.py").write_text("__all__ = ['tool']\n\ndef tool():\n    pass\n")
    init = export.build(project, handwritten=("extra",))[project / "transformer_lib"
                                                         / "__init__.py"]
    assert "from transformer_lib.extra import tool" in init


def test_repository_package_is_in_sync_with_chapters():
    problems = export.check()
    assert problems == [], "\n".join(problems)


def test_init_imports_are_sorted_and_wrapped_as_the_linter_wants():
    init = export.render_init({"zeta": ["z"], "alpha": ["beta_function", "Gamma", "DELTA"]
                               + [f"name_{i:02d}_long_enough" for i in range(5)]})
    assert init.index("from transformer_lib.alpha") < init.index("from transformer_lib.zeta")
    assert ("from transformer_lib.alpha import (\n    DELTA,\n    Gamma,\n    beta_function,\n"
            in init)
    assert all(len(line) <= 100 for line in init.splitlines())


def test_long_all_is_wrapped_to_the_line_length():
    assert export.render_all(["a", "B"]) == "__all__ = ['a', 'B']"
    names = [f"name_number_{i:02d}" for i in range(20)]
    text = export.render_all(names)
    lines = text.splitlines()
    assert lines[0] == "__all__ = [" and lines[-1] == "]"
    assert all(line.startswith("    '") and line.endswith("',") for line in lines[1:-1])
    assert all(len(line) <= export.LINE_LENGTH for line in lines)
    assert len(lines[1]) > export.LINE_LENGTH - len(" 'name_number_00',")  # lines are filled
    namespace = {}
    exec(text, namespace)
    assert namespace["__all__"] == names
    assert export.render_all(["x" * 120]) == f"__all__ = [\n    '{'x' * 120}',\n]"


def test_generated_headers_keep_to_the_line_length(project):
    nb_path = project / "chapters" / "01_demo.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                        "source": "#| export\n" + "\n".join(f"def function_{i}():\n    pass\n"
                                                            for i in range(30))})
    nb_path.write_text(json.dumps(nb))
    for path, text in export.build(project, handwritten=()).items():
        long = [line for line in text.splitlines() if len(line) > export.LINE_LENGTH]
        assert long == [], f"{path.name}: {long}"


def test_line_length_is_the_projects():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert export.LINE_LENGTH == config["tool"]["ruff"]["line-length"]


def test_version_is_defined_once_in_pyproject():
    import importlib.metadata

    import transformer_lib

    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = config["project"]["version"]
    assert transformer_lib.__version__ == importlib.metadata.version("transformer_lib") == version
    assert version not in (ROOT / "transformer_lib" / "__init__.py").read_text(encoding="utf-8")
    assert version not in (ROOT / "tools" / "export.py").read_text(encoding="utf-8")


def test_main_exit_codes(capsys):
    assert export.main(["--check"]) == 0
    assert "transformer_lib is in sync with the chapters" in capsys.readouterr().out
