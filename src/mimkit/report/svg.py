"""Line charts as inline SVG text, made in Python (no chart library, nothing to fetch).

``line_chart(title, lines, x_name, chart_id) -> str``: one ``<svg class="chart">`` with
axes, ticks, a light grid and one polyline per ``Line`` (dashed for baselines; a line of
a single point is drawn flat across the chart, as a baseline measured once). The plotted
points and the data-to-pixel frame ride along as ``data-series`` / ``data-frame`` JSON
attributes; ``TOOLTIP_JS`` (a few lines of vanilla JS the page inlines once) shows the
nearest point's run, x and value on hover. The legend is HTML (``legend_html``), so it
wraps, reads in a screen reader and prints.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

# matplotlib's tab10: distinct, and readable in print
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
WIDTH, HEIGHT = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 44


@dataclass
class Line:
    """label: shown in the legend and tooltip; x ascending; dashed: a baseline."""

    label: str
    color: str
    x: list[float]
    y: list[float]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.4g}"


def _thin(x: list[float], y: list[float], max_points: int) -> tuple[list, list]:
    """Every n-th point (and the last), so long logs stay a light page."""
    if len(x) <= max_points:
        return x, y
    step = math.ceil(len(x) / max_points)
    keep = list(range(0, len(x), step))
    if keep[-1] != len(x) - 1:
        keep.append(len(x) - 1)
    return [x[i] for i in keep], [y[i] for i in keep]


def _domain(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:  # a flat line: give it some room
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _round(values: list[float]) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


def line_chart(
    title: str,
    lines: list[Line],
    x_name: str,
    chart_id: str,
    y_name: str = "",
    max_points: int = 1500,
) -> str:
    """lines -> the ``<svg>`` text (empty string when no line has a point)."""
    lines = [ln for ln in lines if ln.x]
    if not lines:
        return ""
    xs = [v for ln in lines for v in ln.x]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = _domain([v for ln in lines for v in ln.y])
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - x0) / (x1 - x0) * w, 1)

    def py(y: float) -> float:
        return round(TOP + h - (y - y0) / (y1 - y0) * h, 1)

    parts, data = [], []
    for t in nice_ticks(y0, y1):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + w}" y1="{py(t)}" y2="{py(t)}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{py(t) + 4}" text-anchor="end">'
            f"{tick_label(t)}</text>"
        )
    for t in nice_ticks(x0, x1):
        parts.append(
            f'<line class="grid" x1="{px(t)}" x2="{px(t)}" y1="{TOP}" y2="{TOP + h}"/>'
            f'<text class="tick" x="{px(t)}" y="{TOP + h + 16}" text-anchor="middle">'
            f"{tick_label(t)}</text>"
        )
    for ln in lines:
        x, y = _thin(ln.x, ln.y, max_points)
        if len(x) == 1:  # measured once: a flat reference line across the chart
            x, y = [x0, x1], [y[0], y[0]]
        points = " ".join(f"{px(a)},{py(b)}" for a, b in zip(x, y))
        dash = ' stroke-dasharray="6 4"' if ln.dashed else ""
        parts.append(
            f'<polyline class="series" points="{points}" stroke="{ln.color}"{dash}>'
            f"<title>{html.escape(ln.label)}</title></polyline>"
        )
        data.append({"l": ln.label, "x": _round(x), "y": _round(y)})
    frame = dict(x0=x0, x1=x1, y0=y0, y1=y1, L=LEFT, T=TOP, W=w, H=h, xn=x_name)
    labels = ", ".join(sorted({ln.label for ln in lines}))
    tid, did = f"{chart_id}-title", f"{chart_id}-desc"
    return (
        f'<svg id="{chart_id}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="{tid} {did}" '
        f"data-frame='{html.escape(json.dumps(frame), quote=True)}' "
        f"data-series='{html.escape(json.dumps(data), quote=True)}'>"
        f'<title id="{tid}">{html.escape(title)}</title>'
        f'<desc id="{did}">{html.escape(y_name or title)} against {html.escape(x_name)}: '
        f"{html.escape(labels)}. Hover for values.</desc>"
        f'<text class="title" x="{LEFT}" y="18">{html.escape(title)}</text>'
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{w}" height="{h}"/>'
        + "".join(parts)
        + f'<text class="axis" x="{LEFT + w / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{html.escape(x_name)}</text>"
        '<circle class="dot" r="4" cx="-10" cy="-10"/>'
        '<g class="tip" visibility="hidden"><rect rx="3" height="20"/><text y="14"></text></g>'
        "</svg>"
    )


def legend_html(entries: list[tuple[str, str, bool]]) -> str:
    """(label, colour, dashed) -> a ``<ul class="legend">`` with colour swatches."""
    items = "".join(
        f'<li><span class="swatch{" dashed" if dashed else ""}" style="border-color:{color}" '
        f'aria-hidden="true"></span>{html.escape(label)}</li>'
        for label, color, dashed in entries
    )
    return f'<ul class="legend">{items}</ul>'


# Hover tooltips: the nearest plotted point (in pixels) of any line, a dot on it and a
# label "run · step 120: 0.4321". A scan of every point per move: a chart holds at most
# a few thousand, well under a millisecond.
TOOLTIP_JS = """
function fmt(v){return Number.isInteger(v)?String(v):Number(v.toPrecision(4)).toString();}
document.querySelectorAll('svg.chart').forEach(function(svg){
  var f=JSON.parse(svg.dataset.frame), S=JSON.parse(svg.dataset.series);
  var tip=svg.querySelector('.tip'), txt=tip.querySelector('text'),
      box=tip.querySelector('rect'), dot=svg.querySelector('.dot');
  function px(x){return f.L+(x-f.x0)/(f.x1-f.x0)*f.W;}
  function py(y){return f.T+f.H-(y-f.y0)/(f.y1-f.y0)*f.H;}
  svg.addEventListener('mousemove',function(e){
    var p=svg.createSVGPoint(); p.x=e.clientX; p.y=e.clientY;
    p=p.matrixTransform(svg.getScreenCTM().inverse());
    var best=null;
    S.forEach(function(s){for(var i=0;i<s.x.length;i++){
      var d=Math.hypot(px(s.x[i])-p.x,py(s.y[i])-p.y);
      if(!best||d<best.d){best={d:d,s:s,i:i};}}});
    if(!best){return;}
    var x=best.s.x[best.i], y=best.s.y[best.i], cx=px(x), cy=py(y);
    dot.setAttribute('cx',cx); dot.setAttribute('cy',cy);
    txt.textContent=best.s.l+' \\u00b7 '+f.xn+' '+fmt(x)+': '+fmt(y);
    var wd=txt.getComputedTextLength()+12, tx=cx+10>f.L+f.W-wd?cx-wd-10:cx+10;
    box.setAttribute('width',wd); txt.setAttribute('x',6);
    tip.setAttribute('transform','translate('+tx+','+Math.max(f.T,cy-26)+')');
    tip.setAttribute('visibility','visible');
  });
  svg.addEventListener('mouseleave',function(){
    tip.setAttribute('visibility','hidden'); dot.setAttribute('cx',-10);
  });
});
"""
