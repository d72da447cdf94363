"""The command line as a user runs it: exit codes, output, JSON, no traceback, no heavy imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from cnnc.cli import main
from conftest import SPECS


def run_cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "cnnc", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_check_prints_table_and_totals(capsys):
    assert main(["check", str(SPECS / "lenet5.cnn")]) == 0
    out = capsys.readouterr().out
    assert "c1.conv" in out and "conv 5x5, 6" in out and "6x28x28" in out
    assert "params      61,706" in out
    assert "MACs        416,520" in out and "FLOPs       833,040" in out and "2 x MACs" in out


def test_check_json(capsys):
    assert main(["check", str(SPECS / "resnet.cnn"), "--network", "resnet50", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (net,) = doc["networks"]
    assert net["total_params"] == 25_557_032 and net["total_macs"] == 4_089_184_256
    assert doc["diagnostics"] == []


def test_check_errors_exit_1_with_json_diagnostics(tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    bad.write_text("network n(x: 3x8x8) {\n  return x | fc(2)\n}\n")
    assert main(["check", str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    (d,) = doc["diagnostics"]
    assert (d["severity"], d["line"], d["column"]) == ("error", 2, 14)
    assert d["file"] == str(bad)


def test_usage_errors_exit_2():
    result = run_cli("check")
    assert result.returncode == 2 and "usage:" in result.stderr
    assert run_cli("frobnicate").returncode == 2


@pytest.mark.parametrize(
    "content", [b"\xff\xfe", b"network n(x: 3x8x8) {\n return x |\n}\n", b"network"]
)
def test_bad_specs_never_print_a_traceback(tmp_path, content):
    path = tmp_path / "bad.cnn"
    path.write_bytes(content)
    result = run_cli("check", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "error:" in result.stderr


def test_missing_file_and_unknown_network(tmp_path):
    result = run_cli("check", str(tmp_path / "nope.cnn"))
    assert result.returncode == 1 and "no such file" in result.stderr
    result = run_cli("check", str(SPECS / "vgg.cnn"), "--network", "vgg_f")
    assert result.returncode == 1 and "did you mean" in result.stderr


def test_check_does_not_import_numba_torch_or_networkx():
    spec = str(SPECS / "resnet.cnn")
    code = (
        f"import sys; from cnnc.cli import main; main(['check', {spec!r}]); "
        "print(sorted(m for m in ('numba', 'torch', 'networkx', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_several_networks_get_a_summary_row_each(capsys):
    assert main(["check", str(SPECS / "resnet.cnn")]) == 0
    out = capsys.readouterr().out
    summary = out[re.search(r"^network +input", out, re.M).start() :]
    assert all(name in summary for name in ("resnet18", "resnet34", "resnet50", "resnet152"))
    assert "25,557,032" in summary
