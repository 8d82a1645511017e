"""Readable A/B reports: comparison.json, report.md and a self-contained report.html with plots."""
from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from recsys import fsio


def _plot_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(c) -> dict:
    """Three figures as base64 PNG: metric bars with CI whiskers, segment deltas, per-user deltas."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = {}
    rows = [r for r in c.metrics if not r.name.startswith("novelty")]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.a for r in rows], 0.4, label=f"A {c.a.model}")
    # the whisker is B's mean plus the paired CI of the difference, i.e. where B could be relative to A
    err = np.array([[r.delta - r.ci_low, r.ci_high - r.delta] for r in rows]).T
    ax.bar(x + 0.2, [r.b for r in rows], 0.4, yerr=err, capsize=3, label=f"B {c.b.model}")
    ax.set_xticks(x, [r.name for r in rows], rotation=30)
    ax.legend()
    ax.set_title("metrics (whiskers: 95% CI of B - A)")
    out["metrics"] = _plot_png(fig)
    segs = c.segments
    fig, ax = plt.subplots(figsize=(8, 3.2))
    y = np.arange(len(segs))
    ax.errorbar([s.delta for s in segs], y, xerr=np.array([[s.delta - s.ci_low, s.ci_high - s.delta]
                                                          for s in segs]).T, fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(y, [f"{s.name} (n={s.n_users})" for s in segs])
    ax.set_title(f"B - A on {c.primary_metric} by segment (95% CI)")
    out["segments"] = _plot_png(fig)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    d = np.asarray(c.per_user_delta)
    ax.hist(d, bins=41)
    ax.axvline(0, color="grey", lw=1)
    ax.set_title(f"per-user B - A on {c.primary_metric} ({(d > 0).sum()} up, {(d < 0).sum()} down, "
                 f"{(d == 0).sum()} tied)")
    out["deltas"] = _plot_png(fig)
    return out


def markdown(c) -> str:
    """The report as markdown (report.md, and what `recsys compare` prints)."""
    lines = [f"# Offline A/B: {c.a.version} (A) vs {c.b.version} (B)", "",
             f"**{c.verdict}**", "",
             f"Dataset `{c.dataset_id}`, split `{c.split}`, full-catalog ranking with seen items excluded. "
             f"Effects are mean per-user differences B - A; 95% CIs by paired bootstrap over users; p-values by a "
             f"paired sign-flip permutation test.", "",
             f"A: {c.a.model} (users by source: {c.a.sources}); "
             f"B: {c.b.model} (users by source: {c.b.sources})", "",
             "| metric | A | B | B - A | 95% CI | p |", "|---|---|---|---|---|---|"]
    for r in c.metrics:
        lines.append(f"| {r.name} | {r.a:.4f} | {r.b:.4f} | {r.delta:+.4f} | "
                     f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.p_value:.3g} |")
    for k, v in c.list_level.items():
        lines.append(f"| {k} (list level) | {v['a']:.4f} | {v['b']:.4f} | {v['b'] - v['a']:+.4f} | | |")
    lines += ["", f"## Segments ({c.primary_metric} unless noted)", "",
              "| segment | users | A | B | B - A | 95% CI | p |", "|---|---|---|---|---|---|---|"]
    for s in c.segments:
        lines.append(f"| {s.name} | {s.n_users} | {s.a:.4f} | {s.b:.4f} | {s.delta:+.4f} | "
                     f"[{s.ci_low:+.4f}, {s.ci_high:+.4f}] | {s.p_value:.3g} |")
    pop = c.popularity_metrics
    if pop:
        lines += ["", f"Popularity baseline on the same users: {c.primary_metric} {pop.get(c.primary_metric, 0):.4f}"]
    return "\n".join(lines) + "\n"


def _md_table_to_html(md: str) -> str:
    """The markdown report as simple HTML (tables, headings, bold) without a markdown dependency."""
    out, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [html.escape(x.strip()) for x in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{x}</th>" for x in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("**"):
            out.append(f"<p class='verdict'>{html.escape(line.strip('*'))}</p>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)


def html_report(c, md: str) -> str:
    """A self-contained HTML page: the markdown report and the plots inlined as PNG."""
    figs = plots(c)
    imgs = "".join(f"<h2>{t}</h2><img src='data:image/png;base64,{figs[k]}'/>"
                   for k, t in (("metrics", "Metrics"), ("segments", "Segments"), ("deltas", "Per-user deltas")))
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.verdict{font-size:1.2em;font-weight:bold}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>recsys A/B</title><style>{style}</style></head>" \
           f"<body>{_md_table_to_html(md)}{imgs}</body></html>"


def write_report(c, out_dir: str) -> dict:
    """comparison.json, report.md, report.html under `out_dir`; returns their paths."""
    fsio.makedirs(out_dir)
    md = markdown(c)
    paths = {"json": fsio.join(out_dir, "comparison.json"), "md": fsio.join(out_dir, "report.md"),
             "html": fsio.join(out_dir, "report.html")}
    fsio.atomic_write_text(paths["json"], json.dumps(c.to_dict(), indent=2))
    fsio.atomic_write_text(paths["md"], md)
    fsio.atomic_write_text(paths["html"], html_report(c, md))
    return paths
