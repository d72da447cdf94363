"""`cnnc check --train` and `cnnc bench --train`: training memory and a timed training step,
as tables and as JSON, and their usage errors."""

from __future__ import annotations

import json

import pytest

from cnnc.cli import main

TINY = "network tiny(x: 2x4x4) {\n  return x | conv(3, k=1) | relu | flatten | fc(5)\n}\n"
#: Per sample, the floats the backward pass reads: the input (conv reads it), relu's output
#: (relu's backward reads only that, not the conv's output) and the flattened vector (fc
#: reads it); not the output, which the loss consumes.
KEPT_FLOATS = 32 + 48 + 48
LEARNED_FLOATS = (3 * 2 + 3) + (5 * 48 + 5)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return str(path)


def check_json(spec, *flags, capsys) -> dict:
    assert main(["check", spec, "--train", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)["networks"][0]["training"]


def test_check_train_json_counts_kept_activations_weights_and_optimizer_state(tiny, capsys):
    sgd = check_json(tiny, "--batch", "3", capsys=capsys)
    adam = check_json(tiny, "--batch", "6", "--optimizer", "adam", capsys=capsys)
    assert sgd["batch"] == 3 and sgd["optimizer"] == "sgd" and adam["optimizer"] == "adam"
    assert sgd["activations_kept"] == 4 * 3 * KEPT_FLOATS
    assert adam["activations_kept"] == 4 * 6 * KEPT_FLOATS
    assert sgd["weights"] == sgd["gradients"] == 4 * LEARNED_FLOATS
    assert sgd["optimizer_state"] == sgd["weights"]
    assert adam["optimizer_state"] == 2 * adam["weights"]
    assert sgd["packed_weights"] == 4 * 3 * 2  # the conv's weight, repacked; fc reads its own
    assert sgd["activations_kept"] <= sgd["activations_live"] <= sgd["activations_peak"]
    assert 2 * sgd["activations_peak"] == adam["activations_peak"]
    parts = ("activations_peak", "weights", "gradients", "optimizer_state", "buffers")
    rest = ("packed_weights", "workspace")
    assert sgd["peak"] == sum(sgd[k] for k in (*parts, *rest))


def test_check_train_table_on_a_library_network(capsys):
    from conftest import SPECS

    spec = str(SPECS / "resnet.cnn")
    assert main(["check", spec, "--network", "resnet18", "--train", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "training    batch 8, optimizer sgd" in out
    for row in ("activations kept", "activations peak", "gradients", "optimizer state", "peak"):
        assert f"\n  {row} " in out, row
    assert "sgd momentum: 1 x weights" in out
    # the plain table is still there, above
    assert out.index("params      ") < out.index("training    ")


def test_check_train_usage_errors(tiny, capsys):
    assert main(["check", tiny, "--batch", "4"]) == 2
    assert "--train" in capsys.readouterr().err
    assert main(["check", tiny, "--train", "--batch", "0"]) == 2
    assert "batch must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["check", tiny, "--train", "--optimizer", "rmsprop"])
    assert info.value.code == 2


def test_bench_train_json_times_every_layer_both_ways(tiny, capsys):
    assert main(["bench", tiny, "--train", "--batch", "2", "--repeat", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"] is True and info["batch"] == 2 and info["repeat"] == 2
    assert info["loss"] == "cross_entropy" and info["device"] == "cpu"
    assert [x["op"] for x in info["layers"]] == ["conv", "act", "flatten", "fc"]
    for x in info["layers"]:
        assert x["forward_ms"] > 0 and x["backward_ms"] > 0, x
        weighted = x["op"] in ("conv", "fc")
        assert (x["forward_gflops"] > 0) == weighted and (x["backward_gflops"] > 0) == weighted
    assert info["forward_ms"] == pytest.approx(sum(x["forward_ms"] for x in info["layers"]))
    assert info["backward_ms"] == pytest.approx(sum(x["backward_ms"] for x in info["layers"]))
    assert info["median_ms"] >= info["min_ms"] > 0 and info["update_ms"] > 0
    assert info["gflops"] > 0 and info["memory"]["activations_kept"] == 4 * 2 * KEPT_FLOATS


def test_bench_train_table_and_mse_for_one_output_value(tmp_path, capsys):
    path = tmp_path / "reg.cnn"
    path.write_text("network reg(x: 3x6x6) {\n  return x | conv(4, k=3) | bn | relu | gap\n}\n")
    assert main(["bench", str(path), "--train", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "training step, batch 1" in out and "loss cross_entropy" in out
    assert "fwd ms" in out and "bwd ms" in out and "bwd GFLOP/s" in out
    for layer in ("conv", "bn", "relu", "gap"):
        assert f"\nout.{layer} " in out, layer
    for line in ("forward ", "backward ", "update ", "step ", "memory "):
        assert f"\n{line}" in out, line
    path.write_text("network one(x: 3x6x6) {\n  return x | conv(1, k=3) | gap\n}\n")
    assert main(["bench", str(path), "--train", "--repeat", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == "mse"


def test_bench_train_usage_errors(tiny, capsys):
    assert main(["bench", tiny, "--train", "--batch", "0"]) == 2
    assert main(["bench", tiny, "--train", "--repeat", "0"]) == 2
