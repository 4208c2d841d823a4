"""The README's transfer-results table, generated from ``benchmarks/results/*.json``.

    python benchmarks/results_table.py            # print the table
    python benchmarks/results_table.py --write    # replace it in README.md

The README holds the table between ``<!-- transfer-results -->`` markers;
``tests/test_readme.py`` checks that it equals what this script prints, so no figure in it
is typed by hand or goes stale.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARK = "<!-- transfer-results -->"
LABELS = {"meta": "meta-searcher (meta-trained evaluator + strategy)",
          "scratch": "same searcher, no meta-training", "evolution": "regularized evolution",
          "random": "random search", "reference": "hand-designed reference (not searched)"}


def _pm(d, scale=100.0):
    if not d or d.get("mean") is None:
        return "-"
    digits = 1 if scale == 100.0 else 3
    std = f" +- {d['std'] * scale:.{digits}f}" if d.get("std") is not None else ""
    return f"{d['mean'] * scale:.{digits}f}{std}"


def _images(n) -> str:
    return "all images" if n in (None, "all") else f"{n:,} images"


def table() -> str:
    lines = []
    path = RESULTS / "tinyimagenet_to_cifar10_cpu.json"
    if path.is_file():
        r = json.loads(path.read_text())
        ks = sorted(int(k.rsplit("_", 1)[1]) for k in next(iter(r["methods"].values())) if k.startswith("best_val_after_"))
        lines += [f"Tiny ImageNet -> CIFAR-10, CPU scale (`{path.relative_to(ROOT)}`; {len(r['seeds'])} seeds, "
                  f"mean +- std, accuracy in %; proxy = the candidate's short training; common training = "
                  f"{r['common_epochs']} epochs of the final recipe on {_images(r.get('common_train_images'))} "
                  f"of the train split, then test):", "",
                  "| method | " + " | ".join(f"proxy val, best of {k}" for k in ks) + " | common training, test |",
                  "|---|" + "---|" * (len(ks) + 1)]
        for m, row in r["methods"].items():
            cols = [_pm(row.get(f"best_val_after_{k}")) for k in ks]
            lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cols) + f" | {_pm(row['common_test_acc'])} |")
        ev = r["evaluator"]
        lines += ["", f"Evaluator, 5-fold cross-validated on held-out source tasks (mean over seeds): "
                  f"Kendall tau {ev['before']['mean']:.3f} before / {ev['after']['mean']:.3f} after adaptation; "
                  f"top-1 regret {ev['regret_after']['mean'] * 100:.1f} points vs {ev['regret_random']['mean'] * 100:.1f} "
                  f"for random choice; NAS-experience accuracy {ev['experience_mean_acc']['mean'] * 100:.1f}% "
                  f"(chance {100 / r['config']['data']['n_classes']:.0f}%). On the target, Kendall tau of the "
                  f"meta-searcher's predictions vs the measured proxy accuracy of its candidates: "
                  f"{_pm(r['methods']['meta'].get('target_tau'), 1.0)}."]
    path = RESULTS / "proxy_fidelity_cifar10_cpu.json"
    if path.is_file():
        r = json.loads(path.read_text())
        ref = r["reference"]
        ref_mean = sum(ref["scores"]) / len(ref["scores"])
        lines += ["", f"Candidate proxies on CIFAR-10 against a long training (`{path.relative_to(ROOT)}`; "
                  f"{r['archs']} architectures of the CPU space; long training = {ref['steps']} SGD steps on "
                  f"{ref['train_images']} images, {ref['seconds_per_arch']:.0f} s each, mean validation accuracy "
                  f"{ref_mean * 100:.1f}%; chance {r['chance'] * 100:.0f}%; seconds measured at load average "
                  f"{r['machine']['load_avg'][0]:.1f} on {r['machine']['cores']} cores):", "",
                  "| proxy (full-batch Adam) | Kendall tau | seconds / architecture | mean accuracy |",
                  "|---|---|---|---|"]
        for name, p in sorted(r["proxies"].items(), key=lambda kv: -kv[1]["tau_per_second"]):
            lines.append(f"| {name} | {p['tau']:.2f} | {p['seconds_per_arch']:.1f} | {p['mean'] * 100:.1f}% |")
    return "\n".join(lines).strip("\n")


def readme_block(text: str) -> str | None:
    parts = text.split(MARK)
    return parts[1].strip("\n") if len(parts) == 3 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    t = table()
    if not args.write:
        print(t)
        return
    readme = ROOT / "README.md"
    text = readme.read_text()
    parts = text.split(MARK)
    if len(parts) != 3:
        raise SystemExit(f"README.md must hold exactly two {MARK} markers")
    readme.write_text(parts[0] + MARK + "\n" + t + "\n" + MARK + parts[2])


if __name__ == "__main__":
    main()
