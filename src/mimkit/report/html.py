"""One self-contained HTML page comparing runs (``mimkit report``).

``build_report(run_dirs, out, pictures=None, title=None) -> Path`` reads the run folders
(``report.collect``) and writes one HTML file: pictures embedded as base64 data URIs,
charts as inline SVG with a few lines of inline JS for hover values, no external file or
network at view time, a print stylesheet (charts and tables kept whole, collapsed
configs opened before printing). ``render_report(runs, pictures=None, title=None) -> str``
returns the page text for already read runs.

Sections: the runs (colour, folder, task, model, precision, device, wall-clock, steps,
throughput as recorded); every evaluation in one table (best value per column starred);
training curves (loss, learning rate, throughput, other loss terms, then monitor / val
series with their baselines dashed), every run on the same axes in its colour; pictures,
one row per kind, every run side by side; the configuration: the keys that differ
between runs, then each run's full resolved config with those keys marked.

``pictures``: ``{kind: {run: picture}}`` for pictures made outside the run folders (the
CLI's attention and feature maps of every run on the same images): ``kind`` is the
heading ('attention', 'features'), ``run`` a run folder as given in ``run_dirs`` (or its
display name), ``picture`` a PIL image or an image file. They come first; the pictures
found in the folders (reconstructions, confusion matrices) follow.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..utils.io import atomic_write_text
from .collect import (
    Run,
    baseline_of,
    best_per_column,
    comparison_rows,
    config_differences,
    lower_is_better,
    read_runs,
    table_groups,
)
from .svg import PALETTE, TOOLTIP_JS, Line, legend_html, line_chart

PictureLike = Image.Image | str | Path
Pictures = dict[str, dict[str | Path, PictureLike]]
# bigger picture files are scaled down before embedding: a page, not an archive
MAX_BYTES, MAX_SIDE = 3_000_000, 2000
KNOWN_CHARTS = {"loss": "Training loss", "lr": "Learning rate", "img_s": "Throughput (images/s)"}
MONITOR_PREFIXES = ("monitor/", "val/", "eval/")

esc = html.escape


# ----------------------------------------------------------------------------- pictures


def data_uri(picture: PictureLike) -> tuple[str, int, int]:
    """A PIL image or image file -> (data URI, width, height). PNG and JPEG files up to
    MAX_BYTES go in as they are (re-encoding a plot's PNG often makes it larger); other
    formats, bigger files and PIL images are encoded as PNG, at most MAX_SIDE px."""
    raw = None
    if isinstance(picture, Image.Image):
        img = picture
    else:
        data = Path(picture).read_bytes()
        img = Image.open(io.BytesIO(data))
        if img.format in ("PNG", "JPEG") and len(data) <= MAX_BYTES:
            raw, mime = data, f"image/{img.format.lower()}"
    if raw is None:
        if max(img.size) > MAX_SIDE:
            img = img.copy()
            img.thumbnail((MAX_SIDE, MAX_SIDE))
        buf = io.BytesIO()
        img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB").save(buf, "PNG")
        raw, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}", img.width, img.height


def _match_run(key: str | Path, runs: Sequence[Run]) -> Run:
    for run in runs:
        if str(key) == run.name:
            return run
    path = Path(key).resolve()
    for run in runs:
        if run.path.resolve() == path:
            return run
    names = ", ".join(r.name for r in runs)
    raise UserError(f"picture given for run '{key}', which is not one of the runs ({names})")


def picture_table(runs: Sequence[Run], pictures: Pictures | None) -> dict[str, dict[str, object]]:
    """{kind: {run name: picture}}: the given pictures, then those in the run folders."""
    table: dict[str, dict[str, object]] = {}
    for kind, per_run in (pictures or {}).items():
        for key, picture in per_run.items():
            table.setdefault(kind, {})[_match_run(key, runs).name] = picture
    for run in runs:
        for kind, path in run.pictures.items():
            table.setdefault(kind, {}).setdefault(run.name, path)
    return table


def _figure(kind: str, run: Run, picture, color: str) -> str:
    try:
        uri, w, h = data_uri(picture)
    except (OSError, ValueError) as e:  # a broken file must not sink the whole page
        return f'<figure class="missing"><p>unreadable picture: {esc(str(e))}</p></figure>'
    alt = f"{kind} of run {run.name}"
    return (
        f'<figure><img src="{uri}" width="{w}" height="{h}" alt="{esc(alt)}" loading="eager">'
        f"<figcaption>{_swatch(color)}{esc(run.name)}</figcaption></figure>"
    )


def pictures_section(runs: Sequence[Run], pictures: Pictures | None, colors: dict) -> str:
    table = picture_table(runs, pictures)
    if not table:
        return "<p>No pictures were found or given.</p>"
    blocks = []
    for kind, per_run in table.items():
        figures = [
            _figure(kind, run, per_run[run.name], colors[run.name])
            if run.name in per_run
            else f'<figure class="missing"><p>{esc(run.name)}: not recorded</p></figure>'
            for run in runs
        ]
        blocks.append(f'<h3>{esc(kind)}</h3><div class="pictures">{"".join(figures)}</div>')
    return "".join(blocks)


# ----------------------------------------------------------------------------- tables


def run_colors(runs: Sequence[Run]) -> dict[str, str]:
    """Run name -> its colour in every chart, table and caption."""
    return {r.name: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="border-color:{color}" aria-hidden="true"></span>'


def fmt_number(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.1f}"
    return f"{v:.4g}"


def runs_section(runs: Sequence[Run], colors: dict) -> str:
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.info))
    head = "".join(f'<th scope="col">{esc(k)}</th>' for k in ["run", "folder", *keys])
    rows = []
    for run in runs:
        cells = "".join(f"<td>{esc(run.info.get(k, '—'))}</td>" for k in keys)
        note = (
            f" <small>({run.bad_log_lines} unreadable log lines skipped)</small>"
            if run.bad_log_lines
            else ""
        )
        rows.append(
            f'<tr><th scope="row">{_swatch(colors[run.name])}{esc(run.name)}</th>'
            f"<td><code>{esc(str(run.path))}</code>{note}</td>{cells}</tr>"
        )
    return (
        f'<div class="scroll"><table class="runs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def evaluations_section(runs: Sequence[Run], colors: dict) -> str:
    """The one evaluation table: a row per run, a column per (evaluation, metric)."""
    rows = comparison_rows(runs)
    groups = table_groups(runs)
    if not groups:
        return "<p>No <code>metrics.json</code> was found in these runs.</p>"
    columns = [f"{g}/{m}" for g, metrics in groups for m in metrics]
    best = best_per_column(rows)
    top = "".join(f'<th scope="colgroup" colspan="{len(ms)}">{esc(g)}</th>' for g, ms in groups)
    sub = "".join(
        f'<th scope="col">{esc(m)}'
        f"{' <small>(lower is better)</small>' if lower_is_better(m) else ''}</th>"
        for _, metrics in groups
        for m in metrics
    )
    body = []
    for run, row in zip(runs, rows):
        cells = []
        for col in columns:
            if col not in row:
                cells.append('<td class="none">—</td>')
                continue
            v, is_best = row[col], run.name in best.get(col, ())
            text = fmt_number(v)
            if is_best:
                text = f'<strong>{text}</strong> <span class="star" title="best">★</span>'
                text += '<span class="sr">(best)</span>'
            cls = ' class="best"' if is_best else ""
            cells.append(
                f'<td{cls} data-run="{esc(run.name)}" data-column="{esc(col)}" '
                f'data-value="{v!r}">{text}</td>'
            )
        body.append(
            f'<tr><th scope="row">{_swatch(colors[run.name])}{esc(run.name)}</th>'
            f"{''.join(cells)}</tr>"
        )
    return (
        '<div class="scroll"><table class="evals" id="evaluations-table">'
        f'<thead><tr><td rowspan="2"></td>{top}</tr><tr>{sub}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        '<p class="note">★ best of the runs in that column (higher is better, except '
        "columns marked lower is better).</p>"
    )


def config_section(runs: Sequence[Run], colors: dict) -> str:
    diffs = config_differences(runs)
    flats = [r.flat_config for r in runs]
    parts = []
    if len(runs) > 1 and diffs:
        head = "".join(f'<th scope="col">{_swatch(colors[r.name])}{esc(r.name)}</th>' for r in runs)
        rows = "".join(
            f'<tr><th scope="row"><code>{esc(k)}</code></th>'
            + "".join(f"<td><mark>{esc(f.get(k, '—'))}</mark></td>" for f in flats)
            + "</tr>"
            for k in diffs
        )
        parts.append(
            f"<h3>Differences ({len(diffs)} keys)</h3>"
            f'<table class="diffs"><thead><tr><th scope="col">key</th>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    elif len(runs) > 1:
        parts.append("<p>The resolved configs are the same.</p>")
    marked = set(diffs)
    for run, flat in zip(runs, flats):
        if not flat:
            parts.append(f"<p>{esc(run.name)}: no config.yaml.</p>")
            continue
        rows = "".join(
            f'<tr{" class=diff" if k in marked else ""}><th scope="row"><code>{esc(k)}</code>'
            f"</th><td>{f'<mark>{esc(v)}</mark>' if k in marked else esc(v)}</td></tr>"
            for k, v in flat.items()
        )
        parts.append(
            f"<details><summary>{_swatch(colors[run.name])}Resolved config of {esc(run.name)} "
            f"({len(flat)} keys, {len(marked & set(flat))} differ)</summary>"
            f'<table class="config"><thead><tr><th scope="col">key</th>'
            f'<th scope="col">value</th></tr></thead><tbody>{rows}</tbody></table></details>'
        )
    return "".join(parts)


# ----------------------------------------------------------------------------- curves


def chart_plan(runs: Sequence[Run]) -> list[tuple[str, str, list[str]]]:
    """(series name, title, its baseline names) for each chart to draw: the known ones,
    other loss terms, then monitor / val series; the rest is listed by name only."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.series))
    baselines: dict[str, list[str]] = {}
    for n in names:
        parent = baseline_of(n, names)
        if parent:
            baselines.setdefault(parent, []).append(n)
    attached = {b for bs in baselines.values() for b in bs}
    plan = [(n, title, baselines.get(n, [])) for n, title in KNOWN_CHARTS.items() if n in names]
    for n in names:
        if n in KNOWN_CHARTS or n in attached:
            continue
        if "loss" in n and "/" not in n:
            plan.append((n, n, baselines.get(n, [])))
    for n in names:
        if n not in attached and n.startswith(MONITOR_PREFIXES):
            plan.append((n, n, baselines.get(n, [])))
    return plan


def _baseline_label(run: Run, name: str, parent: str) -> str:
    return f"{run.name}: {name[len(parent) :].strip('/_-.')}"


def curves_section(runs: Sequence[Run], colors: dict) -> str:
    plan = chart_plan(runs)
    figures = []
    for i, (name, title, baselines) in enumerate(plan):
        lines, legend = [], []
        x_name = "step"
        for run in runs:
            s = run.series.get(name)
            if s is not None:
                x_name = s.x_name
                lines.append(Line(run.name, colors[run.name], s.x, s.y))
                legend.append((run.name, colors[run.name], False))
            for b in baselines:
                bs = run.series.get(b)
                if bs is not None:
                    label = _baseline_label(run, b, name)
                    lines.append(Line(label, colors[run.name], bs.x, bs.y, dashed=True))
                    legend.append((label, colors[run.name], True))
        svg = line_chart(title, lines, x_name, f"chart-{i}", y_name=name)
        if svg:
            figures.append(f'<figure class="chart-box">{svg}{legend_html(legend)}</figure>')
    shown = {n for n, _, bs in plan for n in [n, *bs]}
    rest = sorted({n for r in runs for n in r.series} - shown)
    text = '<div class="charts">' + "".join(figures) + "</div>" if figures else ""
    if not figures:
        text = "<p>No training curves were logged (no log.jsonl with numbers).</p>"
    if rest:
        text += f'<p class="note">Also logged: {esc(", ".join(rest))}.</p>'
    return text


# ----------------------------------------------------------------------------- page

CSS = """
:root{--fg:#1b1b1b;--muted:#5a5a5a;--line:#d0d0d0;--best:#e3f4e6;--mark:#fff1a8}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
 margin:0 auto;max-width:1280px;padding:0 20px 40px}
h1{font-size:1.6em;margin:24px 0 4px}h2{margin-top:36px;border-bottom:2px solid var(--line)}
nav ul{list-style:none;padding:0;display:flex;gap:16px;flex-wrap:wrap}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}
table.evals td{text-align:right;font-variant-numeric:tabular-nums}
td.best{background:var(--best)}td.none{color:var(--muted);text-align:center}
.star{color:#1a7f37}.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
mark{background:var(--mark);padding:0 2px}
.scroll{overflow-x:auto}.note{color:var(--muted);font-size:.9em}
.swatch{display:inline-block;width:22px;border-top:4px solid;margin-right:6px;vertical-align:middle}
.swatch.dashed{border-top:3px dashed}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:16px}
figure{margin:0}.chart-box{border:1px solid var(--line);padding:8px}
svg.chart{width:100%;height:auto;font:11px system-ui,sans-serif}
svg .frame{fill:none;stroke:#999}svg .grid{stroke:#eee}svg .tick,svg .axis{fill:#444}
svg .title{font-weight:600;font-size:13px}
svg .series{fill:none;stroke-width:1.8}svg .dot{fill:#000}
svg .tip rect{fill:#fff;stroke:#333}svg .tip text{font-size:12px}
.legend{list-style:none;padding:0;margin:4px 0 0;display:flex;flex-wrap:wrap;gap:4px 14px;
 font-size:.88em}
.pictures{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:16px}
.pictures img{max-width:100%;height:auto;border:1px solid var(--line)}
figcaption{font-size:.9em;color:var(--muted)}figure.missing{color:var(--muted)}
table.runs td code{word-break:break-all}table.runs th{white-space:nowrap}
details{margin:8px 0}summary{cursor:pointer}table.config{font-size:.85em}
@media print{
 nav,svg .tip,svg .dot{display:none!important}
 body{font:10pt/1.3 Georgia,serif;max-width:none;padding:0;color:#000}
 h2{break-after:avoid}figure,table,svg,tr,.chart-box{break-inside:avoid}
 .charts{grid-template-columns:1fr 1fr}.pictures{grid-template-columns:1fr 1fr}
 td.best{background:none;font-weight:bold}mark{background:none;outline:1px solid #000}
 .scroll{overflow:visible}summary{list-style:none}a{color:#000;text-decoration:none}
}
"""

PRINT_JS = (
    "window.addEventListener('beforeprint',function(){"
    "document.querySelectorAll('details').forEach(function(d){d.open=true;});});"
)


def render_report(
    runs: Sequence[Run], pictures: Pictures | None = None, title: str | None = None
) -> str:
    """Read runs (``collect.read_runs``) -> the page's HTML text."""
    colors = run_colors(runs)
    title = title or "mimkit runs: " + ", ".join(r.name for r in runs)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sections = [
        ("runs", "Runs", runs_section(runs, colors)),
        ("evaluations", "Evaluations", evaluations_section(runs, colors)),
        ("curves", "Training curves", curves_section(runs, colors)),
        ("pictures", "Pictures", pictures_section(runs, pictures, colors)),
        ("config", "Configuration", config_section(runs, colors)),
    ]
    nav = "".join(f'<li><a href="#{sid}">{esc(name)}</a></li>' for sid, name, _ in sections)
    body = "".join(
        f'<section id="{sid}" aria-labelledby="{sid}-h"><h2 id="{sid}-h">{esc(name)}</h2>'
        f"{content}</section>"
        for sid, name, content in sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>"
        f'<p class="note">{len(runs)} runs, made by mimkit on {when}.</p></header>'
        f'<nav aria-label="sections"><ul>{nav}</ul></nav><main>{body}</main>'
        f"<script>{TOOLTIP_JS}{PRINT_JS}</script></body></html>\n"
    )


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    pictures: Pictures | None = None,
    title: str | None = None,
) -> Path:
    """Run folders -> one self-contained HTML page at ``out`` (``out/report.html`` when
    ``out`` is a folder); returns its path."""
    runs = read_runs(run_dirs)
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, render_report(runs, pictures, title))
