"""Runs that must stay bounded and quiet: worker counts, Ctrl-C, bench repeats, folder entries
that are not regular files, and diagnostics for hostile sources (issue 21, section 4)."""

from __future__ import annotations

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
    from cnnc.runtime import cluster

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
