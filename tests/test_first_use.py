"""What a new user meets first (issue 21, section 5): a first screen that fits, help that says
what each flag does and its default, waits that say what they wait for, an API that takes the
obvious call."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import cnnc
from cnnc.cli import build_parser, main
from cnnc.runtime.backends import DEFAULT_CONV
from conftest import ROOT, SPECS


def test_check_of_several_networks_fits_a_screen(capsys):
    assert main(["check", str(SPECS / "resnet.cnn")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) < 25, out
    for name in ("resnet18", "resnet50", "wide_resnet101_2"):
        assert any(line.startswith(f"{name} ") for line in lines)
    assert "--network NAME" in lines[-1] and "--layers" in lines[-1]
    assert "layer1." not in out  # no layer tables unless asked


def test_check_layers_prints_every_table_and_the_summary(capsys):
    assert main(["check", str(SPECS / "resnet.cnn"), "--layers"]) == 0
    out = capsys.readouterr().out
    assert "network resnet152(x: 3x224x224) -> out: 1000" in out
    assert re.search(r"^network +input", out, re.M)  # the summary still ends it
    assert main(["check", str(SPECS / "resnet.cnn"), "--network", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "network resnet18(" in out and "params      11,689,512" in out


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise AssertionError("no subcommands")


def test_every_flag_has_help_and_shows_its_default():
    for name, sub in _subcommands(build_parser()).items():
        help_text = sub.format_help()
        for action in sub._actions:
            assert action.help, f"cnnc {name} {action.option_strings or action.dest}: no help"
        assert "tiling.py" not in help_text, name
    commands = _subcommands(build_parser())
    bench = commands["bench"].format_help()
    assert "(default: 10)" in bench and "(default: cpu)" in bench and "(default: 60.0)" in bench
    assert "(default: 0)" in commands["run"].format_help()  # --seed
    assert "(default: None)" not in " ".join(c.format_help() for c in commands.values())


def test_readme_help_and_code_describe_the_default_convolution_alike():
    from cnnc.runtime.backends.cpu import autotune

    readme = " ".join((ROOT / "README.md").read_text().split())
    assert DEFAULT_CONV in readme
    assert DEFAULT_CONV in " ".join(autotune.default_choice.__doc__.split())
    run_help = " ".join(_subcommands(build_parser())["run"].format_help().split())
    assert DEFAULT_CONV in run_help


def test_the_docs_cite_only_what_the_repository_holds_and_write_outside_it():
    outside = "LANGUAGE" + ".md"  # the team's contract, not part of the repository
    for path in [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.rglob("*.py")]:
        if "tests" not in path.relative_to(ROOT).parts:
            assert outside not in path.read_text(), path
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("$ cnnc")]
    writes = re.compile(r"(?:-o|--output|--out|--plot|--weights-out|--save-weights) (\S+)")
    targets = [m for line in commands for m in writes.findall(line)]
    assert targets and not [t for t in targets if t.startswith(("docs/", "specs/", "tests/"))]


def test_run_takes_a_bare_array_for_a_one_input_network():
    net = cnnc.load(SPECS / "lenet5.cnn")
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(cnnc.run(net, x)["out"], cnnc.run(net, {"x": x})["out"])
    assert cnnc.run(net, x[0])["out"].shape == (1, 10)  # one sample
    two = cnnc.load("network n(a: 3x8x8, b: 3x8x8) {\n    return add(a, b)\n}\n")
    with pytest.raises(cnnc.DataError, match=r"has 2 inputs \(a, b\); pass inputs as a dict"):
        cnnc.run(two, np.zeros((3, 8, 8), np.float32))


@pytest.mark.parametrize(
    "call",
    [
        lambda: cnnc.load(SPECS / "lenet5.cnn", params={"width": 3}),
        lambda: cnnc.load(PARAMS, params={"width": "abc"}),
        lambda: cnnc.run(cnnc.load(SPECS / "unet.cnn"), batch=100_000),
    ],
)
def test_api_errors_do_not_speak_in_command_line_flags(call):
    with pytest.raises(cnnc.CnncError) as info:
        call()
    text = str(info.value)
    assert not re.search(r"--[a-z]", text), text


PARAMS = "network n(x: 3x8x8, width=8) {\n    return x | conv(width, k=3)\n}\n"


def _cnnc(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "cnnc", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_a_run_that_compiles_kernels_says_so_even_after_other_networks_compiled(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    first, second = tmp_path / "first.cnn", tmp_path / "second.cnn"
    first.write_text("network a(x: 3x8x8) {\n    return x | relu\n}\n")
    second.write_text("network b(x: 3x8x8) {\n    return x | maxpool(k=2)\n}\n")
    assert "compiling" in _cnnc("run", str(first), env=env).stderr
    new = _cnnc("run", str(second), env=env)  # the cache holds the first network's kernels
    assert new.returncode == 0
    assert "cnnc: compiling the CPU kernels this network needs" in new.stderr
    again = _cnnc("run", str(second), env=env)
    assert again.returncode == 0 and "compiling" not in again.stderr


def test_measuring_algorithms_says_so_layer_by_layer(tmp_path, capsys, monkeypatch):
    from cnnc.runtime.backends import cpu

    monkeypatch.setattr(cpu, "cache_root", lambda: tmp_path)  # an empty tuning cache
    spec = tmp_path / "wide.cnn"
    spec.write_text(
        "network w(x: 64x56x56) {\n"
        "    y = x | conv(64, k=3, p=1) | relu\n"
        "    return y | conv(32, k=3, p=1) | gap | flatten\n}\n"
    )
    assert main(["run", str(spec), "--tune"]) == 0
    err = capsys.readouterr().err
    assert "cnnc: measuring the fastest algorithm for 2 convolution shapes" in err
    assert re.search(r"^tuning \[#+-*\] 1/2 y\.conv", err, re.M), err
    assert re.search(r"^tuning \[#+\] 2/2 out\.conv", err, re.M), err
    assert main(["run", str(spec), "--tune"]) == 0  # measured once: nothing to say now
    assert "tuning" not in capsys.readouterr().err


QUIET = {"load": 0.4, "cores": 2}
BUSY = {"load": 9.0, "cores": 2}


def test_measurements_say_when_and_at_what_load_and_look_off_when_they_should():
    from cnnc.runtime.backends.cpu.autotune import MAX_AGE_S, looks_off

    now = int(time.time())
    quiet_now = {"measured_at": now, **QUIET}
    assert looks_off({"algorithm": "direct", "a": 1, "b": 1})  # an older cache: no date
    assert not looks_off({"measured_at": now - 60, **QUIET}, quiet_now)
    assert looks_off({"measured_at": now - MAX_AGE_S - 60, **QUIET}, quiet_now)
    assert looks_off({"measured_at": now + 86400, **QUIET}, quiet_now)  # a wrong clock
    assert looks_off({"measured_at": now - 60, **BUSY}, quiet_now)
    assert not looks_off({"measured_at": now - 60, **BUSY}, {"measured_at": now, **BUSY})


def test_choices_measured_on_a_busy_machine_are_measured_again_when_it_is_quiet(
    tmp_path, monkeypatch
):
    from cnnc.runtime.backends.cpu import CpuBackend, autotune

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    load = dict(BUSY)
    monkeypatch.setattr(autotune, "conditions", lambda: {"measured_at": int(time.time()), **load})
    cache = CpuBackend().tune_cache()
    cache.put("a layer", autotune.Choice("direct", 2, 1), 1.0)
    saved = json.loads(cache.path.read_text())["choices"]["a layer"]
    assert saved["load"] == 9.0 and saved["cores"] == 2 and saved["measured_at"] > 0
    again = CpuBackend().tune_cache()
    assert again.busy_shapes(["a layer", "another"]) == ["a layer"]
    assert again.get("a layer", measuring=True) == autotune.Choice("direct", 2, 1)  # still busy
    load.update(QUIET)
    assert again.get("a layer", measuring=True) is None  # quiet now: measure it again
    assert again.get("a layer") == autotune.Choice("direct", 2, 1)  # a run that measures nothing


def test_the_fma_peak_is_measured_again_when_a_quick_recheck_beats_it(tmp_path, monkeypatch):
    from cnnc.runtime.backends.cpu import CpuBackend, autotune, probe

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(autotune, "conditions", lambda: {"measured_at": int(time.time()), **BUSY})
    calls, speed = [], {"now": 100.0}

    def fake_probe(threads, tries=5, iterations=500_000):
        calls.append(iterations)
        return speed["now"]

    monkeypatch.setattr(probe, "fma_peak_gflops", fake_probe)
    first = CpuBackend().peak_measurement()
    assert first["value"] == 100.0 and first["load"] == 9.0 and calls == [500_000]
    assert CpuBackend().peak_gflops() == 100.0 and len(calls) == 2  # a quick recheck only
    assert calls[-1] < 500_000
    speed["now"] = 300.0  # the first measurement shared the cores: the recheck beats it
    assert CpuBackend().peak_gflops() == 300.0 and len(calls) == 4
