"""Shape, parameter, MAC and receptive-field rules on the lecture's worked examples."""

from __future__ import annotations

import pytest

import cnnc


def one(body: str, inputs: str = "x: 3x32x32", strict: bool = False):
    return cnnc.load(f"network n({inputs}) {{\n{body}\n}}\n", strict=strict)


def shape_of(stage: str, inputs: str = "x: 3x32x32"):
    return one(f"return x | {stage}", inputs).output_shapes["out"]


def test_ten_5x5x3_filters_have_760_params():
    net = one("return x | conv(10, k=5, p=2)")
    assert net.total_params == 760
    assert net.output_shapes["out"] == (10, 32, 32)


def test_inception_5x5_cost_naive_vs_reduced():
    naive = one("return x | conv(92, k=5, p=same)", "x: 200x32x32")
    reduced = one("return x | conv(16, k=1) | conv(92, k=5, p=same)", "x: 200x32x32")
    assert naive.total_macs == 471_040_000
    assert reduced.total_macs == 40_960_000


def test_depthwise_separable_cost():
    full = one("return x | conv(256, k=5)", "x: 3x12x12")
    separable = one("return x | dwconv(k=5) | conv(256, k=1)", "x: 3x12x12")
    assert full.output_shapes["out"] == (256, 8, 8)
    assert full.total_macs == 1_228_800
    assert separable.total_macs == 53_952


@pytest.mark.parametrize(
    "stage, shape",
    [
        ("conv(8, k=3)", (8, 5, 5)),  # N=7, F=3, S=1: 5
        ("conv(8, k=3, s=2)", (8, 3, 3)),  # S=2: 3
        ("conv(8, k=3, s=3)", (8, 2, 2)),  # S=3: floor(2.33) + ... = 2
        ("conv(8, k=3, p=same)", (8, 7, 7)),
        ("conv(8, k=3, p=valid)", (8, 5, 5)),
        ("conv(8, k=3, d=2)", (8, 3, 3)),  # dilated extent 5
        ("conv(8, k=(1, 3), p=(0, 1))", (8, 7, 7)),
        ("conv(8, k=3, s=(1, 2))", (8, 5, 3)),
        ("conv(8, k=3, s=2, p=same)", (8, 4, 4)),  # same with stride: ceil(7/2)
        ("maxpool(k=2)", (3, 3, 3)),
        ("maxpool(k=2, ceil=true)", (3, 4, 4)),
        ("maxpool(k=3, s=2, p=1)", (3, 4, 4)),
        ("avgpool(k=3, s=1, p=same)", (3, 7, 7)),
        ("convt(4, k=3, s=2)", (4, 15, 15)),
        ("convt(4, k=3, s=2, p=1, op=1)", (4, 14, 14)),
        ("upsample(3)", (3, 21, 21)),
        ("upsample((2, 1), mode=bilinear)", (3, 14, 7)),
        ("gap", (3, 1, 1)),
        ("flatten", (147,)),
    ],
)
def test_output_shape_rules(stage, shape):
    assert shape_of(stage, "x: 3x7x7") == shape


def test_64x64_same_stride_2_gives_32():
    """The slide: 3x3 conv, same padding, stride 2 on 64x64 -> floor(32.5) = 32."""
    assert shape_of("conv(8, k=3, s=2, p=1)", "x: 3x64x64") == (8, 32, 32)


def test_transposed_conv_examples_from_lecture():
    assert shape_of("convt(1, k=3, s=2, p=1)", "x: 1x4x4") == (1, 7, 7)
    assert shape_of("convt(1, k=3, s=2, p=1)", "x: 1x3x3") == (1, 5, 5)


def test_groups_params_and_macs():
    net = one("return x | conv(64, k=3, p=1, g=4, bias=false)", "x: 32x8x8")
    assert net.total_params == 64 * 8 * 9
    assert net.total_macs == 64 * 8 * 8 * 8 * 9


def test_convt_params_and_macs():
    net = one("return x | convt(16, k=2, s=2)", "x: 32x8x8")
    assert net.layers[0].weights == {"weight": (32, 16, 2, 2), "bias": (16,)}
    assert net.total_params == 32 * 16 * 4 + 16
    assert net.total_macs == 32 * 8 * 8 * 16 * 4


def test_bn_params_are_weight_and_bias_only():
    net = one("return x | bn")
    assert net.total_params == 6
    assert net.layers[0].buffers == {"running_mean": (3,), "running_var": (3,)}


def test_fc_params_and_macs():
    net = one("return x | flatten | fc(10)", "x: 2x3x4")
    assert net.total_params == 24 * 10 + 10
    assert net.total_macs == 240


def test_activation_memory_is_float32_outputs():
    net = one("return x | conv(4, k=1) | relu", "x: 3x8x8")
    assert [layer.memory for layer in net.layers] == [4 * 64 * 4, 4 * 64 * 4]
    assert net.activation_memory == 2048


def test_receptive_field_5x5_from_two_3x3():
    net = one("y = x | conv(4, k=3) | conv(4, k=3)\nreturn y", "x: 1x7x7")
    assert [layer.rf.size for layer in net.layers] == [(3, 3), (5, 5)]


def test_receptive_field_takes_largest_path_through_add_and_concat():
    net = one(
        "a = x | conv(4, k=3, p=same)\nb = x | conv(4, k=7, p=same)\n"
        "return add(a, b), concat(a, b)",
        "x: 1x16x16",
    )
    assert net.outputs["out1"].rf.size == (7, 7)
    assert net.outputs["out2"].rf.size == (7, 7)


def test_receptive_field_counts_stride_and_dilation():
    net = one("return x | conv(4, k=3, s=2) | conv(4, k=3, d=2)", "x: 1x32x32")
    first, second = net.layers
    assert first.rf.size == (3, 3) and first.rf.jump == (2, 2)
    assert second.rf.size == (3 + 4 * 2, 3 + 4 * 2)


def test_strict_rejects_non_tiling_stride():
    one("return x | conv(8, k=3, s=3)", "x: 3x7x7")
    with pytest.raises(cnnc.SpecError, match="not a whole number"):
        one("return x | conv(8, k=3, s=3)", "x: 3x7x7", strict=True)


def test_stable_layer_names():
    net = one("a = x | conv(4, k=3) | relu | conv(4, k=1) | relu\nreturn a")
    assert [layer.name for layer in net.layers] == ["a.conv1", "a.relu1", "a.conv2", "a.relu2"]


def test_block_layers_are_prefixed_by_their_instance():
    net = cnnc.load(
        "block cr(x, c) { return x | conv(c, k=1) | relu }\n"
        "network n(x: 3x8x8) {\n  y = x | cr(4) * 2\n  return y\n}\n"
    )
    assert [layer.name for layer in net.layers] == [
        "y.cr1/out.conv",
        "y.cr1/out.relu",
        "y.cr2/out.conv",
        "y.cr2/out.relu",
    ]
    assert [i.name for i in net.layers[2].block_path] == ["y.cr2"]


def test_rebinding_keeps_names_unique():
    net = one("x = x | relu\nx = x | relu\nreturn x")
    assert [layer.name for layer in net.layers] == ["x.relu", "x.relu_2"]
