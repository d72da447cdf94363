"""The installed package holds every module of the checkout: `pip install .` (not editable)
installs only the packages pyproject.toml lists, so a new folder must be listed there."""

from __future__ import annotations

import re

from conftest import ROOT


def test_every_package_folder_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(cnnc(?:\.\w+)*)"', text[text.index("packages = [") :]))
    found = {"cnnc"}
    for init in ROOT.rglob("__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if (
            parts
            and parts[0] not in ("tests", "benchmarks", "build", "dist")
            and not (parts[0].startswith("."))
        ):
            found.add(".".join(("cnnc", *parts)))
    assert found <= listed, f"add to pyproject.toml's packages: {sorted(found - listed)}"


def test_every_data_file_of_the_package_is_listed_in_pyproject():
    """Files that are not Python (the grammar, cnnc view's page) are installed only when
    package-data names them."""
    from fnmatch import fnmatch

    text = (ROOT / "pyproject.toml").read_text()
    section = text[text.index("[tool.setuptools.package-data]") :].split("\n[", 1)[0]
    patterns = {
        package: re.findall(r'"([^"]+)"', globs)
        for package, globs in re.findall(r'^"([\w.]+)" = \[(.*?)\]', section, re.M)
    }
    for package, folder in (("cnnc.grammar", "grammar"), ("cnnc.compiler", "compiler")):
        for path in (ROOT / folder).rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            name = path.relative_to(ROOT / folder).as_posix()
            assert any(fnmatch(name, p) for p in patterns.get(package, [])), (
                f"add {name} to pyproject.toml's package-data for {package}"
            )


def test_the_all_extra_holds_every_cpu_extra():
    text = (ROOT / "pyproject.toml").read_text()
    extras = text[text.index("[project.optional-dependencies]") : text.index("[project.scripts]")]
    defined = set(re.findall(r"^(\w+) = \[", extras, re.M))
    (entry,) = re.findall(r'^all = \["cnnc\[([\w,]+)\]"\]$', extras, re.M)
    assert set(entry.split(",")) == {"images", "dask", "onnx", "train"} <= defined
    assert "cuda" in defined  # the GPU's extra stays apart
