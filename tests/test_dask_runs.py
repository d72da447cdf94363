"""Sweeps and folder runs on a real Dask cluster: a ``dask scheduler`` and two ``dask worker``
processes started here on the loopback interface, bounded in time and memory, and stopped
after the module's tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from conftest import SPECS, require

SPEC = """
block stage(x, c) {
    return x | conv(c, k=3, p=1) | relu
}

network net(x: 3x16x16, width=8, depth=1, groups=1) {
    y = x | conv(width, k=3, p=1, g=groups) | relu | stage(width) * depth
    return y | gap | flatten | fc(10)
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """The address of a running scheduler with two single-threaded worker processes."""
    distributed = require("distributed")
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if dask is None:
        pytest.fail("the `dask` command of dask[distributed] is not installed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("dask")
    common = ["--no-dashboard", "--host", "127.0.0.1"]
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--port", str(port), *common, "--idle-timeout", "600"],
            stdout=subprocess.DEVNULL,
            stderr=open(logs / "scheduler.log", "w"),  # noqa: SIM115 - closed with the process
        )
    ]
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [dask, "worker", address, *common, "--nthreads", "1", "--no-nanny"]
                + ["--memory-limit", "2GiB", "--death-timeout", "60", "--name", f"w{i}"],
                stdout=subprocess.DEVNULL,
                stderr=open(logs / f"worker{i}.log", "w"),  # noqa: SIM115
            )
        )
    try:
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_sweep_rows_errors_json_csv_and_plot(scheduler, tmp_path, capsys):
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    grid = ["--grid", "width=4,8", "depth=0,2", "groups=1,3"]
    plot = tmp_path / "sweep.svg"
    argv = ["sweep", str(spec), *grid, "--json", "--scheduler", scheduler, "--plot", str(plot)]
    assert main(argv) == 1  # groups=3 variants fail: they are rows with errors
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8
    by = {tuple(r["parameters"].values()): r for r in rows}
    ok = by[(8, 2, 1)]
    net = cnnc.load(SPEC, params={"width": 8, "depth": 2})
    assert ok["error"] is None and ok["params"] == net.total_params and ok["macs"] == net.total_macs
    assert ok["outputs"] == {"out": [10]} and ok["activation_peak_bytes"] > 0
    bad = by[(4, 0, 3)]  # 4 output channels in 3 groups
    assert "params" not in bad and "p.cnn:7:35: conv: groups must divide" in bad["error"]
    assert sum(1 for r in rows if r["error"]) == 4  # groups=3 divides neither 4 nor 8
    svg = ET.parse(plot).getroot()
    labels = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "width=8 depth=2 groups=1" in labels
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}circle"))) == 4
    assert main(["sweep", str(spec), "--grid", "width=4,8", "--csv", "--scheduler", scheduler]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "width,params,macs,activation_peak_bytes,output,error"
    assert lines[1].startswith("4,") and len(lines) == 3


def test_sweep_bench_times_every_variant(scheduler, tmp_path, capsys):
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    argv = ["sweep", str(spec), "--grid", "depth=0,1", "--bench", "--repeat", "2"]
    assert main([*argv, "--scheduler", scheduler]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-1] == "ms"
    assert all(float(line.split()[-1]) > 0 for line in out.splitlines()[2:4])


def test_sweep_usage_and_name_errors(tmp_path, capsys):
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    assert main(["sweep", str(spec), "--grid", "width"]) == 2
    assert main(["sweep", str(spec), "--grid", "width=1,2", "--scheduler", "nowhere"]) == 2
    assert main(["sweep", str(spec), "--grid", "widht=1,2"]) == 1
    assert "did you mean 'width'?" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--grid", "width=1,2", "--plot", str(tmp_path / "a.png")]) == 2


def _inputs(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        np.save(folder / f"s{i}.npy", rng.standard_normal((3, 16, 16)).astype(np.float32))
    np.save(folder / "two.npy", rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "photo.png")
    (folder / "broken.npy").write_bytes(b"not numpy")
    np.save(folder / "wrong.npy", np.zeros((3, 8, 8), np.float32))
    (folder / "notes.txt").write_text("ignored: not an input suffix")
    return sorted(folder.iterdir())


def test_folder_run_on_the_cluster(scheduler, tmp_path, capsys):
    require("PIL")
    distributed = require("distributed")
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    weights = tmp_path / "w.npz"
    argv = ["run", str(spec), "--input", str(tmp_path / "in"), "--out", str(out)]
    argv += ["--batch", "2", "--save-weights", str(weights), "--scheduler", scheduler]
    assert main(argv) == 1  # two bad files
    captured = capsys.readouterr()
    assert "ran 7 of 9 inputs" in captured.out and "2 failed" in captured.out
    assert "broken.npy" in captured.err and "wrong.npy" in captured.err
    assert "has shape (3, 8, 8)" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [
        "photo.npy",
        "s0.npy",
        "s1.npy",
        "s2.npy",
        "s3.npy",
        "s4.npy",
        "two.npy",
    ]
    net = cnnc.load(SPEC)
    for name in ("s3", "two"):
        x = np.load(tmp_path / "in" / f"{name}.npy")
        want = cnnc.run(net, {"x": x}, weights=str(weights))["out"]
        np.testing.assert_allclose(np.load(out / f"{name}.npy"), want, rtol=1e-5, atol=1e-6)
    assert np.load(out / "two.npy").shape == (2, 10)
    # weights went once to each worker: one session per worker, reused by its chunks
    with distributed.Client(scheduler) as client:
        stats = client.run(lambda: dict(__import__("cnnc.jobs.folder").jobs.folder.STATS))
    assert sum(s.get("chunks", 0) for s in stats.values()) == 5
    assert all(s.get("sessions", 0) <= 1 for s in stats.values()), stats
    # resume: existing outputs are skipped, only the bad files are tried again
    (out / "s1.npy").unlink()
    at = argv.index("--save-weights")
    argv[at : at + 2] = ["--weights", str(weights)]
    assert main(argv) == 1
    resumed = capsys.readouterr().out
    assert "ran 1 of 9 inputs in" in resumed and "6 skipped (output exists), 2 failed" in resumed


def test_folder_run_in_a_local_cluster_with_a_glob(tmp_path, capsys):
    require("distributed")
    _inputs(tmp_path / "in")
    argv = ["run", str(SPECS / "lenet5.cnn")]
    out = ["--out", str(tmp_path / "o")]
    assert main([*argv, "--input", str(tmp_path / "in" / "*.npy"), *out]) == 1
    err = capsys.readouterr().err
    assert "expects (N, 1, 32, 32)" in err  # every file is the wrong shape for lenet5
    assert main([*argv, "--input", str(tmp_path / "in"), "--out", str(tmp_path / "in/s0.npy")]) == 2
    assert main([*argv, "--input", str(tmp_path / "none*.npy"), *out]) == 1
    assert "no .npy" in capsys.readouterr().err


def test_without_dask_folder_runs_and_sweeps_go_on_in_process(tmp_path, capsys, monkeypatch):
    from cnnc.jobs import cluster

    monkeypatch.setattr(cluster, "available", lambda: False)
    spec = tmp_path / "p.cnn"
    spec.write_text(SPEC)
    (tmp_path / "in").mkdir()
    x = np.random.default_rng(1).standard_normal((3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "in" / "a.npy", x)
    argv = ["run", str(spec), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "running in this process" in captured.err and "ran 1 of 1 inputs" in captured.out
    want = cnnc.run(cnnc.load(SPEC), {"x": x})["out"]
    np.testing.assert_allclose(np.load(tmp_path / "o" / "a.npy"), want, rtol=1e-5, atol=1e-6)
    assert main(["sweep", str(spec), "--grid", "width=4,8"]) == 0
    captured = capsys.readouterr()
    assert "running in this process" in captured.err and "pip install 'cnnc[dask]'" in captured.err
    assert [line.split()[0] for line in captured.out.splitlines()[2:4]] == ["4", "8"]
    scheduler = ["--scheduler", "tcp://127.0.0.1:1"]  # asked for Dask: say how to install it
    assert main(["sweep", str(spec), "--grid", "width=4,8", *scheduler]) == 1
    assert "pip install 'cnnc[dask]'" in capsys.readouterr().err


def test_folder_run_usage_errors(tmp_path, capsys):
    two = tmp_path / "two.cnn"
    two.write_text("network n(a: 3x8x8, b: 3x8x8) {\n    return add(a, b)\n}\n")
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", np.zeros((3, 8, 8), np.float32))
    folder = ["--input", str(tmp_path / "in")]
    assert main(["run", str(two), *folder, "--out", str(tmp_path / "o")]) == 2
    assert "has 2" in capsys.readouterr().err
    assert main(["run", str(SPECS / "lenet5.cnn"), *folder]) == 2
    assert "needs --out DIR" in capsys.readouterr().err
    assert main(["run", str(SPECS / "lenet5.cnn"), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "--scheduler runs a folder" in capsys.readouterr().err
