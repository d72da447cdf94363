"""Training on Dask: ``cnnc sweep --train`` (rows gain validation loss and accuracy and the
training time; the plot marks the Pareto front) and ``cnnc train --scheduler``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnc.cli import main
from cnnc.jobs.plot import pareto_front
from conftest import require

SPEC = """network net(x: 1x6x6, width=4) {
    a = x | conv(width, k=3, p=1) | bn | relu
    return a | gap | flatten | fc(3)
}
"""


@pytest.fixture(scope="module")
def scheduler():
    """A cluster of one in-process worker: the kernels compiled here serve it too."""
    distributed = require("distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        dashboard_address=None,
        silence_logs=40,
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    (root / "net.cnn").write_text(SPEC)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 30)
    x = rng.uniform(0, 1, (30, 1, 6, 6)).astype(np.float32)
    np.savez(root / "d.npz", x=x, y=y)
    return root


def test_pareto_front_keeps_the_best_accuracy_for_its_cost():
    points = [(10, 50.0), (20, 70.0), (15, 40.0), (30, 70.0), (40, 90.0), (5, 50.0)]
    assert pareto_front(points) == [5, 1, 4]


def test_sweep_train_adds_validation_and_time_and_plots_the_front(scheduler, files, tmp_path,
                                                                  capsys):  # fmt: skip
    plot = tmp_path / "front.svg"
    code = main(["sweep", str(files / "net.cnn"), "--grid", "width=2,4", "--train",
                 "--data", str(files / "d.npz"), "--val-split", "0.3", "--epochs", "1",
                 "--batch", "8", "--json", "--plot", str(plot),
                 "--scheduler", scheduler])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)
    assert [r["parameters"]["width"] for r in rows] == [2, 4]
    for r in rows:
        assert r["error"] is None
        assert 0 <= r["val_accuracy"] <= 1 and r["val_loss"] > 0 and r["train_s"] > 0
    text = plot.read_text()
    assert "Pareto front" in text and "width=2" in text
    assert main(["sweep", str(files / "net.cnn"), "--grid", "width=2", "--train", "--data",
                 str(files / "d.npz"), "--epochs", "1", "--scheduler", scheduler]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "val_acc" in table and "train_s" in table


def test_sweep_training_flags_need_train(files, capsys):
    assert main(["sweep", str(files / "net.cnn"), "--grid", "width=2", "--epochs", "3"]) == 2
    assert "--epochs goes with --train" in capsys.readouterr().err
    assert main(["sweep", str(files / "net.cnn"), "--grid", "width=2", "--train"]) == 2
    assert "--train needs --data" in capsys.readouterr().err


def test_train_on_a_scheduler_streams_epochs_and_writes_weights(scheduler, files, tmp_path,
                                                               capsys):  # fmt: skip
    out = tmp_path / "w.npz"
    code = main(["train", str(files / "net.cnn"), "--data", str(files / "d.npz"), "--epochs",
                 "2", "--batch", "8", "--out", str(out), "--scheduler", scheduler])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch 1/2" in captured.out and "epoch 2/2" in captured.out
    assert captured.out.count("epoch 2/2") == 1
    with np.load(out) as w:
        assert "a.conv.weight" in w.files
