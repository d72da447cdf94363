"""`cnnc view`: one self-contained page, checked as a file and used in headless Chromium (a
real click on a node highlights its row, a click on a row centres its node, sorting, zoom,
pan), and the large networks of the spec library measured for responsiveness."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest

import cnnc
from browser import Browser, find_chromium
from cnnc.cli import main
from cnnc.compiler.view import page
from conftest import SPECS, require_dot

DATA = re.compile(r'<script type="application/json" id="cnnc-data">(.*?)</script>', re.S)


def page_data(text: str) -> dict:
    return json.loads(DATA.search(text).group(1))


def require_chromium():
    if find_chromium() is None:
        if os.environ.get("CNNC_REQUIRE_REFERENCES"):
            pytest.fail("chromium and chromium-driver are required in CI (.ci/run installs them)")
        pytest.skip("chromium or chromedriver not installed")


def test_the_page_loads_nothing_and_holds_every_layer(tmp_path):
    require_dot()
    out = tmp_path / "r18.html"
    assert main(["view", str(SPECS / "resnet.cnn"), "--network", "resnet18", "-o", str(out)]) == 0
    text = out.read_text()
    # nothing to fetch: no src or href attributes, no stylesheet links, no imports
    assert not re.search(r"\s(src|href|xlink:href)\s*=", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert len(re.findall(r"<script\b", text)) == 2 and text.count("<svg") == 1
    data = page_data(text)
    net = cnnc.load(SPECS / "resnet.cnn", network="resnet18")
    assert [x["name"] for x in data["layers"]] == [r["name"] for r in net.table()]
    conv = data["layers"][1]
    assert conv["label"] == "conv 7x7 /2, 64" and conv["params"] == 9408
    assert "floor((224 + 2*3 - 1*(7-1) - 1) / 2) + 1 = 112" in conv["explain"]
    assert conv["source"][1]["block"] == "stem()" and data["bench"] is None
    assert f"<title>{conv['node']}</title>" in text  # the drawing's node of the layer


def test_text_from_the_spec_cannot_break_out_of_the_page(tmp_path):
    spec = tmp_path / "evil.cnn"
    spec.write_text(
        "network n(x: 3x8x8) {\n"
        "  return x | relu   # </script><script>alert(1)</script> {{data}} <!--\n"
        "}\n"
    )
    text = page(cnnc.load(spec))
    assert len(re.findall(r"<script\b", text)) == 2 and "alert(1)</script>" not in text
    (layer,) = [x for x in page_data(text)["layers"] if x["op"] == "relu"]
    assert "</script><script>alert(1)</script> {{data}} <!--" in layer["source"][0]["text"]


def test_without_dot_the_page_has_the_table_and_says_how_to_draw(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    text = page(cnnc.load(SPECS / "lenet5.cnn"))
    assert "<svg" not in text and "apt-get install graphviz" in html.unescape(text)
    assert page_data(text)["no_drawing"] and len(page_data(text)["layers"]) == 14


def test_view_needs_an_html_name(tmp_path, capsys):
    assert main(["view", str(SPECS / "lenet5.cnn"), "-o", str(tmp_path / "x.svg")]) == 2
    assert "does not end in .html" in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()


def test_view_bench_puts_each_layers_time_on_the_page(tmp_path):
    out = tmp_path / "lenet.html"
    args = ["view", str(SPECS / "lenet5.cnn"), "--bench", "--repeat", "2", "-o", str(out)]
    assert main(args) == 0
    data = page_data(out.read_text())
    bench, layers = data["bench"], {x["name"]: x for x in data["layers"]}
    assert bench["repeat"] == 2 and bench["batch"] == 1 and bench["median_ms"] > 0
    assert layers["c1.conv"]["ms"] > 0 and layers["c1.tanh"]["fused_into"] == "c1.conv"
    timed = sum(x["ms"] or 0 for x in data["layers"])
    assert timed > 0


# ---- in the browser -----------------------------------------------------------------------

VISIBLE_CONV = """
const box = document.getElementById('canvas').getBoundingClientRect();
for (const [i, layer] of window.cnncView.layers.entries()) {
  const g = document.querySelector(`g.node[data-i="${i}"]`);
  if (!g || layer.op !== 'conv') continue;
  const r = g.getBoundingClientRect();
  if (r.top > box.top + 50 && r.bottom < box.bottom - 10 && r.left > box.left + 10
      && r.right < box.right - 10) return i;
}
return null;
"""
STATE = """
const sel = [...document.querySelectorAll('#layers tbody tr.selected')].map(r => +r.dataset.i);
const nodes = [...document.querySelectorAll('g.node.selected')].map(g => +g.dataset.i);
const m = /translate\\(([-\\d.e]+)px, ?([-\\d.e]+)px\\) scale\\(([-\\d.e]+)\\)/
  .exec(document.querySelector('#canvas > svg').style.transform);
const h2 = document.querySelector('#details h2');
return {rows: sel, nodes: nodes, tx: +m[1], ty: +m[2], scale: +m[3],
        title: h2 ? h2.textContent : null,
        details: document.getElementById('details').textContent};
"""
ROW_IN_VIEW = """
const row = document.querySelector(`#layers tbody tr[data-i="${arguments[0]}"]`);
const r = row.getBoundingClientRect(), box = document.getElementById('table-box')
  .getBoundingClientRect();
return r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
"""
NODE_OFF_CENTRE = """
const g = document.querySelector(`g.node[data-i="${arguments[0]}"]`);
const r = g.getBoundingClientRect(), c = document.getElementById('canvas')
  .getBoundingClientRect();
return Math.hypot(r.left + r.width / 2 - c.left - c.width / 2,
                  r.top + r.height / 2 - c.top - c.height / 2);
"""


@pytest.fixture(scope="module")
def browser():
    require_dot()
    require_chromium()
    with Browser(1400, 900) as b:
        yield b


@pytest.fixture(scope="module")
def resnet18_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("view") / "resnet18.html"
    cnnc.compiler.view.write(cnnc.load(SPECS / "resnet.cnn", network="resnet18"), out)
    return out


def test_clicking_a_node_highlights_its_row_and_shows_its_spec_lines(browser, resnet18_page):
    browser.open(resnet18_page)
    assert browser.run("return performance.getEntriesByType('resource').length") == 0
    for _ in range(2):
        browser.click(browser.find("#zoom-out"))
    i = browser.run(VISIBLE_CONV)
    assert i is not None, "no conv node in view after fitting the drawing"
    layer = browser.run("return window.cnncView.layers[arguments[0]]", i)
    browser.click(browser.find(f'g.node[data-i="{i}"]'))
    state = browser.run(STATE)
    assert state["rows"] == [i] and state["nodes"] == [i]
    assert layer["name"] in state["title"]
    assert layer["source"][0]["text"] in state["details"]  # its spec line
    assert "= 9,408" in state["details"] or "params" in state["details"]
    assert browser.run(ROW_IN_VIEW, i)
    # its edges are marked too
    assert browser.run("return document.querySelectorAll('g.edge.linked').length") >= 2


def test_clicking_a_row_centres_its_node(browser, resnet18_page):
    browser.open(resnet18_page)
    last = browser.run("return window.cnncView.layers.length") - 1  # the fc, far below
    assert browser.run(NODE_OFF_CENTRE, last) > 200
    browser.run(
        f"document.querySelector('#layers tbody tr[data-i=\"{last}\"]')"
        ".scrollIntoView({block: 'center'})"
    )
    browser.click(browser.find(f'#layers tbody tr[data-i="{last}"]'))
    state = browser.run(STATE)
    assert state["rows"] == [last] and state["nodes"] == [last]
    assert browser.run(NODE_OFF_CENTRE, last) < 2
    assert "weight = N' * N = 1000 * 512 = 512,000" in state["details"]


def test_sorting_zooming_and_panning(browser, resnet18_page):
    browser.open(resnet18_page)
    browser.click(browser.find('#layers th[data-col="4"]'))  # params, largest first
    first = browser.run("return +document.querySelector('#layers tbody tr').dataset.i")
    layers = browser.run("return window.cnncView.layers")
    assert layers[first]["params"] == max(x["params"] for x in layers)
    browser.click(browser.find('#layers th[data-col="4"]'))  # again: smallest first
    first = browser.run("return +document.querySelector('#layers tbody tr').dataset.i")
    assert layers[first]["params"] == 0

    before = browser.run(STATE)
    browser.click(browser.find("#zoom-in"))
    assert browser.run(STATE)["scale"] == pytest.approx(before["scale"] * 1.25, rel=1e-3)
    canvas = browser.find("#canvas")
    browser.wheel(canvas, -300)
    zoomed = browser.run(STATE)
    assert zoomed["scale"] > before["scale"] * 1.25
    browser.drag(canvas, 60, 40)
    moved = browser.run(STATE)
    assert (moved["tx"] - zoomed["tx"], moved["ty"] - zoomed["ty"]) == pytest.approx((60, 40))
    assert moved["rows"] == []  # a drag is not a click
    shot = browser.screenshot()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_dot_the_table_still_works(browser, tmp_path, monkeypatch):
    out = tmp_path / "lenet.html"
    with monkeypatch.context() as m:
        m.setattr(shutil, "which", lambda name: None)
        cnnc.compiler.view.write(cnnc.load(SPECS / "lenet5.cnn"), out)
    browser.open(out)
    browser.click(browser.find('#layers tbody tr[data-i="3"]'))
    details = browser.run("return document.getElementById('details').textContent")
    assert "c3.conv" in details or "s2.avgpool" in details
    assert "graphviz" in browser.run("return document.getElementById('canvas').textContent")


@pytest.mark.parametrize(
    "spec, network", [("densenet.cnn", "densenet201"), ("regnet.cnn", "regnet_y_128gf")]
)
def test_large_networks_stay_responsive(browser, tmp_path, spec, network):
    """Page load, selecting a layer (centring its node) and sorting the table, measured in
    the browser. The bounds leave room for a loaded 2-core CI machine; the README quotes
    the times measured."""
    net = cnnc.load(SPECS / spec, network=network)
    out = cnnc.compiler.view.write(net, tmp_path / f"{network}.html")
    browser.open(out)
    loaded = browser.run(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return {load: n.loadEventEnd, ready: window.cnncView.ready}"
    )
    last = len(net.layers)
    select_ms = browser.run(
        "const t = performance.now();"
        "window.cnncView.select(arguments[0], {centre: true, scroll: true});"
        "document.body.getBoundingClientRect(); return performance.now() - t;",
        last,
    )
    sort_ms = browser.run(
        "const t = performance.now(); document.querySelector('#layers th[data-col=\"5\"]')"
        ".click(); document.body.getBoundingClientRect(); return performance.now() - t;"
    )
    print(
        f"\n{network}: {len(net.layers)} layers, {Path(out).stat().st_size / 2**20:.1f} MiB; "
        f"load {loaded['load']:.0f} ms (script ready {loaded['ready']:.0f} ms), "
        f"select {select_ms:.0f} ms, sort {sort_ms:.0f} ms"
    )
    assert browser.run(NODE_OFF_CENTRE, last) < 2
    assert loaded["load"] < 15_000 and select_ms < 1_000 and sort_ms < 3_000


SPEC_FILES = sorted(p.name for p in SPECS.glob("*.cnn"))


@pytest.mark.parametrize("spec", SPEC_FILES)
def test_every_family_shows_in_a_notebook_and_in_the_browser(browser, tmp_path, spec):
    """The smallest network of each spec file: its notebook bundle holds the drawing the page
    holds, and in the browser every layer has its node and its row, and selecting works."""
    net = min(cnnc.load_all(SPECS / spec), key=lambda n: len(n.layers))
    bundle = net._repr_mimebundle_()
    out = tmp_path / "page.html"
    out.write_text(page(net))
    assert bundle["image/svg+xml"] in out.read_text()
    browser.open(out)
    count = len(net.inputs) + len(net.layers)
    seen = browser.run(
        "return [document.querySelectorAll('g.node[data-i]').length,"
        " document.querySelectorAll('#layers tbody tr').length]"
    )
    assert seen == [count, count]
    browser.run("window.cnncView.select(arguments[0], {centre: true, scroll: true})", count - 1)
    assert browser.run(NODE_OFF_CENTRE, count - 1) < 2
    assert net.layers[-1].name in browser.run(
        "return document.querySelector('#details h2').textContent"
    )
