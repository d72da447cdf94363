"""``cnnc train`` and ``cnnc eval``, and their API: a run against PyTorch training the same
network, resume bit for bit, Ctrl-C, non-finite losses, freezing, partial weights, the files
a run writes, and every kind of bad input refused before anything is written."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnnc
from cnnc.cli import main
from cnnc.runtime.weights import expected, initialise
from cnnc.training import checkpoint as ckpt
from cnnc.training.loader import epoch_order
from conftest import SPECS, require

TINY = """network tiny(x: 1x6x6) {
    a = x | conv(4, k=3, p=1) | bn | relu
    b = a | conv(8, k=3, s=2, p=1) | relu
    return b | gap | flatten | dropout(0.25) | fc(3)
}
"""

OTHER = TINY.replace("network tiny", "network other")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A spec and a small learnable data set: the class is the brightest third of the image."""
    root = tmp_path_factory.mktemp("train")
    spec = root / "tiny.cnn"
    spec.write_text(TINY)
    (root / "other.cnn").write_text(OTHER)
    rng = np.random.default_rng(0)
    n = 40
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 0.3, (n, 1, 6, 6)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 2 * c : 2 * c + 2] += 0.7
    np.savez(root / "train.npz", x=x, y=y)
    np.savez(root / "val.npz", x=x[:12], y=y[:12])
    return root


def train_args(files, *extra):
    return [
        "train", str(files / "tiny.cnn"), "--data", str(files / "train.npz"),
        "--batch", "16", "--lr", "0.1", "--momentum", "0.9", *extra,
    ]  # fmt: skip


def load_npz(path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_train_writes_weights_log_json_and_eval_reads_them(files, tmp_path, capsys):
    out, log = tmp_path / "w.npz", tmp_path / "log.csv"
    args = train_args(files, "--epochs", "2", "--val", str(files / "val.npz"))
    assert main([*args, "--out", str(out), "--log", str(log), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert set(report["history"][0]) >= {
        "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds",
    }  # fmt: skip
    assert report["weights"] == str(out)
    assert "epoch 1/2" in captured.err and "epoch 2/2" in captured.err  # lines go to stderr
    weights = load_npz(out)
    net = cnnc.load(TINY)
    assert set(weights) == set(expected(net))
    rows = log.read_text().splitlines()
    assert rows[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds")
    assert len(rows) == 3
    # the log appends
    assert main([*args[:-4], "--epochs", "1", "--out", str(out), "--log", str(log)]) == 0
    assert len(log.read_text().splitlines()) == 4
    capsys.readouterr()
    assert main(["eval", str(files / "tiny.cnn"), "--weights", str(out), "--data",
                 str(files / "val.npz"), "--json"]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["samples"] == 12 and "top5" not in metrics  # three classes
    assert np.sum(metrics["confusion"]) == 12
    # cnnc run takes the trained weights as they are
    assert main(["run", str(files / "tiny.cnn"), "--weights", str(out)]) == 0


def test_training_equals_pytorch_training_the_same_network(files, torch):
    """One epoch of SGD with momentum, Nesterov and weight decay, batch norm in training:
    the same batches in torch.nn give the same weights and running statistics."""
    spec = TINY.replace(" | dropout(0.25)", "")
    net = cnnc.load(spec)
    x, y = load_npz(files / "train.npz")["x"], load_npz(files / "train.npz")["y"]
    init = initialise(net, 3)
    history, ours = cnnc.train(
        net, (x, y), epochs=2, batch=16, lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=1e-3, seed=3, weights={k: v.copy() for k, v in init.items()},
    )  # fmt: skip
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    names = {"0": "a.conv", "1": "a.bn", "3": "b.conv", "7": "out.fc"}
    state = model.state_dict()
    for key in state:
        index, _, part = key.partition(".")
        if part != "num_batches_tracked":
            state[key] = torch.from_numpy(init[f"{names[index]}.{part}"].copy())
    model.load_state_dict(state)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    )
    model.train()
    losses = []
    for epoch in range(2):
        order = epoch_order(len(x), 3, epoch)
        total = 0.0
        for i in range(0, len(order), 16):
            idx = order[i : i + 16]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(
                model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])
            )
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x))
    np.testing.assert_allclose([h["loss"] for h in history], losses, rtol=1e-4)
    for key, value in model.state_dict().items():
        index, _, part = key.partition(".")
        if part == "num_batches_tracked":
            continue
        want = value.numpy()
        got = ours[f"{names[index]}.{part}"]
        err = np.abs(got - want).max()
        # a conv bias before batch norm has no gradient in exact arithmetic: rounding only
        assert err <= 1e-4 * np.abs(want).max() + 2e-6, (key, err, np.abs(want).max())


def test_resume_after_two_epochs_equals_three_epochs_bit_for_bit(files, tmp_path, capsys):
    ck, once, twice = tmp_path / "ck", tmp_path / "once.npz", tmp_path / "twice.npz"
    common = ["train", str(files / "tiny.cnn"), "--data", str(files / "train.npz"),
              "--batch", "16", "--optimizer", "adam", "--lr", "0.01", "--schedule", "step:2:0.5",
              "--augment", "flip,crop=1", "--val-split", "0.2"]  # fmt: skip
    assert main([*common, "--epochs", "2", "--checkpoint", str(ck),
                 "--out", str(tmp_path / "two.npz")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["train", str(files / "tiny.cnn"), "--resume", str(ck), "--epochs", "3",
                 "--out", str(twice)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "resuming from" in err and "after epoch 2 of 3" in err
    assert "changed: epochs 2 -> 3" in err
    assert main([*common, "--epochs", "3", "--out", str(once)]) == 0
    a, b = load_npz(once), load_npz(twice)
    assert set(a) == set(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    meta, _, _ = ckpt.load(ck, cnnc.load(TINY))
    assert meta["epoch"] == 3 and len(meta["history"]) == 3


def test_a_cosine_run_stopped_after_two_of_three_epochs_resumes_bit_for_bit(files, tmp_path):
    net = cnnc.load(TINY)
    ck = tmp_path / "ck"
    settings = dict(epochs=3, batch=16, lr=0.1, momentum=0.9, schedule="cosine", warmup=1)

    def stop_after_two(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cnnc.train(net, str(files / "train.npz"), checkpoint=ck, on_epoch=stop_after_two,
                   **settings)  # fmt: skip
    history, resumed = cnnc.train(net, resume=ck)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    _, whole = cnnc.train(net, str(files / "train.npz"), **settings)
    for key in whole:
        assert np.array_equal(whole[key], resumed[key]), key


def test_flags_on_resume_override_and_are_reported(files, tmp_path, capsys):
    ck = tmp_path / "ck"
    assert main([*train_args(files), "--epochs", "1", "--checkpoint", str(ck),
                 "--out", str(tmp_path / "a.npz")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["train", str(files / "tiny.cnn"), "--resume", str(ck), "--epochs", "2",
                 "--lr", "0.01", "--out", str(tmp_path / "b.npz")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "lr 0.1 -> 0.01" in captured.err
    assert "lr 0.01" in captured.out.splitlines()[-3]  # epoch 2 ran at the new rate
    # a new run into a folder that holds a checkpoint is refused, not overwritten
    assert main([*train_args(files), "--checkpoint", str(ck)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_resume(files, tmp_path):
    ck = tmp_path / "ck"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "cnnc", *train_args(files), "--epochs", "100000",
           "--checkpoint", str(ck), "--out", str(tmp_path / "w.npz")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.time() + 240
        while not (ck / ckpt.FILE).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (ck / ckpt.FILE).exists(), proc.communicate(timeout=30)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "resume with: cnnc train" in err and f"--resume {ck}" in err
    assert not (tmp_path / "w.npz").exists()
    meta, _, _ = ckpt.load(ck, cnnc.load(TINY))
    assert meta["epoch"] >= 1 and re.search(rf"epoch +{meta['epoch']}/100000 ", out)


def test_interrupted_checkpoint_write_leaves_the_previous_one_loadable(
    files, tmp_path, monkeypatch
):
    net = cnnc.load(TINY)
    ck = tmp_path / "ck"
    cnnc.train(net, str(files / "train.npz"), epochs=1, batch=16, checkpoint=ck)
    before = (ck / ckpt.FILE).read_bytes()

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt) as stop:
        cnnc.train(net, str(files / "train.npz"), epochs=2, batch=16, resume=ck)
    assert stop.value.epochs == 1 and stop.value.checkpoint == ck
    monkeypatch.undo()
    assert (ck / ckpt.FILE).read_bytes() == before
    meta, weights, _ = ckpt.load(ck, net)
    assert meta["epoch"] == 1 and set(weights) == set(expected(net))


def test_non_finite_loss_stops_naming_epoch_step_and_layer(files, tmp_path, capsys):
    ck = tmp_path / "ck"
    # epoch 1 trains at 0.05; epoch 2 at 5e7, which blows up
    code = main([*train_args(files), "--lr", "0.05", "--schedule", "step:1:1e9", "--epochs", "3",
                 "--checkpoint", str(ck), "--out", str(tmp_path / "w.npz")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err
    assert "training stopped in epoch 2, step" in err
    assert "layer '" in err or "weights '" in err
    assert "lower the learning rate" in err and "last good checkpoint (epoch 1)" in err
    assert not (tmp_path / "w.npz").exists()
    assert ckpt.load(ck, cnnc.load(TINY))[0]["epoch"] == 1


def test_diagnosis_names_the_first_layer_whose_output_is_not_finite():
    from cnnc.training.diagnose import first_non_finite
    from cnnc.training.engine import Engine

    net = cnnc.load(TINY)
    weights = initialise(net, 0)
    engine = Engine(net)
    x = np.ones((2, 1, 6, 6), np.float32)
    weights["b.conv.weight"][:] = 3e38  # finite weights, an output that overflows
    where = first_non_finite(engine, weights, x, np.array([0, 1]), "cross_entropy", 0)
    assert where == "the output of layer 'b.conv' (forward pass)"
    weights["b.conv.weight"][0, 0, 0, 0] = np.nan
    assert "weights 'b.conv.weight'" in first_non_finite(
        engine, weights, x, np.array([0, 1]), "cross_entropy", 0
    )


def test_freeze_keeps_layers_and_their_running_statistics(files):
    net = cnnc.load(TINY)
    init = initialise(net, 0)
    _, weights = cnnc.train(
        net, str(files / "train.npz"), epochs=1, batch=16, lr=0.1, freeze=["a.*"],
        weights={k: v.copy() for k, v in init.items()},
    )  # fmt: skip
    for key in init:
        same = np.array_equal(weights[key], init[key])
        assert same == key.startswith("a."), key


def test_partial_weights_load_what_matches_and_list_the_rest(files, tmp_path, capsys):
    src = tmp_path / "src.npz"
    assert main([*train_args(files), "--epochs", "1", "--out", str(src)]) == 0
    four = tmp_path / "four.cnn"
    four.write_text(TINY.replace("fc(3)", "fc(4)"))
    out = tmp_path / "out.npz"
    # strict loading names the mismatch; --partial loads the rest
    assert main(["train", str(four), "--data", str(files / "train.npz"), "--epochs", "1",
                 "--weights", str(src), "--out", str(out)]) == 1  # fmt: skip
    assert "out.fc.weight" in capsys.readouterr().err
    assert main(["train", str(four), "--data", str(files / "train.npz"), "--epochs", "1",
                 "--weights", str(src), "--partial", "--freeze", "a.*", "--freeze", "b.*",
                 "--out", str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "left freshly initialised: out.fc" in err and "weight 3x8 in the file, 4x8 here" in err
    a, b = load_npz(src), load_npz(out)
    for key in a:
        if key.startswith(("a.", "b.")):
            assert np.array_equal(a[key], b[key]), key


def test_plot_draws_the_curves(files, tmp_path, capsys):
    require("matplotlib")
    plot = tmp_path / "curves.svg"
    assert main([*train_args(files), "--epochs", "2", "--val-split", "0.25",
                 "--plot", str(plot), "--out", str(tmp_path / "w.npz")]) == 0  # fmt: skip
    assert plot.read_text().lstrip().startswith("<?xml")


# ---- bad input: a clear error, exit 1 or 2, nothing written -------------------------------


def refused(argv, capsys, tmp_path, code, *phrases):
    out = tmp_path / "never.npz"
    got = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert got == code, err
    for phrase in phrases:
        assert phrase in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert not out.exists()
    return err


def test_labels_out_of_range(files, tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 6, 6), np.float32), y=np.array([0, 1, 2, 5]))
    refused(["train", str(files / "tiny.cnn"), "--data", str(tmp_path / "d.npz")], capsys,
            tmp_path, 1, "class index 5", "0..2")  # fmt: skip


def test_npz_without_x_or_y(files, tmp_path, capsys):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 1, 6, 6), np.float32), y=np.zeros(4))
    refused(["train", str(files / "tiny.cnn"), "--data", str(tmp_path / "d.npz")], capsys,
            tmp_path, 1, "no 'x' array", "images")  # fmt: skip


def test_data_shape_not_matching_the_input_names_both(files, tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.uint8), y=np.zeros(4, int))
    refused(["train", str(files / "tiny.cnn"), "--data", str(tmp_path / "d.npz")], capsys,
            tmp_path, 1, "3x8x8", "1x6x6")  # fmt: skip


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2"])
def test_val_split_outside_zero_one(files, tmp_path, capsys, fraction):
    refused([*train_args(files), "--val-split", fraction], capsys, tmp_path, 2, "--val-split")


def test_resume_of_a_missing_or_foreign_checkpoint(files, tmp_path, capsys):
    spec = str(files / "tiny.cnn")
    refused(["train", spec, "--resume", str(tmp_path / "nowhere")], capsys, tmp_path, 1,
            "no such checkpoint folder")  # fmt: skip
    (tmp_path / "empty").mkdir()
    refused(["train", spec, "--resume", str(tmp_path / "empty")], capsys, tmp_path, 1,
            "no checkpoint in it")  # fmt: skip
    ck = tmp_path / "ck"
    assert main(["train", str(files / "other.cnn"), "--data", str(files / "train.npz"),
                 "--epochs", "1", "--batch", "20", "--checkpoint", str(ck),
                 "--out", str(tmp_path / "o.npz")]) == 0  # fmt: skip
    capsys.readouterr()
    refused(["train", spec, "--resume", str(ck)], capsys, tmp_path, 1,
            "checkpoint of network 'other'", "not of 'tiny'")  # fmt: skip


def test_checkpoint_folder_not_writable_is_refused_before_training(files, tmp_path, capsys):
    err = refused([*train_args(files), "--checkpoint", "/proc/cnnc-checkpoints"], capsys,
                  tmp_path, 1, "/proc")  # fmt: skip
    assert "epoch 1" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused([*train_args(files), "--checkpoint", str(blocker)], capsys, tmp_path, 1,
            "is a file")  # fmt: skip


def images(root: Path, classes: dict, size=(10, 10), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_image_folder_with_one_class_or_an_empty_class(files, tmp_path, capsys):
    spec = str(files / "tiny.cnn")
    one = images(tmp_path / "one", {"cat": 2})
    refused(["train", spec, "--data", str(one)], capsys, tmp_path, 1, "1 class folder")
    empty = images(tmp_path / "empty", {"cat": 2, "dog": 0})
    refused(["train", spec, "--data", str(empty)], capsys, tmp_path, 1,
            f"'{empty / 'dog'}' holds no images")  # fmt: skip


def test_corrupt_image_is_named(files, tmp_path, capsys):
    root = images(tmp_path / "imgs", {"cat": 2, "dog": 2})
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG not really")
    refused(["train", str(files / "tiny.cnn"), "--data", str(root)], capsys, tmp_path, 1,
            str(root / "dog" / "bad.png"))  # fmt: skip


def test_image_folder_trains_and_evaluates(files, tmp_path, capsys):
    root = images(tmp_path / "imgs", {"a": 6, "b": 6, "c": 4}, size=(9, 7))
    out = tmp_path / "w.npz"
    assert main(["train", str(files / "tiny.cnn"), "--data", str(root), "--epochs", "1",
                 "--batch", "5", "--augment", "flip,crop=1", "--out", str(out)]) == 0  # fmt: skip
    assert "16 samples" in capsys.readouterr().out
    assert main(["eval", str(files / "tiny.cnn"), "--weights", str(out), "--data",
                 str(root)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "samples   16" in text and "confusion matrix" in text


def test_usage_errors(files, tmp_path, capsys):
    for extra, phrase in [
        (["--schedule", "linear"], "--schedule"),
        (["--augment", "rotate"], "--augment"),
        (["--freeze", "nothing*"], "matches no layer"),
        (["--epochs", "0"], "--epochs"),
        (["--partial"], "--partial goes with --weights"),
        (["--val", "x.npz", "--val-split", "0.2"], "not both"),
    ]:
        refused([*train_args(files), *extra], capsys, tmp_path, 2, phrase)


@pytest.mark.slow
def test_digits_recipe_reaches_97_percent_validation_accuracy():
    """The README's run: specs/digits.cnn on scikit-learn's digits, 15 epochs of SGD."""
    require("sklearn")

    net = cnnc.load(SPECS / "digits.cnn")
    history, weights = cnnc.train(
        net, "digits", epochs=15, batch=32, lr=0.05, momentum=0.9, schedule="cosine"
    )
    assert history[-1]["val_accuracy"] >= 0.97
    metrics = cnnc.evaluate(net, weights, "digits")
    assert metrics["accuracy"] == history[-1]["val_accuracy"]
    assert metrics["samples"] == 360 and metrics["top5"] >= metrics["accuracy"]
