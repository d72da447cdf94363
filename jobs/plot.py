"""The picture of a sweep as a small standalone SVG (no plotting library): MACs against
params, and time against MACs when the variants were benched; one labelled point each."""

from __future__ import annotations

import io
import math
from pathlib import Path
from xml.sax.saxutils import escape

from ..compiler import write_atomically

W, H = 460, 360  # one panel
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50


class _Axis:
    """Linear, or logarithmic when the values span more than a factor of 20."""

    def __init__(self, values: list[float], lo_px: float, hi_px: float):
        self.log = min(values) > 0 and max(values) / min(values) > 20
        f = self.f
        lo, hi = min(f(v) for v in values), max(f(v) for v in values)
        pad = (hi - lo) * 0.08 or (abs(hi) * 0.1 or 1.0)
        self.lo, self.hi = lo - pad, hi + pad
        self.lo_px, self.hi_px = lo_px, hi_px

    def f(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def px(self, v: float) -> float:
        t = (self.f(v) - self.lo) / (self.hi - self.lo)
        return self.lo_px + t * (self.hi_px - self.lo_px)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0**e for e in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
        step = 10 ** math.floor(math.log10((self.hi - self.lo) / 4))
        for m in (1, 2, 5, 10):
            if (self.hi - self.lo) / (step * m) <= 6:
                step *= m
                break
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step) + 1)]


def _si(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _panel(points, xlabel: str, ylabel: str, x0: float) -> list[str]:
    xs = _Axis([p[0] for p in points], x0 + LEFT, x0 + W - RIGHT)
    ys = _Axis([p[1] for p in points], H - BOTTOM, TOP)
    out = [
        f'<rect x="{x0 + LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" '
        f'height="{H - TOP - BOTTOM}" fill="none" stroke="#888"/>'
    ]
    for t in xs.ticks():
        x = xs.px(t)
        out.append(f'<line x1="{x:.1f}" y1="{H - BOTTOM}" x2="{x:.1f}" y2="{H - BOTTOM + 5}"/>')
        out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 18}" text-anchor="middle">{_si(t)}</text>')
    for t in ys.ticks():
        y = ys.px(t)
        out.append(f'<line x1="{x0 + LEFT - 5}" y1="{y:.1f}" x2="{x0 + LEFT}" y2="{y:.1f}"/>')
        out.append(f'<text x="{x0 + LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{_si(t)}</text>')
    scale = lambda a: " (log)" if a.log else ""  # noqa: E731
    out.append(
        f'<text x="{x0 + (LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">'
        f"{escape(xlabel)}{scale(xs)}</text>"
    )
    cy = (TOP + H - BOTTOM) / 2
    out.append(
        f'<text x="{x0 + 16}" y="{cy}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 + 16} {cy})">{escape(ylabel)}{scale(ys)}</text>'
    )
    for x, y, label in points:
        px, py = xs.px(x), ys.px(y)
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="#3465a4"/>')
        right = px > x0 + (LEFT + W - RIGHT) / 2  # labels in the right half read leftwards
        anchor, dx = ("end", -6) if right else ("start", 6)
        out.append(
            f'<text x="{px + dx:.1f}" y="{py - 6:.1f}" text-anchor="{anchor}" class="label">'
            f"{escape(label)}</text>"
        )
    return out


def sweep_svg(rows: list[dict], path: Path, title: str):
    """Write the sweep's plot; rows that failed are left out (they have no costs)."""
    ok = [r for r in rows if not r["error"]]
    label = lambda r: " ".join(f"{k}={v}" for k, v in r["parameters"].items())  # noqa: E731
    panels = [([(r["params"], r["macs"], label(r)) for r in ok], "params", "MACs")]
    if ok and all("ms" in r for r in ok):
        panels.append(([(r["macs"], r["ms"], label(r)) for r in ok], "MACs", "ms (median)"))
    width = W * len(panels)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" '
        f'viewBox="0 0 {width} {H}" font-family="sans-serif" font-size="11">',
        "<style>.label{font-size:9px;fill:#333} line{stroke:#888}</style>",
        f'<rect width="{width}" height="{H}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">'
        f"{escape(title)}: {len(ok)} variants</text>",
    ]
    if ok:
        for i, (points, xlabel, ylabel) in enumerate(panels):
            parts += _panel(points, xlabel, ylabel, i * W)
    else:
        parts.append(
            f'<text x="{width / 2}" y="{H / 2}" text-anchor="middle">no variant checked</text>'
        )
    parts.append("</svg>\n")
    write_atomically(path, "\n".join(parts).encode())


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none has fewer or as many MACs with a
    higher accuracy, or fewer MACs with the same; sorted by MACs."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_plot(rows: list[dict], path: Path, title: str):
    """``cnnc sweep --train --plot``: validation accuracy against MACs, one labelled point
    per variant, the Pareto front (the best accuracy for its cost) marked and joined.
    Drawn with matplotlib (the ``train`` extra), as an .svg or .png."""
    from ..training.report import require_matplotlib

    plt = require_matplotlib()
    ok = [r for r in rows if not r["error"] and r.get("val_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = [(r["macs"], 100 * r["val_accuracy"]) for r in ok]
    front = pareto_front(points)
    if ok:
        xs, ys = zip(*points)
        ax.scatter(xs, ys, color="#3465a4", zorder=2, label="variant")
        fx, fy = zip(*(points[i] for i in front))
        ax.step(fx, fy, where="post", color="#cc0000", alpha=0.6, zorder=1)
        ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="#cc0000", zorder=3,
                   label="Pareto front")  # fmt: skip
        varied = [
            k for k in ok[0]["parameters"] if len({str(r["parameters"].get(k)) for r in ok}) > 1
        ]
        for (x, y), r in zip(points, ok):
            label = " ".join(f"{k}={r['parameters'][k]}" for k in varied)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.margins(x=0.12, y=0.12)
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no variant trained", ha="center", transform=ax.transAxes)
    ax.set_xlabel("MACs per sample")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: {len(ok)} variants")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lower()[1:] or "svg")
    plt.close(fig)
    write_atomically(path, buffer.getvalue())
