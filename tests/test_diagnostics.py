"""One test per kind of diagnostic: the message, the line and the column."""

from __future__ import annotations

import pytest

import cnnc


def errors(text: str, **kw):
    try:
        cnnc.load_all(text, **kw)
    except cnnc.SpecError as exc:
        return exc.diagnostics
    pytest.fail("expected an error")


def single(text: str, **kw):
    diags = errors(text, **kw)
    assert len(diags) == 1, [d.format() for d in diags]
    return diags[0]


def net(body: str, inputs: str = "x: 3x32x32") -> str:
    return f"network n({inputs}) {{\n{body}\n}}\n"


CASES = [
    # (name, spec, line, column, message fragment, hint fragment)
    (
        "syntax_missing_pipe",
        net("  y = x | conv(8, k=3) relu\n  return y"),
        2,
        24,
        "unexpected 'relu'",
        "separate pipeline stages with '|'",
    ),
    (
        "syntax_unclosed_paren",
        net("  y = x | conv(8, k=3\n  return y"),
        3,
        3,
        "unexpected 'return'",
        "never closed",
    ),
    (
        "syntax_bad_character",
        net("  y = x | conv(8, k=3);\n  return y"),
        2,
        23,
        "unexpected character ';'",
        "no ';'",
    ),
    (
        "syntax_spaced_shape",
        "network n(x: 3 x 32) {\n  return x\n}\n",
        1,
        16,
        "unexpected 'x'",
        "without spaces",
    ),
    (
        "unknown_op",
        net("  return x | cnv(8, k=3)"),
        2,
        14,
        "unknown op or block 'cnv'",
        "did you mean 'conv'",
    ),
    (
        "alias_op",
        net("  return x | linear(8)"),
        2,
        14,
        "unknown op or block 'linear'",
        "did you mean 'fc'",
    ),
    (
        "unknown_name",
        net("  y = x | relu\n  return yy"),
        3,
        10,
        "unknown tensor or parameter 'yy'",
        "did you mean 'y'",
    ),
    ("unknown_keyword", net("  return x | conv(8, kernel=3)"), 2, 22, "no argument 'kernel'", None),
    (
        "missing_argument",
        net("  return x | conv(8)"),
        2,
        14,
        "missing its required argument 'k'",
        "conv(64, k=3)",
    ),
    ("too_many_arguments", net("  return x | relu(1)"), 2, 14, "relu takes at most 0", None),
    (
        "wrong_type",
        net("  return x | conv(8, k=2.5)"),
        2,
        22,
        "'k' must be a positive integer",
        None,
    ),
    (
        "non_positive",
        net("  return x | conv(0, k=3)"),
        2,
        19,
        "'out' must be a positive integer",
        None,
    ),
    (
        "fc_needs_flatten",
        net("  return x | fc(10)"),
        2,
        14,
        "fc needs a vector input, got 3x32x32",
        "insert `flatten` before `fc`",
    ),
    (
        "groups_do_not_divide",
        net("  return x | conv(8, k=3, g=2)"),
        2,
        27,
        "groups must divide the input channels, but 2 does not divide 3",
        None,
    ),
    (
        "kernel_too_big",
        net("  return x | conv(8, k=7)", "x: 3x5x5"),
        2,
        14,
        "does not fit the input 3x5x5",
        None,
    ),
    (
        "same_even_kernel",
        net("  return x | conv(8, k=4, p=same)"),
        2,
        27,
        "p=same needs d*(k-1)",
        "odd kernel",
    ),
    (
        "concat_mismatch",
        net("  a = x | maxpool(k=2)\n  return concat(x, a)"),
        3,
        10,
        "concat needs equal H and W, got 3x32x32, 3x16x16",
        "crop",
    ),
    (
        "add_mismatch",
        net("  a = x | conv(8, k=1)\n  return add(x, a)"),
        3,
        10,
        "add needs identical shapes, got 3x32x32 and 8x32x32",
        "project the shortcut",
    ),
    (
        "shape_assertion",
        net("  y = x | conv(8, k=3) : 8x32x32\n  return y"),
        2,
        26,
        "shape assertion failed: 'y' is 8x30x30, but 8x32x32 was declared",
        None,
    ),
    (
        "bad_input_shape",
        "network n(x: 32x32) {\n  return x\n}\n",
        1,
        14,
        "has 2 dimensions",
        "add the channel count",
    ),
    (
        "repeat_absurd",
        net("  return x | relu * 1000000"),
        2,
        21,
        "repeat count 1,000,000 is absurd",
        None,
    ),
    (
        "division_by_zero",
        "block b(x, c) { return x | conv(c // 0, k=1) }\n" + net("  return x | b(4)"),
        1,
        38,
        "division by zero",
        None,
    ),
    (
        "recursion",
        "block a(x) { return x | a }\n" + net("  return x | a"),
        1,
        25,
        "block 'a' calls itself",
        None,
    ),
    (
        "tensor_arithmetic",
        net("  a = x | relu\n  return a + x"),
        3,
        10,
        "arithmetic needs numbers",
        "add(a, b)",
    ),
    ("no_return", net("  y = x | relu"), 1, 1, "no 'return' statement", None),
    ("after_return", net("  return x\n  y = x | relu"), 3, 3, "never reached", None),
    (
        "duplicate_definition",
        "block b(x) { return x }\nblock b(x) { return x }\n" + net("  return x"),
        2,
        1,
        "'b' is already defined at",
        None,
    ),
    (
        "builtin_name",
        "block conv(x) { return x }\n" + net("  return x"),
        1,
        1,
        "is a built-in op",
        None,
    ),
    (
        "convt_output_padding",
        net("  return x | convt(4, k=3, s=2, op=2)"),
        2,
        33,
        "output padding 2 must be smaller",
        None,
    ),
    (
        "crop_enlarges",
        net("  a = x | maxpool(k=2)\n  return crop(a, x)"),
        3,
        10,
        "crop cannot enlarge",
        "swap the arguments",
    ),
    (
        "pool_padding",
        net("  return x | maxpool(k=2, p=2)"),
        2,
        27,
        "more than half the kernel",
        None,
    ),
    (
        "block_unknown_parameter",
        "block b(x, c) { return x | conv(c, k=1) }\n" + net("  return x | b(cc=3)"),
        3,
        16,
        "'b' has no parameter 'cc'",
        "did you mean 'c'?",
    ),
    (
        "block_missing_argument",
        "block b(x, c) { return x | conv(c, k=1) }\n" + net("  return x | b"),
        3,
        14,
        "'b' is missing its argument 'c'",
        None,
    ),
    ("op_as_value", net("  return concat(x, relu)"), 2, 20, "'relu' is an op, not a value", None),
    # the ops of contract 4.1
    (
        "clamp_without_bounds",
        net("  return x | clamp"),
        2,
        14,
        "clamp needs 'lo', 'hi'",
        "clamp(0, 6)",
    ),
    (
        "clamp_inverted",
        net("  return x | clamp(2, hi=1)"),
        2,
        20,
        "lo (2) is above its hi (1)",
        None,
    ),
    ("slice_out_of_range", net("  return x | slice(1, 5)"), 2, 23, "0 <= start < stop <= 3", None),
    ("shuffle_groups", net("  return x | shuffle(2)"), 2, 22, "2 does not divide 3", None),
    ("groupnorm_groups", net("  return x | groupnorm(2)"), 2, 24, "2 does not divide 3", None),
    (
        "reflect_pad_too_large",
        net("  return x | pad(32, mode=reflect)"),
        2,
        18,
        "reflect padding must be smaller than the input (32x32)",
        "mode=replicate",
    ),
    (
        "pad_bad_amount",
        net("  return x | pad((1, 2, 3))"),
        2,
        18,
        "(top, bottom, left, right)",
        None,
    ),
    ("resize_both", net("  return x | resize(x, size=(4, 4))"), 2, 24, "not both", None),
    ("resize_neither", net("  return x | resize"), 2, 14, "needs a reference tensor", "size=("),
    (
        "mul_mismatch",
        net("  return mul(x, x | maxpool(k=2))"),
        2,
        10,
        "got 3x32x32 and 3x16x16",
        "gap",
    ),
    ("droppath_p", net("  return x | droppath(1.5)"), 2, 23, "must be in [0, 1), got 1.5", None),
    ("negative_repeat", net("  return x | relu * -1"), 2, 21, "non-negative integer", "'* 0'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_diagnostic(case):
    _, text, line, column, message, hint = case
    d = single(text)
    assert d.severity == "error"
    assert message in d.message
    assert (d.location.line, d.location.column) == (line, column), d.format()
    if hint:
        assert hint in (d.hint or "")
    rendered = d.format()
    assert rendered.startswith(f"<string>:{line}:{column}: error: ")
    assert "^" in rendered


def test_several_independent_errors_in_one_run():
    text = net(
        "  a = x | fc(10)\n  b = x | cnv(3)\n  c = a | relu\n  d = x | conv(8, k=99)\n  return x"
    )
    diags = errors(text)
    assert [d.location.line for d in diags] == [2, 3, 5]  # 'c' uses the failed 'a': no cascade


def test_error_in_block_notes_the_call_site():
    text = "block b(x) { return x | fc(3) }\n" + net("  return x | b")
    d = single(text)
    assert (d.location.line, d.location.column) == (1, 25)
    assert any("called at <string>:3:14" in n for n in d.notes)


def test_strict_stride(tmp_path):
    text = net("  return x | conv(8, k=3, s=2)", "x: 3x8x8")
    cnnc.load_all(text)
    d = single(text, strict=True)
    assert "(8 + 2*0 - 3)/2 + 1 = 3.5 is not a whole number" in d.message


def test_layer_limit_turns_into_an_error():
    text = "block b(x) { return x | relu * 10000 }\nblock c(x) { return x | b * 100 }\n" + net(
        "  return x | c"
    )
    d = single(text)
    assert "more than 100,000 layers" in d.message


def test_import_cycle(tmp_path):
    (tmp_path / "a.cnn").write_text('import "b.cnn"\nblock a1(x) { return x }\n')
    (tmp_path / "b.cnn").write_text('import "a.cnn"\nblock b1(x) { return x }\n')
    d = single(tmp_path / "a.cnn")
    assert "import cycle: a.cnn -> b.cnn -> a.cnn" in d.message
    assert d.location.line == 1


def test_missing_import(tmp_path):
    (tmp_path / "a.cnn").write_text('import "nope.cnn"\n')
    d = single(tmp_path / "a.cnn")
    assert "no such file" in d.message and d.location.line == 1


def test_non_utf8(tmp_path):
    path = tmp_path / "bad.cnn"
    path.write_bytes(b"network n(x: 3x8x8) {\n  return x | r\xe9lu\n}\n")
    d = single(path)
    assert "invalid UTF-8 byte 0xe9" in d.message
    assert (d.location.line, d.location.column) == (2, 15)


def test_unreadable_file(tmp_path):
    d = single(tmp_path / "missing.cnn")
    assert "no such file" in d.message


def test_deep_nesting_is_an_error_not_a_crash():
    d = single(net("  return x | conv(" + "(" * 500 + "8" + ")" * 500 + ", k=1)"))
    assert "nested" in d.message


def test_a_network_that_returns_a_number():
    result = cnnc.check("network n(x: 3x4x4) {\n  return 3\n}\n")
    assert not result.ok
    assert "returns 3 as output 'out'; a network returns tensors" in result.diagnostics[0].message
