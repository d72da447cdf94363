"""Bad input that used to end in an internal error or lost work (issue 21, section 4): each is
now a clear message with exit status 1 or 2, and in a folder run one named bad file while the
others go on. Test names carry the item's number."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from onnx_helpers import assert_close, onnx, ort_run, random_inputs

import cnnc
from cnnc.cli import main
from cnnc.compiler import UsageError
from conftest import ROOT, SPECS, require

LENET = str(SPECS / "lenet5.cnn")


def _clean(err: str):
    assert "internal error" not in err and "Traceback" not in err, err


# ---- 1. export of every spec family from the command line ------------------------------------

# (spec, options): the smallest network of each family, or a small --set value
FAMILIES = [
    ("atrous.cnn", ["--network", "context_module"]),
    ("cifar_resnet.cnn", ["--set", "n=1"]),
    ("digits.cnn", []),
    ("densenet.cnn", ["--network", "densenet121"]),
    ("efficientnet.cnn", ["--network", "mbconv_se"]),
    ("googlenet.cnn", ["--network", "inception_3a"]),
    ("lenet5.cnn", []),
    ("mnasnet.cnn", ["--network", "mnasnet0_5"]),
    ("mobilenet.cnn", ["--network", "mobilenet_v2"]),  # relu6: the issue's own case
    ("mobilenet_segmentation.cnn", ["--network", "lraspp_mobilenet_v3_large"]),
    ("regnet.cnn", ["--network", "regnet_x_400mf"]),
    ("shufflenet.cnn", ["--network", "shufflenet_v2_x0_5"]),
    ("squeezenet.cnn", ["--network", "squeezenet1_1"]),
    ("superres.cnn", ["--network", "srcnn"]),
]
# families with no network under ~10 M weights: seconds each to draw, check and serialise
HEAVY_FAMILIES = [
    ("alexnet.cnn", ["--network", "alexnet"]),
    ("convnext.cnn", ["--network", "convnext_tiny"]),
    ("inception.cnn", []),
    ("multiscale_seg.cnn", []),
    ("resnet.cnn", ["--network", "resnet18"]),
    ("segmentation.cnn", ["--network", "fcn_resnet50"]),
    ("unet.cnn", []),
    ("vgg.cnn", ["--network", "vgg11"]),
]
RUN_IN_ORT = {"cifar_resnet.cnn", "efficientnet.cnn", "lenet5.cnn", "superres.cnn"}


def test_1_every_spec_family_is_listed():
    listed = {spec for spec, _ in FAMILIES + HEAVY_FAMILIES}
    assert listed == {p.name for p in SPECS.glob("*.cnn")}


def _export_family(spec, options, tmp_path, capsys):
    onnx()
    out = tmp_path / "net.onnx"
    net = cnnc.load(
        SPECS / spec,
        options[1] if options[:1] == ["--network"] else None,
        params=dict(o.split("=") for o in options[1:] if options[:1] == ["--set"]),
    )
    rc = main(["export", str(SPECS / spec), *options, "-o", str(out), "--seed", "3"])
    captured = capsys.readouterr()
    _clean(captured.err)
    assert rc == 0, captured.err
    assert f"wrote {out}: network {net.name}, opset 17" in captured.out
    model = onnx().load(str(out))
    assert [i.name for i in model.graph.input] == list(net.inputs)
    assert [o.name for o in model.graph.output] == list(net.outputs)
    if spec in RUN_IN_ORT:  # cheap enough to run: ONNX Runtime agrees with cnnc
        x = random_inputs(net, batch=1)
        assert_close(cnnc.run(net, x, seed=3), ort_run(out.read_bytes(), x), spec)


@pytest.mark.parametrize("spec, options", FAMILIES, ids=[s for s, _ in FAMILIES])
def test_1_export_one_network_per_spec_family(spec, options, tmp_path, capsys):
    _export_family(spec, options, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("spec, options", HEAVY_FAMILIES, ids=[s for s, _ in HEAVY_FAMILIES])
def test_1_export_the_heavy_spec_families(spec, options, tmp_path, capsys):
    _export_family(spec, options, tmp_path, capsys)


def test_1_clamp_and_relu6_export_and_agree_with_onnx_runtime(tmp_path, capsys):
    spec = tmp_path / "clip.cnn"
    spec.write_text(
        "network clip(x: 3x6x6) {\n"
        "    return x | conv(4, k=3) | relu6 | clamp(lo=-0.5) | clamp(hi=0.25) | clamp(-1, 1)\n"
        "}\n"
    )
    out = tmp_path / "clip.onnx"
    assert main(["export", str(spec), "-o", str(out)]) == 0
    assert "112 weights" in capsys.readouterr().out  # 4x3x3x3 + 4; the clip bounds are not
    net = cnnc.load(spec)
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32) * 4
    np.testing.assert_allclose(
        cnnc.run(net, {"x": x}, seed=0)["out"],
        ort_run(out.read_bytes(), {"x": x})["out"],
        1e-4,
        1e-5,
    )


# ---- 2, 3. images too large to decode ---------------------------------------------------------


def _blank_png(path: Path, width: int, height: int, mode: str = "L"):
    """A valid all-black PNG of any size, compressed row by row (never the whole image in
    memory): a 20000x20000 one is 400 KB on disk and 400 MB decoded."""
    channels = {"L": 1, "RGB": 3}[mode]
    colour = {"L": 0, "RGB": 2}[mode]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    packer = zlib.compressobj(9)
    row = bytes(1 + width * channels)
    parts = [packer.compress(row) for _ in range(height)] + [packer.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def no_dask(monkeypatch):
    """Folder runs in this process (the same per-file code runs on Dask workers)."""
    from cnnc.jobs import cluster

    monkeypatch.setattr(cluster, "available", lambda: False)


@pytest.fixture
def decodes(monkeypatch):
    """The sizes of the images Pillow decodes."""
    require("PIL")
    from PIL import ImageFile

    sizes = []
    real = ImageFile.ImageFile.load

    def load(self):
        sizes.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return sizes


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    _blank_png(path, 20000, 20000)  # over Pillow's own limit (2 x 89,478,485 pixels)
    return path


def test_2_an_image_over_pillows_limit_is_a_named_error(bomb, decodes, capsys):
    assert main(["run", LENET, "--input", str(bomb)]) == 1
    err = capsys.readouterr().err
    _clean(err)
    assert f"cannot read image '{bomb}': too large to decode safely" in err, err
    assert decodes == []


def test_2_in_a_folder_run_it_is_one_bad_file_and_the_others_go_on(
    bomb, no_dask, decodes, tmp_path, capsys
):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(bomb.read_bytes())
    Image.new("L", (40, 40), 128).save(folder / "good.png")
    np.save(folder / "good2.npy", np.zeros((1, 32, 32), np.float32))
    out = tmp_path / "out"
    assert main(["run", LENET, "--input", str(folder), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    _clean(captured.err)
    assert "bomb.png" in captured.err and "ran 2 of 3 inputs" in captured.out, captured
    assert sorted(p.name for p in out.iterdir()) == ["good.npy", "good2.npy"]
    assert (20000, 20000) not in decodes


@pytest.fixture(scope="module")
def big_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.png"
    _blank_png(path, 13000, 13000)
    return path


def test_3_an_image_of_the_wrong_size_is_refused_from_its_header(big_png, decodes, capsys):
    spec = SPECS / "superres.cnn"
    assert main(["run", str(spec), "--network", "srcnn", "--input", str(big_png)]) == 1
    err = capsys.readouterr().err
    _clean(err)
    assert "is 13000x13000 pixels" in err and "expects 33x33" in err
    assert "warning" not in err  # Pillow's decompression-bomb warning is not passed on
    assert decodes == []  # refused from the header: nothing decoded


def test_3_folder_runs_refuse_images_far_larger_than_the_input(
    big_png, no_dask, decodes, tmp_path, capsys
):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "big.png").write_bytes(big_png.read_bytes())
    Image.new("L", (300, 200), 50).save(folder / "photo.png")  # resized to 32x32
    out = tmp_path / "out"
    assert main(["run", LENET, "--input", str(folder), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    _clean(captured.err)
    assert "big.png" in captured.err and "13000x13000" in captured.err
    assert "ran 1 of 2 inputs" in captured.out
    assert (out / "photo.npy").exists() and not (out / "big.npy").exists()
    assert (13000, 13000) not in decodes and (300, 200) in decodes


def test_3_large_jpegs_are_decoded_at_a_reduced_scale(no_dask, decodes, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (5000, 5000), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "huge.jpg", quality=50)  # 25 M pixels
    out = tmp_path / "out"
    assert main(["run", LENET, "--input", str(folder), "--out", str(out)]) == 0
    capsys.readouterr()
    assert np.load(out / "huge.npy").shape == (1, 10)
    assert decodes and max(w * h for w, h in decodes) <= 1000 * 1000  # JPEG's 1/8 scale


# ---- 4. a folder run writing into its input folder --------------------------------------------


def test_4_out_equal_to_input_is_refused_up_front(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((1, 32, 32), np.float32))
    (tmp_path / "link").symlink_to(folder)
    for out in (str(folder), f"{folder}/", f"{folder}/.", str(tmp_path / "link")):
        assert main(["run", LENET, "--input", str(folder), "--out", out]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "input" in err and "its own outputs" in err, err
    assert [p.name for p in folder.iterdir()] == ["a.npy"]
    # a glob whose files lie in the output folder
    pattern = str(folder / "*.npy")
    assert main(["run", LENET, "--input", pattern, "--out", str(folder)]) == 2
    # a recursive glob that would find the outputs on the next run
    pattern = str(tmp_path / "**" / "*.npy")
    assert main(["run", LENET, "--input", pattern, "--out", str(folder / "sub")]) == 2
    assert [p.name for p in folder.iterdir()] == ["a.npy"]


# ---- 5. hostile ONNX files --------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=(), name="g"):
    h = onnx().helper
    graph = h.make_graph(nodes, name, inputs, outputs, list(inits))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def _value(name, shape):
    return onnx().helper.make_tensor_value_info(name, 1, shape)


def _import(tmp_path, model, *extra) -> tuple[int, Path]:
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    rc = main(["import", str(path), *extra])
    return rc, path


def _hostile(kind: str):
    h, nh = onnx().helper, onnx().numpy_helper
    x = [_value("x", ["N", 3, 8, 8])]
    weight = nh.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    if kind == "short raw_data":
        short = onnx().TensorProto(name="w", data_type=1, dims=[4, 3, 3, 3], raw_data=bytes(16))
        return _model([h.make_node("Conv", ["x", "w"], ["y"])], x, [_value("y", None)], [short])
    if kind == "cycle":
        nodes = [
            h.make_node("Add", ["x", "b"], ["a"], name="add"),
            h.make_node("Relu", ["a"], ["b"], name="relu"),
        ]
        return _model(nodes, x, [_value("b", None)])
    if kind == "undefined input":
        return _model([h.make_node("Add", ["x", "ghost"], ["y"])], x, [_value("y", None)])
    if kind == "NaN scales":
        scales = nh.from_array(np.array([1, 1, np.nan, 2], np.float32), "scales")
        node = h.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
        return _model([node], x, [_value("y", None)], [scales])
    if kind == "zero strides":
        node = h.make_node("Conv", ["x", "w"], ["y"], strides=[0, 0], name="conv0")
        return _model([node], x, [_value("y", None)], [weight])
    if kind == "zero group":
        node = h.make_node("Conv", ["x", "w"], ["y"], group=0, name="conv0")
        return _model([node], x, [_value("y", None)], [weight])
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("short raw_data", "initializer 'w' holds 16 bytes; its dims (4, 3, 3, 3) need 432"),
        ("cycle", "the graph has a cycle"),
        ("undefined input", "'ghost', which no node, input or initializer defines"),
        ("NaN scales", "scales [nan, 2.0]"),
        ("zero strides", "strides must be at least 1, got [0, 0]"),
        ("zero group", "group must be at least 1"),
    ],
)
def test_5_hostile_onnx_files_are_clear_errors(kind, message, tmp_path, capsys):
    out, weights = tmp_path / "m.cnn", tmp_path / "m.npz"
    rc, _ = _import(tmp_path, _hostile(kind), "-o", str(out), "--weights-out", str(weights))
    err = capsys.readouterr().err
    _clean(err)
    assert rc == 1 and message in err, err
    assert not out.exists() and not weights.exists()


@pytest.mark.parametrize("keyword", ["network", "block", "return", "import", "true", "relu"])
def test_5_tensors_named_like_keywords_are_renamed(keyword, tmp_path, capsys):
    h = onnx().helper
    nodes = [
        h.make_node("Relu", [keyword], ["hidden"], name=keyword),
        h.make_node("Sigmoid", ["hidden"], [f"{keyword}_"], name="s"),
    ]
    model = _model(
        nodes, [_value(keyword, ["N", 3, 4, 4])], [_value(f"{keyword}_", None)], name=keyword
    )
    out = tmp_path / "k.cnn"
    rc, path = _import(tmp_path, model, "-o", str(out))
    err = capsys.readouterr().err
    _clean(err)
    assert rc == 0, err
    assert main(["check", str(out)]) == 0  # the spec written parses and checks
    capsys.readouterr()
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    net = cnnc.load(out)
    (name,) = net.inputs
    got = cnnc.run(net, {name: x})
    want = ort_run(path.read_bytes(), {keyword: x})[f"{keyword}_"]
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-6)


def test_5_nothing_is_written_unless_both_outputs_can_be(tmp_path, capsys):
    h = onnx().helper
    model = _model(
        [h.make_node("Relu", ["x"], ["y"])], [_value("x", ["N", 3, 4, 4])], [_value("y", None)]
    )
    out = tmp_path / "m.cnn"
    blocked = tmp_path / "w.npz"
    blocked.mkdir()  # a folder where the weights should go: not writable as a file
    rc, _ = _import(tmp_path, model, "-o", str(out), "--weights-out", str(blocked))
    err = capsys.readouterr().err
    _clean(err)
    assert rc in (1, 2) and "w.npz" in err, err
    assert not out.exists()
    if os.geteuid() != 0:  # permission bits bind everyone but root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        rc, _ = _import(tmp_path, model, "-o", str(out), "--weights-out", str(locked / "w.npz"))
        assert rc == 1 and not out.exists()


def test_5_a_failure_staging_the_second_file_replaces_nothing(tmp_path, monkeypatch):
    """Both files are staged beside their targets before either is renamed into place: a
    failure staging the second (a full disk) leaves the first as it was, and no temporary."""
    from cnnc.compiler import ResourceError, error, files

    out, weights = tmp_path / "m.cnn", tmp_path / "m.npz"
    out.write_text("keep me")
    real = files._stage

    def stage(path, data):
        if path.suffix == ".npz":
            raise ResourceError(error(f"cannot write '{path}': No space left on device"))
        return real(path, data)

    monkeypatch.setattr(files, "_stage", stage)
    with pytest.raises(ResourceError, match="No space left"):
        files.write_all_atomically({out: b"new spec", weights: b"new weights"})
    assert out.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["m.cnn"]


# ---- 6. negative seeds --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "export"])
def test_6_a_negative_seed_is_a_usage_error(command, tmp_path, capsys):
    extra = ["-o", str(tmp_path / "l.onnx")] if command == "export" else []
    with pytest.raises(SystemExit) as exit_info:
        main([command, LENET, "--seed", "-1", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "non-negative" in err, err
    with pytest.raises(UsageError, match="seed"):
        cnnc.run(cnnc.load(LENET), seed=-1)


# ---- 7. sweeps without Dask -----------------------------------------------------------------


SWEEP_SPEC = """network net(x: 3x8x8, width=4) {
    return x | conv(width, k=3) | relu | gap | flatten | fc(2)
}
"""

WITHOUT_DASK = """
import sys
sys.modules["dask"] = None          # import dask / distributed now raise ImportError
sys.modules["distributed"] = None
from cnnc.cli import main
from cnnc.compiler import UsageError
raise SystemExit(main(sys.argv[1:]))
"""


def test_7_a_sweep_without_dask_runs_in_this_process(tmp_path):
    spec = tmp_path / "s.cnn"
    spec.write_text(SWEEP_SPEC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_DASK, "sweep", str(spec), "--grid", "width=4,8", "--csv"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    _clean(done.stderr)
    assert done.returncode == 0, done.stderr
    assert "Dask is not installed; running in this process" in done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].startswith("width,params") and [r.split(",")[0] for r in rows[1:]] == ["4", "8"]


# ---- 11. negative variances ---------------------------------------------------------------------


BN = "network norm(x: 3x4x4) {\n    return x | conv(4, k=1) | bn | relu\n}\n"


def test_11_a_negative_running_var_is_refused_naming_its_key(tmp_path, capsys):
    spec = tmp_path / "bn.cnn"
    spec.write_text(BN)
    net = cnnc.load(spec)
    from cnnc.runtime import weights as weights_io

    weights = weights_io.initialise(net, 0)
    weights["out.bn.running_var"] = np.array([1, 1, -2, 1], np.float32)
    np.savez(tmp_path / "w.npz", **weights)
    assert main(["run", str(spec), "--weights", str(tmp_path / "w.npz")]) == 1
    err = capsys.readouterr().err
    _clean(err)
    assert "'out.bn.running_var'" in err and "negative" in err and "-2" in err, err
    assert "invalid value" not in err  # NumPy's warning
    with pytest.raises(cnnc.DataError, match="out.bn.running_var"):
        cnnc.run(net, weights=weights)
    out = tmp_path / "bn.onnx"
    assert main(["export", str(spec), "--weights", str(tmp_path / "w.npz"), "-o", str(out)]) == 1
    assert not out.exists()


# ---- 14. messages that sent the user the wrong way -------------------------------------------


def test_14_a_missing_input_folder_is_named_before_the_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", LENET, "--input", "nodir/", "--out", "o10"]) == 1
    err = capsys.readouterr().err
    assert "--input 'nodir/': no such folder" in err and ".npy" not in err, err
    assert main(["run", LENET, "--input", "nofile.npy", "--out", "o10"]) == 1
    err = capsys.readouterr().err
    assert "cannot read input 'nofile.npy': no such file" in err and "use a" not in err, err


def test_14_an_empty_onnx_file_says_so(tmp_path, capsys):
    onnx()
    empty = tmp_path / "e.onnx"
    empty.write_bytes(b"")
    assert main(["import", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "is empty" in err and "opset None" not in err, err
    no_opset = onnx().helper.make_model(onnx().helper.make_graph([], "g", [], []))
    del no_opset.opset_import[:]
    (tmp_path / "n.onnx").write_bytes(no_opset.SerializeToString())
    assert main(["import", str(tmp_path / "n.onnx")]) == 1
    err = capsys.readouterr().err
    assert "declares no ONNX opset" in err and "None" not in err, err


def test_14_an_npy_that_is_not_one_does_not_suggest_allow_pickle(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("hello\n")
    os.symlink(tmp_path / "text.txt", tmp_path / "t.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, message in (
        ("t.npy", "not a .npy file (it does not start with NumPy's header)"),
        ("objects.npy", "holds Python objects"),
    ):
        assert main(["run", LENET, "--input", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert message in err and "allow_pickle" not in err and "pickle.load" not in err, err


def test_14_a_huge_set_value_is_one_error_saying_it_is_too_large(capsys):
    spec = str(SPECS / "cifar_resnet.cnn")
    assert main(["check", spec, "--set", "n=99999999999999999999999"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1, err
    assert "too large" in err and "bad repeat count" not in err, err


def test_14_weight_keys_in_the_wrong_case_get_a_short_list_and_a_hint(tmp_path, capsys):
    net = cnnc.load(SPECS / "resnet.cnn", "resnet18")
    from cnnc.runtime import weights as weights_io

    shapes = weights_io.expected(net)
    np.savez(tmp_path / "w.npz", **{k.upper(): np.zeros(s, np.float32) for k, s in shapes.items()})
    args = ["run", str(SPECS / "resnet.cnn"), "--network", "resnet18"]
    assert main([*args, "--weights", str(tmp_path / "w.npz")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 12, err
    assert f"{len(shapes)} keys differ from the network's only in case" in err, err
    first = next(iter(shapes))
    assert f"did you mean '{first}' for '{first.upper()}'?" in err, err
    # other mismatches: a few named, the rest counted
    wrong = {f"layer{i}.weight": np.zeros(1, np.float32) for i in range(40)}
    np.savez(tmp_path / "w2.npz", **wrong)
    assert main([*args, "--weights", str(tmp_path / "w2.npz")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 16, err
    assert f"and {len(shapes) - 5} more missing" in err and "and 35 more unexpected" in err, err
