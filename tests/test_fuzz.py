"""Property-based fuzzing: any text gives a clean result or a clean SpecError, nothing else."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnnc

SEEDS = [p.read_text() for p in sorted((Path(__file__).parent.parent / "specs").glob("*.cnn"))]
TOKENS = [
    "x",
    "y",
    "|",
    "(",
    ")",
    ",",
    "=",
    ":",
    "*",
    "//",
    "+",
    "-",
    "3",
    "64",
    "0",
    "-1",
    "3x32x32",
    "k=3",
    "s=2",
    "p=same",
    "conv",
    "fc",
    "relu",
    "concat",
    "add",
    "crop",
    "maxpool",
    "convt",
    "upsample",
    "flatten",
    "block",
    "network",
    "return",
    "import",
    "\n",
    " ",
    "{",
    "}",
    "#",
    '"',
    "1e9",
    "99999999999",
    "true",
    "(3, 3)",
    "b",
    "*1000",
]


def check_cleanly(text: str):
    try:
        result = cnnc.check(text if "\n" in text or "{" in text else text + "\n{")
    except cnnc.SpecError as exc:
        assert exc.diagnostics and all(d.message for d in exc.diagnostics)
        for d in exc.diagnostics:
            d.format()
        return
    for d in result.diagnostics:
        assert d.location is None or d.location.line >= 1
        d.format()
    for network in result.networks:
        network.to_json()
        network.summary()


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_library_specs(seed, data):
    text = seed
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        i = data.draw(st.integers(0, len(text)))
        j = min(len(text), i + data.draw(st.integers(0, 12)))
        token = data.draw(st.sampled_from(TOKENS))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + token + text[i:]
        elif op == "replace":
            text = text[:i] + token + text[j:]
        else:
            text = text[:i] + text[i:j] * 3 + text[j:]
    check_cleanly(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_random_token_soup(tokens):
    check_cleanly("network n(x: 3x16x16) {\n" + " ".join(tokens) + "\n}\n")


@FUZZ
@given(st.text(max_size=200))
def test_random_text(text):
    check_cleanly(text)


@FUZZ
@given(
    st.sampled_from(
        [
            "conv",
            "maxpool",
            "avgpool",
            "convt",
            "dwconv",
            "upsample",
            "fc",
            "bn",
            "lrn",
            "dropout",
            "leaky_relu",
            "crop",
            "concat",
            "add",
            "softmax",
        ]
    ),
    st.lists(
        st.sampled_from(
            [
                "-3",
                "0",
                "1",
                "2",
                "5",
                "2.5",
                "true",
                "same",
                "valid",
                "(0, 2)",
                "(1, 1, 1)",
                "bilinear",
                "x",
                "k=3",
                "s=0",
                "p=9",
                "d=2",
                "g=4",
                "op=1",
                "ceil=true",
                "scale=3",
            ]
        ),
        max_size=5,
    ),
    st.sampled_from(["4x9x7", "1x1x1", "12", "8x2x2"]),
)
def test_random_op_arguments(op, args, shape):
    check_cleanly(f"network n(x: {shape}) {{\n  return x | {op}({', '.join(args)})\n}}\n")
