"""The A/B report a team puts on the screen: comparison.json, report.md and a self-contained
report.html (the markdown rendered by the `markdown` library, plots inlined as PNG).

Reading order: a title naming both models, one verdict, what was compared, the metric table (with
p-values adjusted for multiple comparisons), plots, segments, popularity bias, sample lists, and
for each personalized arm a look at its item embeddings (recsys/evaluation/inspection.py).
"""
from __future__ import annotations

import base64
import html
import json

import numpy as np

from recsys import fsio, registry, version as version_mod
from recsys.data.dataset import Dataset, leak_warning
from recsys.evaluation.compare import ADJUSTMENT, MIN_SEGMENT_USERS, Comparison
from recsys.models import MODELS
from recsys.evaluation.inspection import inspect_version, main_attribute, map_png
from recsys.evaluation.plotting import PALETTE, png, pyplot

A_COLOUR, B_COLOUR, HELD_COLOUR = PALETTE[0], PALETTE[1], PALETTE[2]


def fmt_p(p: float | None) -> str:
    """A p-value for people: "< 0.001" below it, else three decimals."""
    if p is None:
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _signed(x: float, digits: int = 4) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


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


def plots(c, ctx: dict) -> dict:
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


def title(c, ctx: dict) -> str:
    """"two_tower (2026-11-26 10:00) vs popularity (2026-11-26 09:58)": B first, the candidate."""
    arms = ctx.get("arms")
    if not arms:
        return f"{c.b.model} ({c.b.version}) vs {c.a.model} ({c.a.version})"
    return f"{arms['b']['label']} vs {arms['a']['label']}"


def _sources(arm: dict) -> str:
    total = sum(arm["sources"].values()) or 1
    fb = arm["sources"].get("popularity_fallback", 0)
    parts = [f"{n} {s.replace('_', ' ')}" for s, n in arm["sources"].items()]
    return f"{', '.join(parts)} ({fb / total:.0%} fell back to popularity)"


_EXCLUDED = {"seen": "items seen before the split excluded", "bought": "items bought before the split excluded",
             "none": "nothing excluded (users' own items stay recommendable: exclusion none)"}


def _leak_lines(ds: dict) -> list:
    """The split and the leak detector's share (stats.json "leak"), with its warning when above 5%."""
    leak = ds.get("leak")
    if not leak or not leak.get("targets"):
        return []
    line = (f"- Split `{ds.get('strategy')}`: {leak['share']:.1%} of the held-out targets ({leak['leaked']} of "
            f"{leak['targets']}) were touched by the same user shortly before, in the history the models are "
            f"queried with (the leak detector).")
    return [line] + ([f"- **{ds['leak_warning']}**"] if ds.get("leak_warning") else [])


def markdown(c, ctx: dict) -> str:
    """The report as markdown (report.md; report.html renders it)."""
    lines = [f"# {title(c, ctx)}", "", f"**{c.verdict}**", ""]
    arms, ds = ctx.get("arms"), ctx.get("dataset")
    if arms and ds:
        times = ds.get("time_range", {})
        span = "; ".join(f"{k} {v[0]} to {v[1]}" for k, v in times.items())
        sample = f" (a seeded sample of {ds['users_total']})" if ds["users_total"] > ds["users_evaluated"] else ""
        lines += ["## What was compared", "",
                  f"- Dataset `{ds['id']}` ({span}), {ds['items']} items; held-out split `{ds['split']}`: "
                  f"{ds['users_evaluated']} users{sample}, full-catalog ranking, {_EXCLUDED[ds.get('exclusion', 'seen')]}.",
                  *_leak_lines(ds),
                  f"- A: **{arms['a']['label']}**, version `{arms['a']['version']}`; users by source: {_sources(arms['a'])}.",
                  f"- B: **{arms['b']['label']}**, version `{arms['b']['version']}`; users by source: {_sources(arms['b'])}."]
        for key in ("a", "b"):
            arm = arms[key]
            if arm.get("rule"):
                counted = arm["recipe"].get("rule on")
                lines.append(f"- {key.upper()} is a rule (no training" + (f"; taste counted in {counted}" if counted else "")
                             + ").")
            elif arm["recipe"]:
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


def html_report(c, ctx: dict, md: str, inspections: list | None = None) -> str:
    """A self-contained HTML page: the markdown report, the plots, and the embedding inspections."""
    import markdown as md_lib
    figs = plots(c, ctx)
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
                 f"<figure>{_img(map_png(ins), 'embedding map')}</figure>"
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
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title(c, ctx))}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")


def arm_inspections(root: str, c) -> list:
    """An embedding inspection for each personalized arm (none for popularity, or without attributes)."""
    from recsys.errors import DataError
    out = []
    for arm in (c.b, c.a):
        try:
            out.append(inspect_version(root, arm.version))
        except DataError:
            continue
    return out


def write_report(root: str, c: Comparison, out_dir: str) -> dict:
    """comparison.json, report.md, report.html under `out_dir` (the context, samples and embedding
    inspections read from `root`); returns their paths."""
    ctx = context(root, c)
    inspections = arm_inspections(root, c)
    fsio.makedirs(out_dir)
    md = markdown(c, ctx)
    paths = {"json": fsio.join(out_dir, "comparison.json"), "md": fsio.join(out_dir, "report.md"),
             "html": fsio.join(out_dir, "report.html")}
    data = {**c.to_dict(), "context": ctx}
    if inspections:
        data["embeddings"] = [i.to_dict() for i in inspections]
    fsio.atomic_write_text(paths["json"], json.dumps(data, indent=2, default=float))
    fsio.atomic_write_text(paths["md"], md)
    fsio.atomic_write_text(paths["html"], html_report(c, ctx, md, inspections))
    return paths


def _arm_context(root: str, version: str, sources: dict) -> dict:
    """What a reader needs to know about one arm: model, when, key recipe, training curve."""
    m = version_mod.read_manifest(root, version)
    model_cfg = (m.get("config") or {}).get("model", {})
    training = m.get("training") or {}
    curve = [e.get("val_recall@20") for e in (m.get("selection") or {}).get("epochs") or training.get("epochs") or []]
    created = str(m.get("created_at", ""))[:16].replace("T", " ")
    alias = "published" if registry.current_version(root) == version else ""
    return {"version": version, "model": m.get("model"), "created": created, "alias": alias,
            "label": f"{m.get('model')} ({created}{', published' if alias else ''})",
            "recipe": _recipe(m.get("model"), {**model_cfg, **((training.get("chosen") or {}) and
                                                              {"rule_attribute": training["chosen"].get("attribute")})}),
            "rule": bool(m.get("model") in MODELS and MODELS[m.get("model")].rule),
            "best_epoch": (m.get("selection") or training).get("best_epoch"), "curve": [c for c in curve if c is not None],
            "sources": sources, "refit": "refit" in m}


def _recipe(model: str, model_cfg: dict) -> dict:
    """The settings a reader compares two trained arms by; a rule's is what it counts, if anything."""
    if model in MODELS and MODELS[model].rule:
        return {"rule on": model_cfg.get("rule_attribute") or "the default attribute"} \
            if model == "attribute_popularity" else {}
    recipe = {k: model_cfg.get(k) for k in ("dim", "temperature", "batch_size", "learning_rate", "epochs",
                                            "history_length") if k in model_cfg}
    if recipe.get("batch_size") == 0:
        recipe["batch_size"] = "auto"
    return recipe


def _deciles(topk: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Share of the listed items in each item-popularity decile (1 = the most popular tenth of the
    catalog by training interactions)."""
    order = np.argsort(-counts, kind="stable")
    decile = np.empty(len(counts), dtype=np.int64)
    decile[order] = np.arange(len(counts)) * 10 // max(len(counts), 1)
    items = topk[topk >= 0]
    return np.bincount(decile[items], minlength=10)[:10] / max(len(items), 1)


def context(root: str, c: Comparison, n_samples: int = 3, seed: int = 0) -> dict:
    """The report's "what was compared": both arms, the dataset and its time range, popularity bias
    of each arm's lists against the held-out items, and a few users' lists side by side (seeded)."""
    res_a, res_b = c.results
    ds = Dataset.open(root, res_b.dataset_id)
    ev_a, es = res_a.evaluation, res_b.eval_set
    users = ev_a.users
    counts = res_b.train_item_counts
    k = min(20, ev_a.topk.shape[1])
    held = es.relevant[users].tocsr()
    times = {}
    for split in ("train", res_b.split):
        t = ds.read(split, ["timestamp"])["timestamp"]
        if len(t):
            times[split] = [str(np.datetime64(int(t.min()), "s"))[:10], str(np.datetime64(int(t.max()), "s"))[:10]]
    items = ds.item_features()
    label = dict(zip(items["item"], items["title"].where(items["title"] != "", items["item"])))
    attr = main_attribute(items)
    if attr:   # "Heat (1995) [Action, Crime, Thriller]": the attribute a reader checks a list against
        for item, value in zip(items["item"], items[attr]):
            values = [value] if isinstance(value, str) else ([] if value is None or isinstance(value, float)
                                                               else list(value))
            if values:
                label[item] = f"{label[item]} [{', '.join(map(str, values))}]"
    ids = ds.items.ids
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(users), min(n_samples, len(users)), replace=False)) if len(users) else []
    samples = []
    for j in picks:
        row = users[j]
        held_out = set(es.relevant[row].indices)
        hist = [label.get(ids[i], ids[i]) for i in es.history[row] if i >= 0][:5]
        samples.append({"user": str(es.user_ids[row]), "history": hist,
                        "held_out": [label.get(ids[i], ids[i]) for i in es.relevant[row].indices][:5],
                        "a": [label.get(ids[i], ids[i]) for i in ev_a.topk[j, :10] if i >= 0],
                        "b": [label.get(ids[i], ids[i]) for i in res_b.evaluation.topk[j, :10] if i >= 0],
                        "hits_a": [bool(i in held_out) for i in ev_a.topk[j, :10] if i >= 0],
                        "hits_b": [bool(i in held_out) for i in res_b.evaluation.topk[j, :10] if i >= 0]})
    return {
        "arms": {"a": _arm_context(root, res_a.version, res_a.sources),
                 "b": _arm_context(root, res_b.version, res_b.sources)},
        "dataset": {"id": ds.id, "time_range": times, "items": len(ids), "users_evaluated": int(len(users)),
                    "users_total": res_b.users_total or int(len(users)), "split": res_b.split,
                    "exclusion": res_b.settings[3] if len(res_b.settings) > 3 else "seen",
                    "strategy": ds.stats.get("split_strategy"), "leak": (ds.stats.get("leak") or {}).get(res_b.split),
                    "leak_warning": leak_warning(ds.stats) if res_b.split == "test" else None},
        "popularity_deciles": {"a": _deciles(ev_a.topk[:, :k], counts).tolist(),
                               "b": _deciles(res_b.evaluation.topk[:, :k], counts).tolist(),
                               "held_out": _deciles(held.indices[None, :], counts).tolist(), "k": k},
        "coverage": {f"{arm}": res.metrics.get(f"coverage@{k}") for arm, res in (("a", res_a), ("b", res_b))},
        "novelty": {f"{arm}": res.metrics.get(f"novelty@{k}") for arm, res in (("a", res_a), ("b", res_b))},
        "samples": samples,
    }
