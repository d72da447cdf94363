"""What a new user meets first (issue 21, section 5): a first screen that fits, help that says
what each flag does and its default, waits that say what they wait for, an API that takes the
obvious call."""

from __future__ import annotations

import argparse
import re

from cnnc.cli import DEFAULT_CONV, build_parser, main
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
