"""Shared test helpers.

Reference libraries (torch) are optional for developers but required in CI: `.ci/run` sets
CNNC_REQUIRE_REFERENCES=1, and then a missing reference fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Convolutions take the exact path unless a test asks for another: under the default `auto`
# the algorithm of each layer is chosen by timing, which makes results depend on the machine's
# load. tests/test_runtime_winograd.py tests Winograd and the tuner explicitly.
os.environ.setdefault("CNNC_ALGORITHM", "direct")

# Kernel checks under the CUDA simulator run in their own process (tests/test_cuda.py): the
# simulator must be switched on before Numba is first imported.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cuda_sim"]
SPECS = ROOT / "specs"


def require(module_name: str, importer=None):
    """Import a reference library; skip locally if absent, fail when CI requires it."""
    import importlib

    try:
        return (importer or importlib.import_module)(module_name)
    except ImportError as exc:
        if os.environ.get("CNNC_REQUIRE_REFERENCES"):
            pytest.fail(
                f"reference '{module_name}' is required in CI but cannot be imported: {exc}"
            )
        pytest.skip(f"{module_name} not installed")


@pytest.fixture(scope="session")
def torch():
    t = require("torch")
    t.set_num_threads(2)
    return t


def spec_path(name: str) -> Path:
    return SPECS / name


def run_counts(stdout: str) -> dict[str, int]:
    """The counts of a pytest run's summary line ("28 passed, 1 skipped in 3.2s"), by word:
    a test of a test run compares the whole dict, not a substring ("28 passed" is also in
    "128 passed")."""
    import re

    lines = [line.strip("= ") for line in stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    found = re.findall(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?)", summary)
    if not found or not re.search(r" in [\d.]+s", summary):
        raise AssertionError(f"no pytest summary line at the end of:\n{stdout[-2000:]}")
    return {word.rstrip("s") if word == "errors" else word: int(n) for n, word in found}


@pytest.fixture(scope="session")
def torchvision(torch):
    import zoo

    return require("torchvision", lambda name: zoo.import_torchvision())
