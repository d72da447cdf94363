/* cnnc view: pan and zoom the drawing, sort the layer table, select a layer from either.
   Written by hand, no library: the page must load nothing. Reads the JSON in #cnnc-data. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cnnc-data").textContent);
  var layers = data.layers;
  var canvas = document.getElementById("canvas");
  var svg = canvas.querySelector("svg");
  var tbody = document.querySelector("#layers tbody");
  var details = document.getElementById("details");
  var byName = new Map();
  layers.forEach(function (layer, i) { byName.set(layer.name, i); });
  var selected = -1;

  // ---- numbers -------------------------------------------------------------------------
  function count(n) { return n.toLocaleString("en-US"); }
  function bytes(n) {
    var units = [["GiB", 1073741824], ["MiB", 1048576], ["KiB", 1024]];
    for (var i = 0; i < units.length; i++) {
      if (n >= units[i][1]) return (n / units[i][1]).toFixed(1) + " " + units[i][0];
    }
    return n + " B";
  }
  function ms(v) { return v == null ? "" : v.toFixed(3); }
  function esc(text) {
    return String(text).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c];
    });
  }
  function total(key) {
    return layers.reduce(function (sum, layer) { return sum + (layer[key] || 0); }, 0);
  }

  // ---- header --------------------------------------------------------------------------
  var dl = document.getElementById("totals");
  var facts = data.totals.slice();
  if (data.bench) {
    facts.push(["measured", data.bench.median_ms.toFixed(2) + " ms median of " +
      data.bench.repeat + " passes, batch " + data.bench.batch + ", " + data.bench.device]);
  }
  dl.innerHTML = facts.map(function (f) {
    return "<div><dt>" + esc(f[0]) + "</dt><dd>" + esc(f[1]) + "</dd></div>";
  }).join("");

  // ---- the table -----------------------------------------------------------------------
  var timed = data.bench !== null;
  // Fixed widths (the name takes the rest): a fixed table layout is what keeps sorting a
  // thousand rows fast.
  var columns = [
    { key: "index", title: "#", num: true, width: 46, text: function (l, i) { return i; } },
    { key: "name", title: "layer" },
    { key: "label", title: "op", width: 160 },
    { key: "shape", title: "output", width: 110, sort: function (l) { return l.memory; } },
    { key: "params", title: "params", num: true, bar: true, width: 150, text: count },
    { key: "macs", title: "MACs", num: true, bar: true, width: 175, text: count },
    { key: "memory", title: "activation", num: true, bar: true, width: 140, text: bytes },
    { key: "rf", title: "RF", num: true, width: 62, sort: function (l) { return l.rf_size; } },
    { key: "line", title: "line", num: true, width: 52,
      text: function (v) { return v == null ? "" : v; } },
  ];
  if (timed) columns.push({ key: "ms", title: "ms", num: true, bar: true, width: 130, text: ms });
  var sums = {};
  columns.forEach(function (c) { if (c.bar) sums[c.key] = total(c.key); });
  var largest = {};
  columns.forEach(function (c) {
    if (c.bar) largest[c.key] = Math.max.apply(null, layers.map(function (l) { return l[c.key] || 0; }));
  });

  function cell(column, layer, i) {
    var value = column.key === "index" ? i : layer[column.key];
    var shown = column.text ? column.text(value, i) : value;
    if (column.key === "name") {
      return '<td class="name" title="' + esc(shown) + '"><span class="swatch" style="background:' +
        layer.colour + '"></span>' + esc(shown) + "</td>";
    }
    if (column.key === "ms" && value == null && layer.fused_into) {
      return '<td class="num ms" title="fused: timed with ' + esc(layer.fused_into) +
        '"><small>fused</small></td>';
    }
    if (!column.bar) return "<td" + (column.num ? ' class="num"' : "") + ">" + esc(shown) + "</td>";
    var share = sums[column.key] ? (value || 0) / sums[column.key] : 0;
    var width = largest[column.key] ? 100 * (value || 0) / largest[column.key] : 0;
    return '<td class="num bar ' + column.key + '" style="background-size:calc((100% - 16px) * ' +
      (width / 100).toFixed(4) + ') 4px" title="' + (100 * share).toFixed(2) + "% of all " +
      esc(column.title) + '">' + esc(shown) +
      (share >= 0.0005 ? "<small>" + (100 * share).toFixed(1) + "%</small>" : "") + "</td>";
  }

  var table = document.getElementById("layers");
  table.insertAdjacentHTML("afterbegin", "<colgroup>" + columns.map(function (c) {
    return c.width ? '<col style="width:' + c.width + 'px">' : "<col>";
  }).join("") + "</colgroup>");
  document.querySelector("#layers thead").innerHTML = "<tr>" + columns.map(function (c, i) {
    return '<th data-col="' + i + '"' + (c.num ? ' class="num"' : "") + ">" + esc(c.title) + "</th>";
  }).join("") + "</tr>";
  tbody.innerHTML = layers.map(function (layer, i) {
    return '<tr data-i="' + i + '">' + columns.map(function (c) { return cell(c, layer, i); }).join("") + "</tr>";
  }).join("");
  var rows = Array.prototype.slice.call(tbody.rows);

  var sortState = { col: 0, up: true };
  function sortBy(col) {
    var column = columns[col];
    var up = sortState.col === col ? !sortState.up : !column.num;
    sortState = { col: col, up: up };
    var key = column.sort || function (l, i) { return column.key === "index" ? i : l[column.key]; };
    var order = layers.map(function (l, i) { return i; });
    order.sort(function (a, b) {
      var x = key(layers[a], a), y = key(layers[b], b);
      if (x == null) x = -Infinity;
      if (y == null) y = -Infinity;
      var c = typeof x === "string" ? x.localeCompare(y) : x - y;
      return (up ? c : -c) || a - b;
    });
    var fragment = document.createDocumentFragment();
    order.forEach(function (i) { fragment.appendChild(rows[i]); });
    tbody.appendChild(fragment);
    document.querySelectorAll("#layers th").forEach(function (th, i) {
      th.classList.toggle("sorted-up", i === col && up);
      th.classList.toggle("sorted-down", i === col && !up);
    });
  }
  document.querySelector("#layers thead").addEventListener("click", function (e) {
    var th = e.target.closest("th");
    if (th) sortBy(Number(th.dataset.col));
  });
  tbody.addEventListener("click", function (e) {
    var tr = e.target.closest("tr");
    if (tr) select(Number(tr.dataset.i), { centre: true, scroll: false });
  });

  // ---- the drawing: a CSS transform on the SVG element, so panning never re-lays it out -
  var nodes = new Map(); // layer index -> <g class="node">
  var edgesOf = new Map(); // node title -> [<g class="edge">]
  var scale = 1, tx = 0, ty = 0, natural = { w: 1, h: 1 };
  if (svg) {
    var titles = new Map();
    layers.forEach(function (layer, i) { titles.set(layer.node, i); });
    svg.querySelectorAll("g.node").forEach(function (g) {
      var title = g.querySelector("title");
      if (!title || !titles.has(title.textContent)) return;
      var i = titles.get(title.textContent);
      nodes.set(i, g);
      g.dataset.i = i;
      title.textContent = layers[i].name + ": " + layers[i].label;
    });
    svg.querySelectorAll("g.edge").forEach(function (g) {
      var title = g.querySelector("title");
      if (!title) return;
      title.textContent.split("->").forEach(function (end) {
        if (!edgesOf.has(end)) edgesOf.set(end, []);
        edgesOf.get(end).push(g);
      });
    });
    var box = svg.getBoundingClientRect();
    natural = { w: box.width || 1, h: box.height || 1 };
  }

  function apply() {
    if (svg) svg.style.transform = "translate(" + tx + "px," + ty + "px) scale(" + scale + ")";
  }
  function fit() {
    var c = canvas.getBoundingClientRect();
    scale = Math.min(1, (c.width - 20) / natural.w);
    if (natural.h * scale < c.height) scale = Math.min(scale, (c.height - 20) / natural.h);
    scale = Math.max(scale, 0.02);
    tx = (c.width - natural.w * scale) / 2;
    ty = 10;
    apply();
  }
  function zoomAt(factor, x, y) {
    var next = Math.min(8, Math.max(0.02, scale * factor));
    tx = x - (x - tx) * next / scale;
    ty = y - (y - ty) * next / scale;
    scale = next;
    apply();
  }
  function zoomCentre(factor) {
    var c = canvas.getBoundingClientRect();
    zoomAt(factor, c.width / 2, c.height / 2);
  }
  function centreOn(g) {
    if (scale < 0.7) zoomCentre(1 / scale);
    var r = g.getBoundingClientRect(), c = canvas.getBoundingClientRect();
    tx += c.left + c.width / 2 - (r.left + r.width / 2);
    ty += c.top + c.height / 2 - (r.top + r.height / 2);
    apply();
  }

  if (svg) {
    fit();
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      var c = canvas.getBoundingClientRect();
      zoomAt(Math.exp(-e.deltaY * (e.deltaMode ? 0.05 : 0.0015)), e.clientX - c.left, e.clientY - c.top);
    }, { passive: false });
    var drag = null;
    canvas.addEventListener("pointerdown", function (e) {
      if (e.button !== 0) return;
      delete canvas.dataset.dragged;
      drag = { x: e.clientX, y: e.clientY, tx: tx, ty: ty, moved: false };
    });
    window.addEventListener("pointermove", function (e) {
      if (!drag) return;
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      drag.moved = true;
      canvas.classList.add("panning");
      tx = drag.tx + dx;
      ty = drag.ty + dy;
      apply();
    });
    window.addEventListener("pointerup", function () {
      canvas.classList.remove("panning");
      if (drag && drag.moved) canvas.dataset.dragged = "1";
      drag = null;
    });
    canvas.addEventListener("click", function (e) {
      if (canvas.dataset.dragged) { delete canvas.dataset.dragged; return; }
      var g = e.target.closest("g.node");
      if (g && g.dataset.i !== undefined) select(Number(g.dataset.i), { centre: false, scroll: true });
    });
    document.getElementById("zoom-in").onclick = function () { zoomCentre(1.25); };
    document.getElementById("zoom-out").onclick = function () { zoomCentre(0.8); };
    document.getElementById("zoom-fit").onclick = fit;
    window.addEventListener("keydown", function (e) {
      if (e.target.closest && e.target.closest("input, textarea")) return;
      if (e.key === "+" || e.key === "=") zoomCentre(1.25);
      else if (e.key === "-") zoomCentre(0.8);
      else if (e.key === "0") fit();
    });
    window.addEventListener("resize", function () { if (selected < 0) fit(); });
  } else {
    document.querySelector("#drawing .toolbar").hidden = true;
  }

  // ---- selection -------------------------------------------------------------------------
  function linked(i, on) {
    var g = nodes.get(i);
    (edgesOf.get(layers[i].node) || []).forEach(function (edge) { edge.classList.toggle("linked", on); });
    if (g) g.classList.toggle("selected", on);
    rows[i].classList.toggle("selected", on);
  }
  function links(names) {
    return names.map(function (name) {
      return '<a data-layer="' + esc(name) + '">' + esc(name) + "</a>";
    }).join("");
  }
  function select(i, how) {
    if (selected >= 0) linked(selected, false);
    selected = i;
    linked(i, true);
    var layer = layers[i];
    if (how.scroll) rows[i].scrollIntoView({ block: "nearest" });
    if (how.centre && nodes.has(i)) centreOn(nodes.get(i));
    var users = layers.filter(function (l) { return l.inputs.indexOf(layer.name) >= 0; })
      .map(function (l) { return l.name; });
    var spec = layer.source.map(function (s) {
      var where = s.block ? "in block " + s.block + ", called at " : "";
      return '<li><span class="where">' + esc(where + s.file + ":" + s.line) + "</span><code>" +
        esc(s.text) + "</code></li>";
    }).join("");
    var time = "";
    if (timed) {
      time = layer.ms != null ? "<p>measured: " + ms(layer.ms) + " ms</p>"
        : layer.fused_into ? "<p>measured: fused into " + esc(layer.fused_into) + "</p>" : "";
    }
    details.innerHTML = '<h2><span class="swatch" style="background:' + layer.colour + '"></span>' +
      esc(layer.name) + "</h2><p>" + esc(layer.label) + " &rarr; " + esc(layer.shape) + "</p>" +
      '<ul class="spec">' + spec + "</ul>" +
      (layer.inputs.length ? '<p class="links">inputs: ' + links(layer.inputs) + "</p>" : "") +
      (users.length ? '<p class="links">used by: ' + links(users) + "</p>" : "") + time +
      "<pre>" + esc(layer.explain) + "</pre>";
    details.scrollTop = 0;
  }
  details.addEventListener("click", function (e) {
    var a = e.target.closest("a[data-layer]");
    if (a && byName.has(a.dataset.layer)) {
      select(byName.get(a.dataset.layer), { centre: true, scroll: true });
    }
  });

  window.cnncView = { select: select, layers: layers, ready: performance.now() };
})();
