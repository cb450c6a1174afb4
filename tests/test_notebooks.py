"""tools/notebooks.py: notebooks are committed without outputs and with the python3 kernel."""

from conftest import load_tool

notebooks = load_tool("notebooks")

DIRTY = {
    "cells": [
        {"cell_type": "code", "execution_count": 3, "id": "a", "metadata": {}, "source": "1 + 1",
         "outputs": [{"output_type": "execute_result", "data": {"text/plain": "2"},
                      "metadata": {}, "execution_count": 3}]},
        {"cell_type": "markdown", "id": "b", "metadata": {}, "source": "# hi"},
    ],
    "metadata": {"kernelspec": {"name": "myenv", "display_name": "My env", "language": "python"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def test_dirty_notebook_is_reported():
    found = notebooks.problems(DIRTY)
    assert "cell 0 has outputs" in found
    assert "cell 0 has an execution count" in found
    assert "kernelspec is 'myenv', expected 'python3'" in found


def test_clean_removes_outputs_and_fixes_kernelspec():
    import copy

    cleaned = notebooks.clean(copy.deepcopy(DIRTY))
    assert notebooks.problems(cleaned) == []
    assert cleaned["cells"][0]["source"] == "1 + 1"


def test_repository_notebooks_are_clean():
    paths = notebooks.notebooks()
    assert any(p.parent.name == "chapters" for p in paths)
    for path in paths:
        import json

        assert notebooks.problems(json.loads(path.read_text())) == [], path


# Issue 24: JupyterLab showed the unsaved-changes dot on every notebook right after opening it.
# When the kernel starts, JupyterLab writes the kernel's kernelspec and language_info into the
# notebook's metadata, and any difference from the file marks it modified; saving goes through
# jupyter_server, which writes with nbformat. The committed form is what comes out of both.

def _as_jupyterlab_saves(text: str) -> str:
    """What jupyter_server's contents manager writes for a notebook read from ``text``."""
    import io

    import nbformat

    nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    out = io.StringIO()
    nbformat.write(nb, out, version=nbformat.NO_CONVERT)
    return out.getvalue()


def test_committed_form_is_a_fixed_point_of_jupyterlabs_save():
    for path in notebooks.notebooks():
        text = path.read_text(encoding="utf-8")
        assert _as_jupyterlab_saves(text) == text, (
            f"{path}: saving it in JupyterLab would change it; run `python tools/notebooks.py`")


def test_metadata_is_what_the_kernel_writes_back():
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelspec import get_kernel_dict

    spec = get_kernel_dict()
    assert notebooks.KERNELSPEC == {"display_name": spec["display_name"],
                                    "language": spec["language"], "name": "python3"}
    # the Python version is the reference one (.venv, CI); another Python's kernel differs there
    info = dict(IPythonKernel.language_info)
    assert {k: v for k, v in notebooks.LANGUAGE_INFO.items() if k != "version"} == {
        k: v for k, v in info.items() if k != "version"}
    assert notebooks.PYTHON_VERSION.count(".") == 2


def test_dump_is_what_nbformat_writes():
    import copy
    import json

    nb = notebooks.clean(copy.deepcopy(DIRTY))
    nb["cells"][1]["source"] = ["# hi\nthere\n", "", "last"]
    text = notebooks.dump(copy.deepcopy(nb))
    assert _as_jupyterlab_saves(text) == text
    assert json.loads(text)["cells"][1]["source"] == ["# hi\n", "there\n", "last"]
    assert notebooks.problems(json.loads(text)) == []
