"""Collection rules for the whole checkout (tests/ and the doctests of codevalue/), to keep `make test-fast` fast.

- A module of codevalue/ without `>>>` holds no doctest: it is not imported to look for one (codevalue.train
  alone imports the transformers Trainer, seconds).
- When slow tests are deselected (`-m "not slow"`, `make test-fast`), a test module whose source marks it slow
  as a whole (`pytestmark = pytest.mark.slow`) is not imported either: it would only deselect everything.
- Under mutmut (`make mutation`, which sets MUTANT_UNDER_TEST): fast tests first (mutmut stops at the first
  failure: the same verdict, sooner), and each test its own tqdm lock (tqdm's default one is a semaphore shared
  by every process mutmut forks; a mutant killed while holding it hung every later mutant of `run_stage`).
"""

import os
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).parent
WHOLE_MODULE_SLOW = "pytestmark = pytest.mark.slow"


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.suffix != ".py" or collection_path.name == "conftest.py":
        return None
    if collection_path.parent == ROOT / "codevalue":
        return ">>>" not in collection_path.read_text(encoding="utf-8") or None
    if collection_path.parent == ROOT / "tests" and config.getoption("markexpr", "") == "not slow":
        lines = collection_path.read_text(encoding="utf-8").splitlines()
        return any(line.startswith(WHOLE_MODULE_SLOW) for line in lines) or None  # a statement, not a mention
    return None


if "MUTANT_UNDER_TEST" in os.environ:

    def pytest_collection_modifyitems(items):
        items.sort(key=lambda item: item.get_closest_marker("slow") is not None)

    @pytest.fixture(autouse=True)
    def _own_tqdm_lock():
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())
