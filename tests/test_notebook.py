"""A network in Jupyter: its MIME bundle (drawing, table, one line), without Graphviz, without
IPython imported, ``Network.table()``, and a real notebook executed by a Python kernel."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cnnc
from conftest import ROOT, SPECS, require, require_dot


def test_bundle_holds_the_drawing_the_table_and_one_line():
    require_dot()
    net = cnnc.load(SPECS / "lenet5.cnn")
    bundle = net._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "image/svg+xml"}
    assert bundle["text/plain"] == repr(net) and "\n" not in bundle["text/plain"]
    svg = bundle["image/svg+xml"]
    assert svg.startswith("<svg") and "conv 5x5, 6" in svg and "<?xml" not in svg
    page = bundle["text/html"]
    assert svg in page  # notebooks show the HTML: the drawing is in it, above the table
    assert "<td" in page and "c3.conv" in page and "2,416" in page and "240,000" in page
    assert "61,706 (61.71 k)" in page and "833,040" in page  # totals
    only = net._repr_mimebundle_(include={"text/plain"})
    assert set(only) == {"text/plain"}


def test_without_dot_the_bundle_says_how_to_get_the_picture(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    bundle = cnnc.load(SPECS / "lenet5.cnn")._repr_mimebundle_()
    assert "image/svg+xml" not in bundle
    assert "apt-get install graphviz" in bundle["text/html"] and "c5.conv" in bundle["text/html"]
    assert "<svg" not in bundle["text/html"]


def test_displaying_imports_no_ipython():
    code = (
        "import sys, cnnc\n"
        f"net = cnnc.load({str(SPECS / 'lenet5.cnn')!r})\n"
        "net._repr_mimebundle_(); repr(net); net.table()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipykernel')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"


def test_table_rows_are_the_rows_of_cnnc_check():
    net = cnnc.load(SPECS / "lenet5.cnn")
    rows = net.table()
    assert len(rows) == len(net.inputs) + len(net.layers)
    assert rows[0] == {
        "name": "x",
        "op": "input",
        "shape": (1, 32, 32),
        "params": 0,
        "macs": 0,
        "rf": (1, 1),
        "file": str(SPECS / "lenet5.cnn"),
        "line": rows[0]["line"],
    }
    c1 = rows[1]
    assert (c1["name"], c1["op"], c1["shape"], c1["params"], c1["macs"], c1["rf"]) == (
        "c1.conv",
        "conv 5x5, 6",
        (6, 28, 28),
        156,
        117_600,
        (5, 5),
    )
    assert c1["line"] == 4 and sum(r["params"] for r in rows) == net.total_params
    for row in rows:  # the same numbers the check table prints
        assert f"{row['params']:,}" in net.summary() and row["name"] in net.summary()


def test_a_notebook_shows_the_network():
    """nbclient runs a notebook in a Python kernel (this interpreter) that loads a spec and
    displays it; the saved output holds the SVG drawing and the layer table."""
    require_dot()
    nbformat = require("nbformat")
    nbclient = require("nbclient")
    require("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            f"import cnnc\nnet = cnnc.load({str(SPECS / 'resnet.cnn')!r}, network='resnet18')\nnet"
        ),
        nbformat.v4.new_code_cell("print(len(net.table()), repr(net.layers[0]))"),
    ]
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    (shown,) = nb.cells[0].outputs
    assert shown["output_type"] == "execute_result"
    data = shown["data"]
    assert "<svg" in data["image/svg+xml"] and "basic_down(c=128, s=2)" in data["image/svg+xml"]
    assert "layer4.basic_down/y.conv1" in data["text/html"] and "11,689,512" in data["text/html"]
    assert data["text/plain"].startswith("<Network resnet18(x: 3x224x224): 69 layers")
    (printed,) = nb.cells[1].outputs
    assert printed["text"].strip() == "70 <Layer stem.stem/out.conv: conv 7x7 /2, 64 -> 64x112x112>"
    json.dumps(nb)  # the executed notebook is plain JSON, as saved
