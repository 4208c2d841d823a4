"""``workdir/report/report.md`` + PNG figures, from the stage records of a workdir.

Figures: best-so-far validation accuracy vs evaluations per search method; predicted vs
measured accuracy of the meta-searcher's candidates on the new task; training curves of
the final model; a drawing of the found architecture (one box per layer). Only stages that
finished are shown, so the report can be written at any point.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _load(workdir: Path):
    from metanas_jax.workdir import STAGES, stage_record
    return {st: (rec[2] if (rec := stage_record(workdir, st)) else None) for st in STAGES}


def plot_search(results: dict, path: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results.items():
        bsf = np.maximum.accumulate(np.asarray(r["scores"]))
        ax.plot(np.arange(1, len(bsf) + 1), bsf, label=name)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best validation accuracy so far")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_predicted(r: dict, path: Path):
    plt = _plt()
    pred = [p for p in r["predicted"]]
    keep = [i for i, p in enumerate(pred) if p is not None]
    fig, ax = plt.subplots(figsize=(4, 4))
    x = np.asarray([pred[i] for i in keep])
    y = np.asarray([r["scores"][i] for i in keep])
    sc = ax.scatter(x, y, c=np.arange(len(keep)), cmap="viridis", s=14)
    fig.colorbar(sc, ax=ax, label="evaluation #")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("predicted accuracy (before evaluation)")
    ax.set_ylabel("measured validation accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    from metanas_jax.search import kendall_tau
    return float(kendall_tau(x, y)) if len(keep) > 2 else float("nan")


def plot_training(history: list, path: Path):
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.plot(ep, [h["train_loss"] for h in history])
    a.set_xlabel("epoch")
    a.set_ylabel("train loss")
    b.plot(ep, [h["train_acc"] for h in history], label="train (augmented)")
    b.plot(ep, [h["val_acc"] for h in history], label="validation")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


OP_COLORS = {"conv3x3": "#4c72b0", "conv5x5": "#55a868", "sep_conv3x3": "#c44e52",
             "sep_conv5x5": "#8172b2", "dil_conv3x3": "#ccb974", "max_pool3x3": "#64b5cd",
             "identity": "#cccccc"}


def plot_arch(arch_string: str, path: Path):
    """Boxes left to right: stem, one per layer (height ~ width, '/2' = stride 2), head."""
    plt = _plt()
    layers = [p.strip() for p in arch_string.split("|")]
    fig, ax = plt.subplots(figsize=(1.6 * (len(layers) + 2), 2.6))
    widths = []
    for p in layers:
        body = p.replace("/2", "").replace("+res", "")
        widths.append(int(body.rpartition("-")[2]))
    wmax = max(widths)
    boxes = [("stem", None, 0.5, "#eeeeee")] + [
        (p, w, 0.3 + 0.7 * w / wmax, OP_COLORS.get(p.replace("/2", "").replace("+res", "").rpartition("-")[0], "#999"))
        for p, w in zip(layers, widths)] + [("pool + dense", None, 0.5, "#eeeeee")]
    for i, (label, _, h, color) in enumerate(boxes):
        ax.add_patch(_plt().Rectangle((i * 1.4, -h / 2), 1.0, h, color=color, ec="k"))
        ax.text(i * 1.4 + 0.5, 0, label.replace(" ", "\n").replace("-", "\n", 1), ha="center",
                va="center", fontsize=7)
        if i:
            ax.annotate("", (i * 1.4, 0), (i * 1.4 - 0.4, 0), arrowprops={"arrowstyle": "->"})
        if "+res" in label:
            ax.annotate("", (i * 1.4 + 1.0, h / 2 + 0.05), (i * 1.4 - 0.4, h / 2 + 0.05),
                        arrowprops={"arrowstyle": "->", "connectionstyle": "arc3,rad=-0.4", "color": "gray"})
    ax.set_xlim(-0.2, len(boxes) * 1.4)
    ax.set_ylim(-0.8, 0.9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(text: str) -> str:
    """Markdown table cell: architecture strings contain '|'."""
    return str(text).replace("|", "\\|")


def _cv_section(cv: dict) -> list[str]:
    """The evaluator's k-fold meta-evaluation over source tasks: per fold and mean +- std."""
    keys = (("before", "tau before"), ("after", "tau after"), ("regret_before", "regret before"),
            ("regret_after", "regret after"), ("regret_random", "regret random"),
            ("linear_tau", "linear probe tau"))
    keys = tuple(k for k in keys if k[0] in cv["mean"])  # (records from before the probe)
    lines = ["## Evaluator, cross-validated over source tasks", "",
             f"{cv['k']} folds: meta-trained on the other folds, measured on the held-out tasks' "
             f"architectures (Kendall tau, top-{cv['top_k']} regret) before and after adapting to "
             f"{cv['n_observed']} of their scored architectures. Linear probe: a ridge regression "
             f"from the same features fitted on the same folds; an evaluator below it underfits.", "",
             "| fold | held-out tasks | " + " | ".join(k[1] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for f, row in enumerate(cv["folds"]):
        lines.append(f"| {f} | {len(row['held_out'])} | " + " | ".join(f"{row[k]:.3f}" for k, _ in keys) + " |")
    lines.append("| mean +- std | | " + " | ".join(f"{cv['mean'][k]:.3f} +- {cv['std'][k]:.3f}"
                                             for k, _ in keys) + " |")
    return lines + [""]


def _data_section(d: dict) -> list[str]:
    im = d["images"]
    shape = "x".join(str(n) for n in d["image_shape"])
    return ["## Data", "",
            f"- source (meta-training tasks): `{d['source']}`",
            f"- target: `{d['target']}`, {d['num_classes']} classes, images {shape} (as trained "
            f"and tested), {im['train']} train / {im['val']} validation / {im['test']} test "
            f"(search candidates: {im['search_train']} train / {im['search_val']} validation)", ""]


def write_report(workdir) -> Path:
    """Write ``workdir/report/report.md`` (+ figures) and return its path."""
    workdir = Path(workdir)
    out = workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    recs = _load(workdir)
    cfg = json.loads((workdir / "config.json").read_text()) if (workdir / "config.json").is_file() else {}
    missing = [st for st, rec in recs.items() if not rec]
    lines = [f"# metanas report: {cfg.get('name', workdir.name)}"
             + (f" (incomplete: {', '.join(missing)} not finished)" if missing else ""), ""]
    if (workdir / "data.json").is_file():
        lines += _data_section(json.loads((workdir / "data.json").read_text()))
    rows = [("stage", "seconds", "notes")]
    m = recs["meta-train"]
    if m and m.get("phase") == "metanas":  # gradient-based branch: query loss/acc per meta-step
        h = np.asarray(m["history"], np.float64).reshape(-1, 2)
        k = max(1, min(10, len(h) // 2))
        rows.append(("meta-train", f"{m['seconds']:.1f}",
                     f"MetaNAS, {len(h)} meta-steps: query accuracy after adaptation "
                     f"{h[:k, 1].mean():.3f} (first {k}) -> {h[-k:, 1].mean():.3f} (last {k}); "
                     f"meta-architecture `{_cell(m.get('meta_arch', ''))}`"))
    elif m:
        rows.append(("meta-train", f"{m['seconds']:.1f}",
                     f"experience mean acc {m.get('experience_mean_acc', float('nan')):.3f}; strategy "
                     + ", ".join(f"{k} {v:.3g}" for k, v in m.get("strategy", {}).items())))
    s = recs["search"]
    if s:
        rows.append(("search", f"{s['seconds']:.1f}", f"methods {', '.join(s['results'])}"))
    t = recs["train"]
    if t:
        rows.append(("train", f"{t['seconds']:.1f}", f"{t['epochs']} epochs, {t['compute_dtype']}"))
    lines += ["## Stages", "", "| " + " | ".join(rows[0]) + " |", "|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]] + [""]
    if missing:
        lines += [f"Stages not finished in this workdir (not shown): {', '.join(missing)}.", ""]
    from metanas_jax.workdir import search_warnings
    warnings = (m or {}).get("warnings", []) + (search_warnings(s["results"]) if s else [])
    if warnings:
        lines += ["## Warnings", ""] + [f"- **{w}**" for w in warnings] + [""]
    if m and m.get("cv"):
        lines += _cv_section(m["cv"])
    if s:
        res = s["results"]
        plot_search(res, out / "search.png")
        lines += ["## Search on the new task", "",
                  "| method | evaluations | picked by | val acc | found at | picked architecture |",
                  "|---|---|---|---|---|---|"]
        for name, r in res.items():
            i = int(r.get("best_index", np.argmax(r["scores"])))
            lines.append(f"| {name} | {len(r['scores'])} | {r.get('picked_by', 'score')} | "
                         f"{r['scores'][i]:.4f} | {i + 1} | `{_cell(r.get('best_arch', ''))}` |")
        lines += ["", "![best so far](search.png)", ""]
        for name, r in res.items():
            if r.get("finalists"):
                f0 = r["finalists"][0]
                lines += [f"Finalists of `{name}` (its best-scored candidates, trained {f0['epochs']} "
                          f"epochs on {f0['train_images']} images; the best validation accuracy is "
                          f"handed over):", "", "| found at | proxy val | trained val | architecture |",
                          "|---|---|---|---|"]
                lines += [f"| {f['index'] + 1} | {f['proxy_val']:.4f} | {f['val_acc']:.4f} | `{_cell(f['arch'])}` |"
                          for f in r["finalists"]] + [""]
        for name in ("meta", "scratch"):
            if name in res and any(p is not None for p in res[name]["predicted"]):
                tau = plot_predicted(res[name], out / f"predicted_{name}.png")
                lines += [f"Predicted vs measured accuracy of the `{name}` searcher's candidates "
                          f"(Kendall tau {tau:.3f}):", "", f"![predicted]({f'predicted_{name}.png'})", ""]
    if t:
        plot_training(t["history"], out / "training.png")
        plot_arch(t["arch"], out / "arch.png")
        lines += ["## Final model", "",
                  "| architecture | params | val acc | test acc | epochs |", "|---|---|---|---|---|",
                  f"| `{_cell(t['arch'])}` | {t['params']} | {t['val_acc']:.4f} | {t['test_acc']:.4f} | {t['epochs']} |",
                  "", "![architecture](arch.png)", "", "![training curves](training.png)", "",
                  f"Exported to `{(workdir / 'export').as_posix()}` "
                  "(`metanas_jax.load_model(dir)`)."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
