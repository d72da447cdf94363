"""Runs that must stay bounded and quiet: worker counts, Ctrl-C, bench repeats, folder entries
that are not regular files, and diagnostics for hostile sources (issue 21, section 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cnnc.cli import main
from conftest import require

SPEC = """
network net(x: 3x16x16, width=8) {
    return x | conv(width, k=3, p=1) | relu | gap | flatten | fc(10)
}
"""


def test_workers_are_capped_at_the_usable_cores(tmp_path, capsys):
    from cnnc.jobs import cluster

    cores = cluster.usable_cores()
    assert cores == len(os.sched_getaffinity(0))
    with pytest.warns(UserWarning, match=f"starting {cores} workers"):
        assert cluster.local_workers(1000) == cores
    assert cluster.local_workers(1) == 1
    require("distributed")
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    assert main(["sweep", str(spec), "--grid", "width=4,8", "--workers", "1000"]) == 0
    err = capsys.readouterr().err
    assert f"--workers 1000: this machine has {cores} usable core" in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # timing: on a quiet machine the 3000 inputs can finish before the signal
def test_ctrl_c_in_a_folder_run_prints_one_line(tmp_path):
    """Ctrl-C reaches the whole process group (cnnc and its Dask workers): the run stops with
    one line, and neither the workers nor the scheduler print tracebacks."""
    require("distributed")
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    inputs = tmp_path / "in"
    inputs.mkdir()
    x = np.zeros((3, 16, 16), np.float32)
    for i in range(3000):
        np.save(inputs / f"s{i:04d}.npy", x)
    out = tmp_path / "out"
    argv = ["run", str(spec), "--input", str(inputs), "--out", str(out), "--batch", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnc", *argv, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    try:
        deadline = time.monotonic() + 90
        while not (out.exists() and any(out.iterdir())) and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)  # workers busy with their tasks
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == ["cnnc: interrupted"], stderr


def test_bench_stops_at_its_time_limit_and_says_how_long_it_would_take(tmp_path, capsys):
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    argv = ["bench", str(spec), "--repeat", "1000000000", "--time-limit", "1"]
    t0 = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - t0 < 60
    captured = capsys.readouterr()
    assert "1,000,000,000 passes would take about" in captured.err
    assert "timing stops after 1.0 s (--time-limit)" in captured.err
    assert "--time-limit reached before 1,000,000,000" in captured.out
    assert main([*argv, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stopped_early"] is True and 1 <= info["repeat"] < 1_000_000_000
    for bad in ("0", "-3", "nan"):
        assert main(["bench", str(spec), "--time-limit", bad]) == 2
        assert "--time-limit must be a positive number" in capsys.readouterr().err


def test_folder_runs_name_every_entry_that_is_not_a_regular_file(tmp_path, capsys):
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "good.npy", np.zeros((3, 16, 16), np.float32))
    (folder / "dangling.npy").symlink_to(folder / "nowhere.npy")
    (folder / "loop.npy").symlink_to(folder / "loop.npy")
    os.mkfifo(folder / "fifo.npy")
    (folder / "zero.npy").symlink_to("/dev/zero")
    (folder / "dir.npy").mkdir()
    (folder / "notes.txt").write_text("not an input")
    argv = ["run", str(spec), "--input", str(folder), "--out", str(tmp_path / "out")]
    assert main(argv) == 1  # never blocks on the FIFO nor reads /dev/zero
    captured = capsys.readouterr()
    assert "ran 1 of 6 inputs" in captured.out and "5 failed" in captured.out
    for name, reason in [
        ("dangling.npy", "a dangling symbolic link"),
        ("loop.npy", "a symbolic link loop"),
        ("fifo.npy", "a named pipe (FIFO)"),
        ("zero.npy", "a device"),
        ("dir.npy", "a directory"),
    ]:
        assert f"{folder / name}: not an input file: it is {reason}" in captured.err
    assert "notes.txt" not in captured.err
    assert (tmp_path / "out" / "good.npy").exists()
    (folder / "good.npy").unlink()
    assert main([*argv[:2], "--input", str(folder / "*.npy"), *argv[4:]]) == 1
    err = capsys.readouterr().err
    assert "no .npy" in err and "'" + str(folder / "fifo.npy") + "' is a named pipe" in err


def test_diagnostics_escape_control_characters_in_quoted_source(tmp_path, capsys):
    spec = tmp_path / "esc.cnn"
    spec.write_text("network n(x: 3x8x8) {\n  return x | fc(2) # \x1b]0;title\x07 \u202eevil\n}\n")
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err
    assert "\\x1b]0;title\\x07 \\u202eevil" in err
    source, caret = err.splitlines()[1:3]
    assert caret.index("^") == source.index("fc(2)")  # the caret still points at fc
    bad = tmp_path / "bad.cnn"
    bad.write_text("network n(x: 3x8x8) {\n  return x | \x1b[31m fc(2)\n}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err
    source, caret = err.splitlines()[1:3]
    at = caret.index("^")
    assert caret[at:].startswith("^~~~") and source[at : at + 4] == "\\x1b"


def test_error_output_is_capped(tmp_path, capsys):
    from cnnc.compiler.diagnostics import MAX_LINE, MAX_SHOWN

    long = tmp_path / "long.cnn"
    long.write_text("network n(x: 3x8x8) {\n  return x | " + "relu | " * 50_000 + "fc(2)\n}\n")
    assert main(["check", str(long)]) == 1
    err = capsys.readouterr().err
    assert len(err) < 2_000 and max(len(line) for line in err.splitlines()) < MAX_LINE + 20
    many = tmp_path / "many.cnn"
    body = "".join(f"  a{i} = x | cnv(3)\n" for i in range(5_000))
    many.write_text(f"network n(x: 3x8x8) {{\n{body}  return x\n}}\n")
    assert main(["check", str(many)]) == 1
    err = capsys.readouterr().err
    assert err.count("error: unknown op or block 'cnv'") == MAX_SHOWN
    assert f"{5_000 - MAX_SHOWN:,} more diagnostics not shown (5,000 errors in all" in err
    assert len(err) < 5_000
    assert main(["check", str(many), "--json"]) == 1
    assert len(json.loads(capsys.readouterr().out)["diagnostics"]) == 5_000
