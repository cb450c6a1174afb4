"""tools/notebooks.py: notebooks are committed without outputs and with the python3 kernel."""

from conftest import load_tool

notebooks = load_tool("notebooks")

DIRTY = {
    "cells": [
        {"cell_type": "code", "execution_count": 3, "metadata": {}, "source": "1 + 1",
         "outputs": [{"output_type": "execute_result", "data": {"text/plain": "2"},
                      "metadata": {}, "execution_count": 3}]},
        {"cell_type": "markdown", "metadata": {}, "source": "# hi"},
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
