"""The lecture's worked examples, computed by cnnc with the slides' own kernels."""

from __future__ import annotations

import numpy as np

import cnnc


def run1(spec: str, image, weights=None):
    net = cnnc.load(spec)
    x = np.asarray(image, np.float32)[None, None]
    return cnnc.run(net, {"x": x}, weights)["out"][0, 0]


def test_max_and_average_pooling_4x4():
    image = [[3, 1, 3, 5], [6, 0, 7, 9], [3, 2, 1, 4], [0, 2, 4, 3]]
    spec = "network p(x: 1x4x4) {{\n  return x | {}(k=2)\n}}\n"
    assert run1(spec.format("maxpool"), image).tolist() == [[6, 9], [3, 4]]
    assert run1(spec.format("avgpool"), image).tolist() == [[2.5, 6], [1.75, 3]]
    other = [[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]
    assert run1(spec.format("maxpool"), other).tolist() == [[6, 8], [3, 4]]


def test_strided_filtering_7x7():
    image = np.zeros((7, 7))
    image[2, 2:5] = [5, 10, 5]
    image[3, 2:5] = [10, 10, 5]
    image[4, 2:4] = [5, 5]
    plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.float32) / 5
    spec = "network f(x: 1x7x7) {\n  return x | conv(1, k=3, s=2, bias=false)\n}\n"
    out = run1(spec, image, {"out.conv.weight": plus[None, None]})
    np.testing.assert_allclose(out, [[0, 2, 0], [2, 8, 1], [0, 1, 0]], atol=1e-6)


def test_sharpen_kernel_on_5x5_image():
    image = np.array(
        [[-5, 3, 2, -5, 3], [4, 3, 2, 1, -3], [1, 0, 3, 3, 5], [-2, 0, 1, 4, 4], [5, 6, 7, 9, -1]],
        np.float32,
    )
    sharpen = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
    spec = "network s(x: 1x5x5) {\n  return x | conv(1, k=3, bias=false)\n}\n"
    out = run1(spec, image, {"out.conv.weight": sharpen[None, None]})
    assert out[0, 0] == 6  # 5*3 - 3 - 2 - 0 - 4, as on the slide
    assert out[1, 0] == -7  # 5*0 - 3 - 1 - 3 - 0
    assert out[2, 1] == -9  # 5*1 - 3 - 0 - 4 - 7
    expected = [
        [
            sum(image[i + a, j + b] * sharpen[a, b] for a in range(3) for b in range(3))
            for j in range(3)
        ]
        for i in range(3)
    ]
    np.testing.assert_allclose(out, expected)


def test_1x1_convolution_that_doubles():
    image = np.array(
        [[-5, 3, 2, -5, 3], [4, 3, 2, 1, -3], [1, 0, 3, 3, 5], [-2, 0, 1, 4, 4], [5, 6, 7, 9, -1]],
        np.float32,
    )
    spec = "network d(x: 1x5x5) {\n  return x | conv(1, k=1, bias=false)\n}\n"
    out = run1(spec, image, {"out.conv.weight": np.full((1, 1, 1, 1), 2, np.float32)})
    assert out.tolist() == (2 * image).tolist()
    assert out[0].tolist() == [-10, 6, 4, -10, 6]


BILINEAR = np.array([[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]], np.float32)


def test_transposed_conv_4x4_to_7x7_is_bilinear_interpolation():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    spec = "network t(x: 1x4x4) {\n  return x | convt(1, k=3, s=2, p=1, bias=false)\n}\n"
    out = run1(spec, image, {"out.convt.weight": BILINEAR[None, None]})
    expected = np.array([[2 * i + 0.5 * j for j in range(7)] for i in range(7)])
    assert out.shape == (7, 7)
    np.testing.assert_allclose(out, expected)
    assert out[0].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert out[6].tolist() == [12, 12.5, 13, 13.5, 14, 14.5, 15]


def test_transposed_conv_3x3_to_5x5():
    image = np.array([[4, 2, 4], [6, 4, 6], [2, 12, 2]], np.float32)
    spec = "network t(x: 1x3x3) {\n  return x | convt(1, k=3, s=2, p=1, bias=false)\n}\n"
    out = run1(spec, image, {"out.convt.weight": BILINEAR[None, None]})
    assert out.tolist() == [
        [4, 3, 2, 3, 4],
        [5, 4, 3, 4, 5],
        [6, 5, 4, 5, 6],
        [4, 6, 8, 6, 4],
        [2, 7, 12, 7, 2],
    ]
