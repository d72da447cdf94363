"""Every spec in specs/ checks cleanly, and its totals match the published numbers."""

from __future__ import annotations

from math import prod

import pytest

import cnnc
from conftest import SPECS

ALL_SPECS = sorted(SPECS.glob("*.cnn"))

# (file, network): (params, MACs or None). torchvision's tables where torchvision has the model.
PUBLISHED = {
    ("resnet.cnn", "resnet18"): (11_689_512, 1_814_073_344),
    ("resnet.cnn", "resnet34"): (21_797_672, 3_663_761_408),
    ("resnet.cnn", "resnet50"): (25_557_032, 4_089_184_256),
    ("resnet.cnn", "resnet152"): (60_192_808, 11_513_626_624),
    ("vgg.cnn", "vgg_a"): (132_863_336, 7_609_090_048),  # torchvision vgg11
    ("vgg.cnn", "vgg_b"): (133_047_848, 11_308_466_176),  # vgg13
    ("vgg.cnn", "vgg_d"): (138_357_544, 15_470_264_320),  # vgg16
    ("vgg.cnn", "vgg_e"): (143_667_240, 19_632_062_464),  # vgg19
    ("alexnet.cnn", "alexnet"): (61_100_840, 714_188_480),
    ("alexnet.cnn", "alexnet_paper"): (60_965_224, None),  # the paper's two-group layout
    ("googlenet.cnn", "googlenet"): (6_624_904, None),
}

# torchvision publishes GFLOPS (really GMACs) rounded to two decimals.
TORCHVISION_GMACS = {
    ("googlenet.cnn", "googlenet"): 1.50,
    ("resnet.cnn", "resnet18"): 1.81,
    ("resnet.cnn", "resnet34"): 3.66,
    ("resnet.cnn", "resnet50"): 4.09,
    ("resnet.cnn", "resnet152"): 11.51,
    ("vgg.cnn", "vgg_d"): 15.47,
    ("alexnet.cnn", "alexnet"): 0.71,
}


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.name)
def test_every_spec_checks_cleanly(path):
    result = cnnc.check(path)
    assert result.ok, "\n".join(d.format() for d in result.diagnostics)
    assert result.networks, f"{path.name} defines no network"
    for net in result.networks:
        # every network of the library learns something, computes something, and no layer
        # has an empty side
        assert net.layers and net.total_params > 0 and net.total_macs > 0, net.name
        empty = [layer.name for layer in net.layers if min(layer.shape, default=1) < 1]
        assert not empty, f"{net.name}: layers with an empty side: {empty[:5]}"


@pytest.mark.parametrize("key", sorted(PUBLISHED), ids=lambda k: k[1])
def test_published_params_and_macs(key):
    net = cnnc.load(SPECS / key[0], network=key[1])
    params, macs = PUBLISHED[key]
    assert net.total_params == params
    if macs is not None:
        assert net.total_macs == macs


@pytest.mark.parametrize("key", sorted(TORCHVISION_GMACS), ids=lambda k: k[1])
def test_torchvision_gflops_column(key):
    net = cnnc.load(SPECS / key[0], network=key[1])
    assert round(net.total_macs / 1e9, 2) == TORCHVISION_GMACS[key]


def test_vgg_table_2_in_millions():
    """The slide's Table 2: A 133, A-LRN 133, B 133, C 134, D 138, E 144."""
    nets = {n.name: n for n in cnnc.load_all(SPECS / "vgg.cnn")}
    millions = [
        round(nets[n].total_params / 1e6)
        for n in ("vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c", "vgg_d", "vgg_e")
    ]
    assert millions == [133, 133, 133, 134, 138, 144]


def test_vgg_check_summary_prints_the_slide_table(capsys):
    from cnnc.cli import main

    assert main(["check", str(SPECS / "vgg.cnn")]) == 0
    out = capsys.readouterr().out
    summary = out[out.rindex("network    input") :]
    for name, m in [
        ("vgg_a ", 133),
        ("vgg_a_lrn", 133),
        ("vgg_b", 133),
        ("vgg_c", 134),
        ("vgg_d", 138),
        ("vgg_e", 144),
    ]:
        row = next(line for line in summary.splitlines() if line.startswith(name))
        assert f" {m} " in row


def test_lenet5_about_60k():
    net = cnnc.load(SPECS / "lenet5.cnn")
    assert net.total_params == 61_706
    assert net.output_shapes == {"out": (10,)}
    assert net.layer("c5.conv").rf.size == (32, 32)


def test_alexnet_paper_shapes():
    net = cnnc.load(SPECS / "alexnet.cnn", network="alexnet_paper")
    assert net.layer("c1.conv").shape == (96, 55, 55)
    assert round(net.total_params / 1e6) == 61  # "60M parameters"


def test_googlenet_paper_parameters():
    """Table 1 of the paper lists about 6.8M weights (biases excluded)."""
    net = cnnc.load(SPECS / "googlenet.cnn", network="googlenet_paper")
    weights = sum(
        prod(layer.weights["weight"]) for layer in net.layers if layer.op in ("conv", "fc")
    )
    assert 6.7e6 < weights < 7.0e6
    assert net.output_shapes["out"] == (1000,)


def test_unet_original_sizes():
    net = cnnc.load(SPECS / "unet.cnn")
    assert net.input_shapes == {"x": (1, 572, 572)}
    assert net.output_shapes == {"out": (2, 388, 388)}
    crops = [layer for layer in net.layers if layer.op == "crop"]
    assert [c.inputs[0].shape[1] for c in crops] == [64, 136, 280, 568]
    assert [c.shape[1] for c in crops] == [56, 104, 200, 392]


def test_multiscale_segmentation_concatenates_five_scales():
    net = cnnc.load(SPECS / "multiscale_seg.cnn")
    concat = next(layer for layer in net.layers if layer.op == "concat")
    assert [i.shape[0] for i in concat.inputs] == [64, 128, 256, 512, 1024]
    assert net.output_shapes["out"] == (21, 256, 256)
    assert net.layers[-1].op == "softmax"


def test_srcnn_weights_without_biases_is_8032():
    net = cnnc.load(SPECS / "superres.cnn", network="srcnn")
    assert (
        net.total_params - sum(layer.weights.get("bias", (0,))[0] for layer in net.layers) == 8032
    )


def test_vdsr_is_twenty_conv_layers_with_residual():
    net = cnnc.load(SPECS / "superres.cnn", network="vdsr")
    assert sum(layer.op == "conv" for layer in net.layers) == 20
    assert net.layers[-1].op == "add"


def test_mobilenet_paper_numbers():
    net = cnnc.load(SPECS / "mobilenet.cnn", network="mobilenet_v1")
    assert round(net.total_params / 1e6, 1) == 4.2
    assert round(net.total_macs / 1e6) == 569


def test_context_module_receptive_field_grows_exponentially():
    net = cnnc.load(SPECS / "atrous.cnn", network="context_module")
    convs = [layer for layer in net.layers if layer.op == "conv"]
    assert [c.rf.size[0] for c in convs] == [3, 5, 9, 17, 33, 65, 67, 67]
