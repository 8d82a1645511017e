"""The A/B report a team puts on the screen: comparison.json, report.md and a self-contained
report.html (the markdown rendered by the `markdown` library, plots inlined as PNG).

Reading order: a title naming both models, one verdict, what was compared, the metric table (with
p-values adjusted for multiple comparisons), plots, segments, popularity bias, sample lists, and
for each personalized arm a look at its item embeddings (recsys/evaluation/inspect.py).
"""
from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

from recsys import fsio

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
A_COLOUR, B_COLOUR, HELD_COLOUR = PALETTE[0], PALETTE[1], PALETTE[2]


def png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def fmt_p(p: float | None) -> str:
    """A p-value for people: "< 0.001" below it, else three decimals."""
    if p is None:
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _signed(x: float, digits: int = 4) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display: nightly jobs, servers)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _forest(ax, rows, xlabel: str):
    y = np.arange(len(rows))[::-1]
    d = np.array([r.delta for r in rows])
    err = np.array([[r.delta - r.ci_low, r.ci_high - r.delta] for r in rows]).T
    colours = [B_COLOUR if r.ci_low > 0 else A_COLOUR if r.ci_high < 0 else "#777777" for r in rows]
    for yi, di, lo, hi, colour in zip(y, d, err[0], err[1], colours):
        ax.errorbar([di], [yi], xerr=[[lo], [hi]], fmt="o", color=colour, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [r.name for r in rows])
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def plots(c) -> dict:
    """The figures as PNG bytes, keyed by section."""
    plt = pyplot()
    out = {}
    rows = [r for r in c.metrics if not r.name.startswith("novelty")]
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(rows) + 1.2))
    _forest(ax, rows, "B − A (metric units); bars: 95% paired-bootstrap CI")
    ax.set_title("Per-metric difference B − A (orange: B better, blue: A better, grey: CI spans 0)", fontsize=9)
    out["metrics"] = png(fig)
    segs = [s for s in c.segments if not s.too_few]
    if segs:
        fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(segs) + 1.2))
        _forest(ax, segs, f"B − A on {c.primary_metric}; bars: 95% CI")
        ax.set_yticks(np.arange(len(segs))[::-1], [f"{s.name} (n={s.n_users})" for s in segs])
        ax.set_title("By segment", fontsize=9)
        out["segments"] = png(fig)
    d = np.asarray(c.per_user_delta)
    fig, ax = plt.subplots(figsize=(7.5, 3))
    ax.hist(d, bins=41, color=B_COLOUR)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"per-user B − A on {c.primary_metric}")
    ax.set_ylabel("users")
    ax.set_title(f"{(d > 0).sum()} users better with B, {(d < 0).sum()} worse, {(d == 0).sum()} tied", fontsize=9)
    out["deltas"] = png(fig)
    ctx = c.context
    if ctx.get("popularity_deciles"):
        pd_ = ctx["popularity_deciles"]
        arms = ctx["arms"]
        fig, ax = plt.subplots(figsize=(7.5, 3))
        x = np.arange(1, 11)
        for off, key, colour, label in ((-0.27, "a", A_COLOUR, f"A: {arms['a']['model']}"),
                                        (0, "b", B_COLOUR, f"B: {arms['b']['model']}"),
                                        (0.27, "held_out", HELD_COLOUR, "held-out items")):
            ax.bar(x + off, np.asarray(pd_[key]) * 100, 0.27, color=colour, label=label)
        ax.set_xticks(x, [f"{i}" for i in x])
        ax.set_xlabel("item popularity decile (1 = the most popular tenth of the catalog by training interactions)")
        ax.set_ylabel(f"% of top-{pd_['k']} items")
        ax.legend(fontsize=8)
        ax.set_title("Popularity bias: where the recommended items come from", fontsize=9)
        out["popularity"] = png(fig)
        cov, nov = ctx.get("coverage", {}), ctx.get("novelty", {})
        if cov.get("a") is not None and nov.get("a") is not None:
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.5, 2.6))
            for ax_, vals, label, unit in ((ax1, cov, f"catalog coverage@{pd_['k']}", "share of the catalog shown"),
                                           (ax2, nov, f"novelty@{pd_['k']}", "bits (−log2 popularity share)")):
                ax_.bar([0, 1], [vals["a"], vals["b"]], color=[A_COLOUR, B_COLOUR])
                ax_.set_xticks([0, 1], [f"A: {arms['a']['model']}", f"B: {arms['b']['model']}"])
                ax_.set_title(label, fontsize=9)
                ax_.set_ylabel(unit, fontsize=8)
            fig.tight_layout()
            out["coverage"] = png(fig)
    return out


def title(c) -> str:
    """"two_tower (2026-11-26 10:00) vs popularity (2026-11-26 09:58)": B first, the candidate."""
    arms = c.context.get("arms")
    if not arms:
        return f"{c.b.model} ({c.b.version}) vs {c.a.model} ({c.a.version})"
    return f"{arms['b']['label']} vs {arms['a']['label']}"


def _sources(arm: dict) -> str:
    total = sum(arm["sources"].values()) or 1
    fb = arm["sources"].get("popularity_fallback", 0)
    parts = [f"{n} {s.replace('_', ' ')}" for s, n in arm["sources"].items()]
    return f"{', '.join(parts)} ({fb / total:.0%} fell back to popularity)"


def markdown(c) -> str:
    """The report as markdown (report.md; report.html renders it)."""
    from recsys.evaluation.compare import ADJUSTMENT, MIN_SEGMENT_USERS
    ctx = c.context
    lines = [f"# {title(c)}", "", f"**{c.verdict}**", ""]
    arms, ds = ctx.get("arms"), ctx.get("dataset")
    if arms and ds:
        times = ds.get("time_range", {})
        span = "; ".join(f"{k} {v[0]} to {v[1]}" for k, v in times.items())
        sample = f" (a seeded sample of {ds['users_total']})" if ds["users_total"] > ds["users_evaluated"] else ""
        lines += ["## What was compared", "",
                  f"- Dataset `{ds['id']}` ({span}), {ds['items']} items; held-out split `{ds['split']}`: "
                  f"{ds['users_evaluated']} users{sample}, full-catalog ranking, items seen before the split excluded.",
                  f"- A: **{arms['a']['label']}**, version `{arms['a']['version']}`; users by source: {_sources(arms['a'])}.",
                  f"- B: **{arms['b']['label']}**, version `{arms['b']['version']}`; users by source: {_sources(arms['b'])}."]
        for key in ("a", "b"):
            arm = arms[key]
            if arm["recipe"]:
                recipe = ", ".join(f"{k} {v}" for k, v in arm["recipe"].items())
                curve = " ".join(f"{x:.3f}" for x in arm["curve"])
                lines.append(f"- {key.upper()} recipe: {recipe}; best epoch {arm['best_epoch']}"
                             + (", then refit on train + validation" if arm["refit"] else "")
                             + (f"; validation recall@20 by epoch: {curve}" if curve else ""))
        lines.append("")
    lines += ["## Metrics", "",
              "Mean per-user difference B − A; 95% CI by paired bootstrap over users; p by a paired sign-flip "
              f"permutation test, adjusted for the {len(c.metrics)} metrics with {ADJUSTMENT} (raw p in "
              f"comparison.json). The verdict uses the raw p of the primary metric, {c.primary_metric}, chosen "
              "before looking.", "",
              "| metric | A | B | B − A | 95% CI | p (adjusted) |", "|---|---:|---:|---:|---:|---:|"]
    for r in c.metrics:
        name = f"**{r.name}**" if r.name == c.primary_metric else r.name
        lines.append(f"| {name} | {_fmt(r.a)} | {_fmt(r.b)} | {_signed(r.delta)} | "
                     f"[{_signed(r.ci_low)}, {_signed(r.ci_high)}] | {fmt_p(r.p_adjusted)} |")
    for k, v in c.list_level.items():
        lines.append(f"| {k} (list level) | {_fmt(v['a'])} | {_fmt(v['b'])} | {_signed(v['b'] - v['a'])} | | |")
    lines += ["", f"## Segments ({c.primary_metric})", "",
              f"User segments by activity and by whether the dataset's train split knew them; item segments: "
              f"recall of the head items (the most popular ones that make up half of training interactions) "
              f"and of the rest. Segments with fewer than {MIN_SEGMENT_USERS} users show no statistic; p "
              f"(1,000 sign flips, so never below 0.001) adjusted over the segments with {ADJUSTMENT}.", "",
              "| segment | users | A | B | B − A | 95% CI | p (adjusted) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in c.segments:
        if s.too_few:
            lines.append(f"| {s.name} | {s.n_users} | too few users | | | | |")
        else:
            lines.append(f"| {s.name} | {s.n_users} | {_fmt(s.a)} | {_fmt(s.b)} | {_signed(s.delta)} | "
                         f"[{_signed(s.ci_low)}, {_signed(s.ci_high)}] | {fmt_p(s.p_adjusted)} |")
    pop = c.popularity_metrics
    if pop:
        lines += ["", f"Popularity baseline on the same users: {c.primary_metric} {pop.get(c.primary_metric, 0):.4f}."]
    deciles = ctx.get("popularity_deciles")
    if deciles:
        head = lambda key: sum(deciles[key][:1]) * 100  # noqa: E731
        lines += ["", "## Popularity bias", "",
                  f"Share of top-{deciles['k']} items from the most popular tenth of the catalog: A {head('a'):.0f}%, "
                  f"B {head('b'):.0f}%, held-out items {head('held_out'):.0f}%."]
    if ctx.get("samples"):
        lines += ["", "## Sample recommendations", "",
                  "A few users picked with a fixed seed: their most recent items, what they did next (held out), "
                  "and each arm's top 10 (✓ = held out, i.e. a hit)."]
        for smp in ctx["samples"]:
            lines += ["", f"### User {smp['user']}", "",
                      f"Recently: {'; '.join(smp['history']) or '(no history)'}", "",
                      f"Held out: {'; '.join(smp['held_out'])}", "",
                      f"| rank | A: {arms['a']['model'] if arms else 'A'} | B: {arms['b']['model'] if arms else 'B'} |",
                      "|---:|---|---|"]
            for i in range(max(len(smp["a"]), len(smp["b"]))):
                cell = lambda arm: ((smp[arm][i] + (" ✓" if smp["hits_" + arm][i] else ""))  # noqa: E731
                                    if i < len(smp[arm]) else "")
                lines.append(f"| {i + 1} | {cell('a')} | {cell('b')} |")
    return "\n".join(lines) + "\n"


def _img(data: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'/>"


def html_report(c, md: str, inspections: list | None = None) -> str:
    """A self-contained HTML page: the markdown report, the plots, and the embedding inspections."""
    import markdown as md_lib
    from recsys.evaluation import inspect as inspect_mod
    figs = plots(c)
    body = md_lib.markdown(md, extensions=["tables"])
    # the plots go after the metric table and the segments they illustrate
    fig_html = {key: f"<figure>{_img(figs[key], key)}</figure>" for key in figs}
    body = body.replace("<h2>Segments", fig_html.get("metrics", "") + fig_html.get("deltas", "") + "<h2>Segments", 1)
    body = body.replace("<h2>Popularity bias</h2>", fig_html.get("segments", "") + "<h2>Popularity bias</h2>", 1)
    body = body.replace("<h2>Sample recommendations</h2>",
                        fig_html.get("popularity", "") + fig_html.get("coverage", "") + "<h2>Sample recommendations</h2>", 1)
    for ins in inspections or []:
        body += (f"<h2>Item embeddings of {html.escape(ins.model)} ({html.escape(ins.version)})</h2>"
                 f"<p>Share of an item's {ins.k} nearest neighbours (by the dot product the service ranks with) that "
                 f"share a value of {html.escape(ins.attribute)} with it: <b>{ins.neighbour_agreement:.3f}</b>, against "
                 f"{ins.random_agreement:.3f} for random items ({ins.items} items checked).</p>"
                 f"<figure>{_img(inspect_mod.map_png(ins), 'embedding map')}</figure>"
                 "<p>Items whose neighbours disagree most:</p><table><tr><th>item</th><th>title</th>"
                 f"<th>{html.escape(ins.attribute)}</th><th>agreement</th><th>training interactions</th></tr>"
                 + "".join(f"<tr><td>{html.escape(d['item'])}</td><td>{html.escape(str(d['title']))}</td>"
                           f"<td>{html.escape(d['value'])}</td><td>{d['agreement']:.2f}</td><td>{d['train_count']}</td></tr>"
                           for d in ins.disagreeing[:8]) + "</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3}"
             "figure{margin:1em 0}img{max-width:100%}"
             "p strong:first-child{font-size:1.15em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title(c))}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")


def arm_inspections(root: str, c) -> list:
    """An embedding inspection for each personalized arm (none for popularity, or without attributes)."""
    from recsys.errors import DataError
    from recsys.evaluation.inspect import inspect_version
    out = []
    for arm in (c.b, c.a):
        try:
            out.append(inspect_version(root, arm.version))
        except DataError:
            continue
    return out


def write_report(c, out_dir: str, inspections: list | None = None) -> dict:
    """comparison.json, report.md, report.html under `out_dir`; returns their paths."""
    fsio.makedirs(out_dir)
    md = markdown(c)
    paths = {"json": fsio.join(out_dir, "comparison.json"), "md": fsio.join(out_dir, "report.md"),
             "html": fsio.join(out_dir, "report.html")}
    data = c.to_dict()
    if inspections:
        data["embeddings"] = [i.to_dict() for i in inspections]
    fsio.atomic_write_text(paths["json"], json.dumps(data, indent=2, default=float))
    fsio.atomic_write_text(paths["md"], md)
    fsio.atomic_write_text(paths["html"], html_report(c, md, inspections))
    return paths
