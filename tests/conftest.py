import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run and machine (a failure reproduces), keep no
# example database in the checkout, and have no per-example deadline (CI machines are slow).
settings.register_profile("book", derandomize=True, database=None, deadline=None)
settings.load_profile("book")

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load_tool(name: str) -> ModuleType:
    """The script ``tools/NAME.py`` as a module, for its tests (``from conftest import load_tool``).

    tools/ is a folder of scripts, not a package: each runs as ``python tools/NAME.py``, with its
    own folder first on ``sys.path``, and imports its neighbours by their bare names (``import
    generated``). Tests get the same: tools/ first on ``sys.path``, each tool imported once under
    its own name, so that a tool and the tests that load it share one copy of every module.
    """
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
