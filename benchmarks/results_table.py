"""The results blocks of README.md and benchmarks/README.md, generated from
``benchmarks/results/*.json``.

    python benchmarks/results_table.py            # print every block
    python benchmarks/results_table.py --write    # replace them in both files

Each file holds each of its blocks between two ``<!-- NAME -->`` markers (:data:`BLOCKS`:
name -> (file, function)); ``tests/test_readme.py`` checks that each equals what this script
prints, so no figure in them is typed by hand or goes stale. README.md keeps the headline
tables; benchmarks/README.md the supporting figures (proxy fidelity, final training, meta-step speed).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# published figures the few-shot rows are compared with (Finn et al., 2017, MAML)
PUBLISHED = {("conv4", 5, 1): "MAML 98.7%", ("conv4", 20, 1): "MAML 95.8%"}
# the transfer comparison of the CPU config as it is (48 tasks x 32 candidates of 256 images)
TRANSFER = "tinyimagenet_to_cifar10_cpu_48x32.json"
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


def transfer_table() -> str:
    lines = []
    path = RESULTS / TRANSFER
    if path.is_file():
        r = json.loads(path.read_text())
        ks = sorted(int(k.rsplit("_", 1)[1]) for k in next(iter(r["methods"].values())) if k.startswith("best_val_after_"))
        fin = int(r.get("finalists", 1))
        lines += [f"Tiny ImageNet -> CIFAR-10, CPU scale (`{path.relative_to(ROOT)}`; {len(r['seeds'])} seeds, "
                  f"mean +- std, accuracy in %; proxy = the candidate's short training; common training = "
                  f"{r['common_epochs']} epochs of the final recipe on {_images(r.get('common_train_images'))} "
                  f"of the train split, then test):", "",
                  "| method | " + " | ".join(f"proxy val, best of {k}" for k in ks) + " | common training, test |"
                  + (f" best of its top {fin} by common-training val, test |" if fin > 1 else ""),
                  "|---|" + "---|" * (len(ks) + 1 + (fin > 1))]
        for m, row in r["methods"].items():
            cols = [_pm(row.get(f"best_val_after_{k}")) for k in ks] + [_pm(row["common_test_acc"])]
            if fin > 1:
                cols.append(_pm(row.get("finalists_test_acc")))
            lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(cols) + " |")
        ev = r["evaluator"]
        lines += ["", f"Evaluator, 5-fold cross-validated on held-out source tasks (mean over seeds): "
                  f"Kendall tau {ev['before']['mean']:.3f} before / {ev['after']['mean']:.3f} after adaptation"
                  + (f" (a linear probe on the same folds: {ev['linear_tau']['mean']:.3f})"
                     if ev.get("linear_tau", {}).get("mean") is not None else "")
                  + f"; top-1 regret {ev['regret_after']['mean'] * 100:.1f} points vs {ev['regret_random']['mean'] * 100:.1f} "
                  f"for random choice; NAS-experience accuracy {ev['experience_mean_acc']['mean'] * 100:.1f}% "
                  f"(chance {100 / r['config']['data']['n_classes']:.0f}%). On the target, Kendall tau of the "
                  f"meta-searcher's predictions vs the measured proxy accuracy of its candidates: "
                  f"{_pm(r['methods']['meta'].get('target_tau'), 1.0)}."]
    return "\n".join(lines).strip("\n")


def benchmark_figures() -> str:
    """benchmarks/README.md's block: proxy fidelity and final training."""
    return "\n".join(proxy_fidelity() + final_training()).strip("\n")


def _load_range(runs) -> str:
    loads = [float(c["load"].split()[0]) for x in runs for c in x["curve"] if c.get("load")]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"


def _layout(r: dict) -> str:
    """The benchmarked space's layout options (a result from before an option: its default)."""
    sp = r.get("space", {})
    parts = ["2x2 max-pool downsampling" + (", pooled before batch norm" if sp.get("pool_before_norm") else "")
             if sp.get("reduction") == "pool" else "stride-2 convolutions"]
    if not sp.get("stem_norm", True):
        parts.append("stem without batch norm")
    parts.append({"relu": "ReLU", "gelu": "GELU"}.get(sp.get("activation", "relu"), sp.get("activation")))
    parts.append(f"global {sp.get('head_pool', 'mean')}-pooling")
    if sp.get("head_scale", 1.0) != 1.0:
        parts.append(f"logits x {sp['head_scale']:.3g}")
    return ", ".join(parts)


def proxy_fidelity() -> list[str]:
    """Lines for ``proxy_fidelity.py``'s latest result, its proxies summarised by the number
    of training images; the long training's test-retest tau when an earlier run scored the
    same architectures (the ceiling of any proxy's tau)."""
    path, earlier = RESULTS / "proxy_fidelity_cifar10_cpu_lrs.json", RESULTS / "proxy_fidelity_cifar10_cpu.json"
    if not path.is_file():
        return []
    from metanas_jax.search.evaluator import kendall_tau

    r = json.loads(path.read_text())
    ref = r["reference"]
    retest = ""
    if earlier.is_file():
        e = json.loads(earlier.read_text())["reference"]
        if e["archs"] == ref["archs"]:
            retest = (f"; the same long training run twice (`{earlier.relative_to(ROOT)}`) agrees "
                      f"with itself at Kendall tau **{kendall_tau(e['scores'], ref['scores']):.2f}**, "
                      f"the ceiling of any proxy's tau")
    lines = ["", f"Candidate proxies on CIFAR-10 against a long training (`{path.relative_to(ROOT)}`; "
             f"{r['archs']} architectures of the CPU space; long training = {ref['steps']} SGD steps on "
             f"{ref['train_images']} images, mean validation accuracy "
             f"{sum(ref['scores']) / len(ref['scores']) * 100:.1f}%, chance {r['chance'] * 100:.0f}%{retest}):", "",
             "| proxy training images | proxies (steps x Adam rates) | Kendall tau, mean (range) | seconds / architecture | mean accuracy |",
             "|---|---|---|---|---|"]
    by_images: dict[int, list] = {}
    for name, p in r["proxies"].items():
        by_images.setdefault(int(name.split(" x ")[1].split()[0]), []).append(p)
    for n, ps in sorted(by_images.items()):
        taus, secs = [p["tau"] for p in ps], [p["seconds_per_arch"] for p in ps]
        lines.append(f"| {n} | {len(ps)} | {sum(taus) / len(taus):.2f} ({min(taus):.2f} to {max(taus):.2f}) | "
                     f"{min(secs):.1f}-{max(secs):.1f} | {sum(p['mean'] for p in ps) / len(ps) * 100:.1f}% |")
    return lines


def _order(r: dict) -> str:
    """A downsampling layer's order of operations in a result's space."""
    sp = r.get("space", {})
    if sp.get("reduction") != "pool":
        return "stride-2 conv-BN-act"
    return "conv-pool-BN-act" if sp.get("pool_before_norm") else "conv-BN-act-pool"


def airbench_reference() -> list[str]:
    """The final-training table's last row and its note: airbench94 itself, in PyTorch, on
    the same images (``bench_train.py --airbench-seeds``)."""
    path = RESULTS / "airbench_torch_cifar10.json"
    r = json.loads(path.read_text()) if path.is_file() else {}
    if not r.get("airbench"):
        return []
    s, runs = r["airbench_summary"], r["airbench"]
    std = f" +- {s['test_acc_std'] * 100:.2f}" if s["test_acc_std"] is not None else ""
    loads = [float(x["load"].split()[0]) for x in runs]
    return [f"| `{path.name}`: airbench94 itself, PyTorch ({runs[0]['note']}) | conv-pool-BN-act "
            f"| PyTorch | PyTorch's | reflect | {runs[0]['hyp']['epochs']} | {s['n']} "
            f"| **{s['test_acc_mean'] * 100:.2f}{std}%** | {s['train_seconds_mean'] / 60:.0f} "
            f"| {min(loads):.1f}-{max(loads):.1f} |",
            "", "The last row is airbench94's own network and recipe (`benchmarks/torch_airbench.py`, "
            "unchanged but for the device) on the same images: what the reference itself reaches on this data at this "
            "budget. Its published 94% is on the original CIFAR-10 binaries; `../shared/data` holds "
            "JPEG re-encodings (quality 75, 4:2:0 chroma)."]


def final_training() -> list[str]:
    """Lines for ``bench_train.py``'s results: time-to-accuracy and step speed."""
    lines = []
    rows = []
    for path in sorted(RESULTS.glob("bench_train_cifar10*.json")):
        r = json.loads(path.read_text())
        s, runs = r["train_summary"], r["train"]
        cfg = runs[0]["recipe"]
        std = f" +- {s['test_acc_std'] * 100:.2f}" if s["test_acc_std"] is not None else ""
        impl = "auto (im2col, float32)" if cfg["conv_impl"] == "auto" else cfg["conv_impl"]
        rows.append((r, f"| `{path.name}` | {_order(r)} | {impl} | "
                        f"{cfg.get('kernel_init_scale', 1.0):.3g} | {cfg.get('crop_mode', 'zeros')} | "
                        f"{cfg['epochs']} | {s['n']} | "
                        f"**{s['test_acc_mean'] * 100:.2f}{std}%** | "
                        f"{s['train_seconds_mean'] / 60:.0f} | {_load_range(runs)} |"))
    if rows:
        r0 = rows[0][0]
        cfg = r0["train"][0]["recipe"]
        lines += ["", f"Final training on CIFAR-10 (the 50,000 train images, test split after the last epoch): "
                  f"the named `{r0['arch_name']}` network of the CIFAR space ({_layout(r0)}), the `fast` recipe "
                  f"({cfg['schedule']} schedule, peak lr {cfg['lr']}, batch {cfg['batch_size']}, EMA {cfg['ema']}, "
                  f"whitened stem, identity-initialised convolutions, test-time augmentation {cfg['tta']}), "
                  f"on {r0['machine']['cores']} cores; one row per result file (its per-epoch curve, "
                  f"command and machine are in the file). Minutes: of training, evaluation excluded; "
                  f"load: 1-minute load average while training, other jobs included.", "",
                  "| result file | layer order | conv_impl | kernel_init_scale | crop padding | epochs | seeds "
                  "| test accuracy | minutes | load |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [row for _, row in rows]
        lines += airbench_reference()
    # the step of the current spaces.CIFAR_SPACE (pool before batch norm); earlier files: LOG
    path = RESULTS / "bench_train_speed_conv_pool_bn.json"
    if path.is_file():
        r = json.loads(path.read_text())
        rows = {x["name"]: x for x in r["rows"]}
        lines += ["", f"One training step of `{r['arch_name']}` ({_layout(r)}), batch {r['rows'][-1].get('batch', '')}, same run "
                  f"(`{path.relative_to(ROOT)}`; peak = this machine's measured matmul FLOP/s: "
                  f"{rows['peak/f32']['gflops']:.0f} GFLOP/s f32, {rows['peak/bf16']['gflops']:.0f} bf16; "
                  f"a row's precision is its matmuls'):", "",
                  "| precision | JAX, lax.conv | JAX, im2col matmuls | JAX, im2col, float32 activations "
                  "(`matmul_bf16`) | % of peak (best) | PyTorch | best JAX / PyTorch |",
                  "|---|---|---|---|---|---|---|"]
        for dt in ("f32", "bf16"):
            cells = [rows.get(f"step/{impl}/{dt}") for impl in ("xla", "matmul")]
            cells.append(rows.get("step/matmul_bf16/f32") if dt == "bf16" else None)
            jax_rows = [x for x in cells if x]
            if not jax_rows:
                continue
            best = max(jax_rows, key=lambda x: x["images_per_s"])
            t = rows.get(f"torch/{dt}", {})
            torch_cell = f"{t['images_per_s']:.0f} images/s" if "images_per_s" in t else "-"
            ratio = f"{t['ratio']:.2f}" if "ratio" in t else "-"
            lines.append(f"| {dt} | " + " | ".join(f"{x['images_per_s']:.0f} images/s" if x else "-" for x in cells)
                         + f" | {best['pct_peak']:.0f}% | {torch_cell} | {ratio} |")
    return lines


def nb201_table() -> str:
    """``bench_nb201.py``'s table-lookup search comparison on NAS-Bench-201."""
    path = RESULTS / "nb201_cifar10.json"
    if not path.is_file():
        return ""
    r = json.loads(path.read_text())
    res = r["results"]
    ns = sorted(int(n) for n in next(iter(res.values()))["best_at"])
    seeds = next(iter(res.values()))["seeds"]
    lines = [f"NAS-Bench-201, CIFAR-10 column (optimum 94.37%), {seeds} seeds, every evaluation a table "
             f"look-up (`{path.relative_to(ROOT)}`, `{r['command']}`): mean best test accuracy (%) after N "
             f"evaluations; the meta-searcher is meta-trained on the CIFAR-100 and ImageNet16-120 columns.", "",
             "| method | " + " | ".join(f"N={n}" for n in ns) + " | reached optimum | mean evals to optimum |",
             "|---|" + "---|" * (len(ns) + 2)]
    for name, row in res.items():
        evals = f"{row['evals_to_opt']:.1f}" if row.get("evals_to_opt") is not None else "-"
        lines.append(f"| {name} | " + " | ".join(f"{row['best_at'][str(n)]:.2f}" for n in ns)
                     + f" | {row['hits']}/{row['seeds']} | {evals} |")
    tau = r["tau"]
    lines += ["", f"Evaluator's Kendall tau on the held-out CIFAR-10 column: {tau['before'][0]:.3f} before, "
              f"{tau['after'][0]:.3f} after adaptation."]
    return "\n".join(lines + nb201_real_lines())


def nb201_real_lines() -> list[str]:
    """``nb201_real.py``: the same space searched on CIFAR-10 with every candidate trained."""
    path = RESULTS / "nb201_real_cifar10.json"
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    st, summ = r["settings"], r["summary"]
    proxy = r["fidelity"]["proxies"][r["chosen_proxy"]]
    ns = sorted(int(n) for n in next(iter(summ.values()))["picked"])
    pm = lambda v: f"{v[0]:.2f} +- {v[1]:.2f}"  # noqa: E731
    lines = ["", f"The same space with **real training** (`{path.relative_to(ROOT)}`, `{r['command']}`): every "
             f"candidate trained on CIFAR-10 by a short proxy ({proxy['steps']} Adam steps on {proxy['images']} "
             f"train images at {proxy['size']}x{proxy['size']}, scored on {st['val']} other train images; "
             f"Kendall tau {proxy['tau']:.2f} against the table on {len(r['fidelity']['cells'])} cells), "
             f"{st['seeds']} seeds; each search returns its proxy-best cell, reported by the table's 200-epoch "
             f"CIFAR-10 test accuracy (%), mean +- std; last column: the best cell it evaluated.", "",
             "| method | " + " | ".join(f"N={n}" for n in ns) + f" | best evaluated, N={ns[-1]} |",
             "|---|" + "---|" * (len(ns) + 1)]
    for name, row in summ.items():
        lines.append(f"| {name} | " + " | ".join(pm(row["picked"][str(n)]) for n in ns)
                     + f" | {pm(row['best_evaluated'][str(ns[-1])])} |")
    model = {name: row["recommended"] for name, row in summ.items()
             if row.get("recommended") and any(row["recommended"][str(n)] != row["picked"][str(n)]
                                               for n in ns)}
    if model:
        lines += ["", "The model's pick instead of the proxy's (`search.recommend`: among the cells "
                  "evaluated, the one the adapted evaluator predicts best), same runs:", "",
                  "| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
        lines += [f"| {name} | " + " | ".join(pm(rec[str(n)]) for n in ns) + " |"
                  for name, rec in model.items()]
    return lines


def _fewshot_label(r: dict) -> str:
    c = r["config"]
    d, m, model = c["data"], c["meta"], c["model"]
    if model["name"] == "conv4":
        net = "conv4"
    else:
        net = f"DARTS cell ({model['channels']} ch., {model['nodes']} nodes)"
        if r.get("search"):
            net += ", in two stages (search, then the derived cell)"
    rates = ", learned inner rates" if m.get("learn_inner_lr") else ""
    head = {"proto": ", prototype head", "zero": ", zero head"}.get(m.get("head_init", "meta"), "")
    bf16 = ", bf16 operands" if model.get("conv_impl") == "matmul_bf16" else ""
    return (f"Omniglot {d['n_way']}-way {d['k_shot']}-shot, {net}, {m['algorithm'].upper()}"
            f"{rates}{head}{bf16}")


def _cores(n) -> str:
    return "? cores" if n is None else f"{n} core" + ("s" if n != 1 else "")


# the README's few-shot rows: plain MAML, then the fastest run at each target (issue 25),
# and the DARTS cell; benchmarks/README.md shows every run (FEWSHOT_ALL)
FEWSHOT_README = ("omniglot_5w1s_conv4", "omniglot_5w1s_conv4_lr_proto_fomaml_map_18k_2026-12-06",
                  "omniglot_5w1s_darts_derived", "omniglot_20w1s_conv4",
                  "omniglot_20w1s_conv4_lr_proto_fomaml_map_2026-12-05")


def fewshot_table(files=None) -> str:
    """``omniglot_fewshot.py``'s meta-test accuracies (600 episodes, 95% interval), of
    ``files`` (default: every run)."""
    files = files or ["omniglot_5w1s_conv4", "omniglot_5w1s_conv4_lr",
             "omniglot_5w1s_conv4_lr_proto_2cores", "omniglot_5w1s_conv4_lr_proto_fomaml_2cores",
             # the same at 6,000 steps, float32 against bf16 operands (issue 25 item 1)
             "omniglot_5w1s_conv4_lr_proto_fomaml_6k_f32_2026-12-05",
             "omniglot_5w1s_conv4_lr_proto_fomaml_6k_bf16_2026-12-05",
             "omniglot_5w1s_conv4_lr_proto_fomaml_map_18k_2026-12-06",  # tasks mapped
             "omniglot_5w1s_darts_cpu_2026-12-05", "omniglot_5w1s_darts_derived",
             "omniglot_20w1s_conv4",
             "omniglot_20w1s_conv4_lr_2cores",  # its one-core run: benchmarks/LOG.md
             "omniglot_20w1s_conv4_lr_proto_2cores",
             "omniglot_20w1s_conv4_lr_proto_fomaml_map_2026-12-05"]  # tasks mapped; earlier run: LOG
    rows = []
    for name in files:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        res, c = r["result"], r["config"]
        stages = [r["search"]] if r.get("search") else []
        steps = " + ".join(f"{x['meta_steps']:,}" for x in stages + [r])
        minutes = sum(x["train_s"] for x in stages + [r]) / 60
        published = PUBLISHED.get((c["model"]["name"], c["data"]["n_way"], c["data"]["k_shot"]), "-")
        rows.append(f"| {_fewshot_label(r)} | {res['accuracy'] * 100:.2f}% +- {res['ci95'] * 100:.2f}% | "
                    f"{steps} meta-steps in {minutes:.0f} min on {_cores(r.get('cpu_count'))} | "
                    f"{published} | `{path.relative_to(ROOT)}` |")
    if not rows:
        return ""
    return "\n".join([f"Few-shot meta-test accuracy, {res['episodes']} test episodes, 95% interval, "
                      "on the 2-core CPU (each file holds its command and config):", "",
                      "| setting | accuracy | budget | published | result file |", "|---|---|---|---|---|"]
                     + rows)


# the suite runs the speed table shows: the latest of each model and algorithm, then
# PyTorch-only runs that show how much PyTorch's own step moves between runs
SPEED = ("suite_conv4_f32_map_2026-12-05.json", "suite_conv4_maml_bf16_map_2026-12-05.json",
         "suite_darts_vs_torch_mb16_pool_slices_2026-12-04.json",
         "suite_darts_maml_mb16_no_edge_remat_2026-12-05.json")
SPEED_TORCH_ONLY = ("suite_darts_torch_only_mb16_2026-12-04.json",)
# other runs of rows the table shows, with their PyTorch step: how far the ratio moves
SPEED_OTHER_RUNS = ("suite_conv4_maml_f32_map_2026-12-05.json", "suite_conv4_maml_f32_1dev_2026-12-06.json")
ALGORITHMS = {"maml": "MAML (second order)", "fomaml": "first-order MAML", "reptile": "Reptile"}


def _spread(x: dict) -> str:
    return f"{x['median_s']:.1f} s ({x['min_s']:.1f}-{x['max_s']:.1f})"


def _pct_peak(x: dict) -> str:
    """The step's share of the run's matmul peak in its precision (XLA's FLOP count), or
    '-' where that count misses loop bodies (a lower bound is no figure to print)."""
    return "-" if "lower bound" in x.get("strategy", "") else f"{x['pct_peak']:.0f}%"


def speed_table() -> str:
    """benchmarks/README.md's block: suite.py's meta-step rows against PyTorch in the same run."""
    lines = ["Meta-step time, JAX against PyTorch (CPU, 2 threads) in the same run "
             "(`benchmarks/suite.py`: 5-way 1-shot 28x28 episodes, 15 queries, 5 inner steps; "
             "each file holds its command and load). PyTorch / JAX: PyTorch's median step over "
             "JAX's with its compile spread over 1,000 steps. % of peak: XLA's FLOP count of the "
             "compiled step (the work of its formulation) per second, over the matmul peak "
             "measured in the same run in the step's precision ('-' where loops hide work).", "",
             "| meta-step | meta-batch | machine, PyTorch | JAX compile | JAX step, median (range) "
             "| JAX, % of peak | PyTorch step | PyTorch / JAX | result file |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in SPEED:
        r = json.loads((RESULTS / name).read_text())
        machine = r["header"][1].removeprefix("# machine: ").split(";")[0]
        rows = {x["name"]: x for x in r["rows"]}
        for x in r["rows"]:
            if not x["name"].startswith("meta/"):
                continue
            _, model, algorithm, mb = x["name"].split("/")
            if model == "darts":
                model = f"DARTS supernet ({r['args']['darts_channels']} ch., {r['args']['darts_cells']} cells)"
            elif r["args"].get("conv_impl") == "matmul_bf16":
                model += " with bf16 operands (PyTorch: bf16 autocast)"
            t = rows.get(f"torch/{x['name'].removeprefix('meta/')}", {})
            torch = t.get("note", "").split(",")[0]
            lines.append(f"| {model}, {ALGORITHMS[algorithm]} | {mb.removeprefix('mb')} | "
                         f"{machine}{'; ' + torch if torch else ''} | "
                         f"{x['compile_s']:.1f} s | {_spread(x)} | {_pct_peak(x)} | "
                         f"{_spread(t) if t else '-'} | "
                         f"{'**%.2f**' % t['ratio'] if 'ratio' in t else '-'} | `{name}` |")
    for name in SPEED_TORCH_ONLY:
        r = json.loads((RESULTS / name).read_text())
        runs = [f"{ALGORITHMS[x['name'].split('/')[2]]} {_spread(x)}" for x in r["rows"]
                if x["name"].startswith("torch/darts/")]
        lines += ["", f"PyTorch's DARTS step alone, another run on the same machine (`{name}`): "
                  + "; ".join(runs) + ". Its step moves between runs far more than JAX's; the "
                  "ratios above hold for their own run (history and readings: `benchmarks/LOG.md`)."]
    for name in SPEED_OTHER_RUNS:
        r = json.loads((RESULTS / name).read_text())
        rows, runs = {x["name"]: x for x in r["rows"]}, []
        for x in r["rows"]:
            row = x["name"].removeprefix("meta/")
            t = rows.get(f"torch/{row}", {})
            if x["name"].startswith("meta/") and "ratio" in t:
                runs.append(f"{row}: JAX {_spread(x)}, PyTorch {_spread(t)}, ratio {t['ratio']:.2f}")
        lines += ["", f"Another run of the same rows (`{name}`): " + "; ".join(runs) + "."]
    return "\n".join(lines)


README, BENCH_README = ROOT / "README.md", ROOT / "benchmarks" / "README.md"
BLOCKS = {"transfer-results": (README, transfer_table), "nb201-results": (README, nb201_table),
          "fewshot-results": (README, lambda: fewshot_table(FEWSHOT_README)),
          "fewshot-all": (BENCH_README, fewshot_table), "speed-results": (BENCH_README, speed_table),
          "benchmark-figures": (BENCH_README, benchmark_figures)}


def readme_block(text: str, name: str) -> str | None:
    parts = text.split(f"<!-- {name} -->")
    return parts[1].strip("\n") if len(parts) == 3 else None


def write(text: str, path: Path = README) -> str:
    """``text`` (the file ``path``) with each of its blocks regenerated."""
    for name, (where, fn) in BLOCKS.items():
        if where != path:
            continue
        mark = f"<!-- {name} -->"
        parts = text.split(mark)
        if len(parts) != 3:
            raise SystemExit(f"{path.relative_to(ROOT)} must hold exactly two {mark} markers")
        text = parts[0] + mark + "\n" + fn() + "\n" + mark + parts[2]
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if not args.write:
        print("\n\n".join(fn() for _, fn in BLOCKS.values()))
        return
    for path in {where for where, _ in BLOCKS.values()}:
        path.write_text(write(path.read_text(), path))


if __name__ == "__main__":
    main()
