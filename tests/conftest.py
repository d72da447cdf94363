"""Shared test helpers.

Reference libraries (torch) are optional for developers but required in CI: `.ci/run` sets
CNNC_REQUIRE_REFERENCES=1, and then a missing reference fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The suite runs what users run: the default algorithm policy (`auto`), whatever the
# developer's shell says. Tests that need one algorithm ask for it (`algorithm=`, --algorithm).
for _name in ("CNNC_ALGORITHM", "CNNC_TUNE"):
    os.environ.pop(_name, None)

#: The developer's compiled kernels, shared by every test's cache folder (see own_cache).
KERNELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnc" / "numba"


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Each test gets a cache folder of its own ($XDG_CACHE_HOME): an empty tuning cache, so
    that `auto` takes the same untimed defaults in every test and on every machine, and
    never the developer's own measured choices, nor ones a test before measured (`bench`
    tunes). Only compiled kernels are shared, through a link to the developer's kernel cache:
    those are keyed by a digest of the kernels' sources, so sharing them changes no result,
    and compiling them afresh would take minutes per test (processes started by a test
    inherit the folder). Where the link cannot be made, kernels compile into the folder."""
    folder = tmp_path_factory.mktemp("cache")
    try:
        KERNELS.mkdir(parents=True, exist_ok=True)
        (folder / "cnnc").mkdir()
        (folder / "cnnc" / "numba").symlink_to(KERNELS, target_is_directory=True)
    except OSError:
        pass
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


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


def require_dot():
    """Graphviz's `dot` binary: skip locally without it, fail in CI."""
    import shutil

    if shutil.which("dot") is None:
        if os.environ.get("CNNC_REQUIRE_REFERENCES"):
            pytest.fail("Graphviz 'dot' is required in CI")
        pytest.skip("Graphviz not installed")


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
