"""Omniglot 5-way 1-shot (Vinyals split, 28x28, rotations), MAML's Omniglot protocol.

``get_config("conv4")`` is the fixed-architecture MAML baseline; ``get_config("conv4_lr")``
the same network with one meta-learned inner learning rate per weight tensor, started at
the support set's prototypes (Proto-MAML), trained first-order, and a cosine
meta-learning rate, sized for 110 minutes on one core; ``get_config("darts")``
meta-learns a DARTS cell with the weights (MetaNAS); ``get_config("darts_cpu")`` is the
same with a supernet and meta-batch sized for the one-hour budget on a 2-core CPU (8
channels, 3 nodes, meta-batch 8, first-order MAML: 2.6 s per meta-step there, about 1,150
meta-steps in 50 minutes; the conv4 baseline runs 0.21 s per step). ``darts_derived``
spends the hour in two stages: ``darts_cpu``'s search with a stride-2 stem for 15 minutes,
then 4,500 steps (at most 40 minutes) of first-order MAML on the derived cell alone,
widened to 32 channels (fresh weights, only the chosen ops run, 3 query images per class,
one meta-learned inner learning rate per weight tensor), meta-tested with 10 inner steps.
Used by
``benchmarks/omniglot_fewshot.py --config
configs/omniglot_5w1s.py[:darts|:darts_cpu|:darts_derived]``.
"""
import os
from pathlib import Path

import ml_collections
from ml_collections.config_dict import placeholder

# ``../shared/data/omniglot`` next to the project root, unless METANAS_OMNIGLOT says otherwise.
OMNIGLOT = os.environ.get(
    "METANAS_OMNIGLOT", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"))


MODELS = ("conv4", "conv4_lr", "darts", "darts_cpu", "darts_derived")


def get_config(model: str = "conv4") -> ml_collections.ConfigDict:
    if model not in MODELS:
        raise ValueError(f"omniglot_5w1s: model must be one of {MODELS}, got {model!r}")
    c = ml_collections.ConfigDict()
    c.name = f"omniglot_5w1s_{model}"
    c.data = ml_collections.ConfigDict(dict(
        source="omniglot:" + OMNIGLOT,
        image_size=28, n_way=5, k_shot=1, n_query_train=1, n_query_test=15, meta_batch=32,
        split_seed=0,
        # "random": Vinyals' 1,200 random characters for meta-training; "lake": the 964
        # background-alphabet characters, tested on the 659 of the unseen alphabets
        protocol="random"))
    c.model = ml_collections.ConfigDict(dict(name=model.split("_")[0], channels=64,
                                             downsample="stride", cells=3, nodes=4,
                                             stem_stride=1, conv_impl="auto"))
    # MAML (Finn et al. 2017), Omniglot 5-way: one inner SGD step of 0.4, meta-batch 32,
    # Adam 1e-3; evaluated with 3 inner steps.
    c.meta = ml_collections.ConfigDict(dict(
        algorithm="maml", inner_steps=1, eval_inner_steps=3, inner_lr=0.4, inner_opt="sgd",
        meta_lr=1e-3, meta_opt="adam", strategy="auto",
        # where the classifier starts each task (meta.MetaConfig.head_init)
        head_init="meta"))
    if model.startswith("darts"):
        c.model.channels = 16
        c.meta.update(dict(arch_update="alternating", arch_inner_lr=0.1, arch_meta_lr=3e-4,
                           arch_weight_decay=1e-3, arch_warmup_steps=200))
    if model in ("darts_cpu", "darts_derived"):
        c.model.update(dict(channels=8, nodes=3))
        c.data.meta_batch = 8
        c.meta.update(dict(algorithm="fomaml", arch_warmup_steps=100))
    # n_query_train: query images per class of the training episodes, None: data's
    c.train = ml_collections.ConfigDict(dict(num_steps=60000, time_budget_s=55 * 60.0,
                                             log_every=100, seed=0,
                                             n_query_train=placeholder(int)))
    if model == "darts_derived":
        # two stages in the same hour: search with the supernet (weights + architecture),
        # then meta-train the derived cell's weights alone, 2.8x faster per step than the
        # supernet on this CPU at four times its width (0.35 vs 0.96 s). Most of the hour
        # goes to stage 2: the weights inherited from the supernet learned hardly faster
        # than fresh ones after the switch to one-hot edges (query accuracy 0.72 vs 0.69 at
        # step 500), so what the search hands on is the architecture, and the derived cell
        # is built at 32 channels, four times the supernet's 8 (stem stride 1 then: at 8,
        # inherited weights, 91.85% after 6,000 steps; at 16, 92.78% after 4,144 steps). The
        # stride-2 stem runs every cell at half the resolution (14/7/4 on 28x28, as conv4's
        # strided first layer does): 2.7x faster search steps (0.96 vs 2.61 s, so 933
        # instead of 346 in 15 minutes), 2.4x faster derived-cell steps (16 channels, 90-s
        # probes: 0.21 vs 0.51 s), which pays for the 32 channels (0.35 s; 93.40% after
        # 6,500 steps). Stage 2's
        # meta-lr 3e-3 won 4-minute probes of the derived cell (benchmarks/derived_probe.py;
        # table in benchmarks/LOG.md): 84.8% vs 79.2% at 1e-3, 83.2% at 1e-2. It follows
        # a cosine to zero over the stage's steps (MAML++'s cosine annealing of the meta-
        # optimiser); the time budget only caps the stage.
        # Stage 2 trains on 3 query images per class (15 per task, not MAML's 1): in
        # 4-minute probes 84.15% after 409 steps against 82.67% after 739 with 1 query and
        # 83.82% after 270 with 5; a step costs 1.6-1.8x, its meta-gradient averages 3x
        # the query images.
        # Stage 2 meta-learns one inner learning rate per weight tensor (MAML++'s per-layer
        # rates, meta.MetaConfig.learn_inner_lr), started at the 0.4 above: 4-minute probe
        # 88.89% vs 86.09% with the fixed rate; full stage 97.00% vs 94.70%.
        c.train.time_budget_s = 15 * 60.0
        c.model.stem_stride = 2
        steps = 4500
        c.derive = ml_collections.ConfigDict(dict(
            num_steps=steps, time_budget_s=40 * 60.0, meta_batch=8, inherit=False,
            n_query_train=3,
            meta=dict(algorithm="fomaml", meta_lr=3e-3, meta_lr_schedule="cosine",
                      meta_lr_decay_steps=steps, learn_inner_lr=True), model=dict(channels=32)))
    if model == "conv4_lr":
        # MAML++'s per-layer inner rates (meta.MetaConfig.learn_inner_lr, started at 0.4)
        # and the meta-lr at 3e-3 on a cosine to 0 over the run's steps (the 20-way probes
        # that chose these settings: omniglot_20w1s.py, benchmarks/LOG.md). The classifier
        # starts each task at the support set's prototypes (meta.head_init): 13-minute
        # probes 94.85% vs 93.25% with the meta-learned head; on 2 cores 98.74% after 29,000
        # steps in 108 min, against 97.82% after 16,489 steps in 110 min on one core
        # (benchmarks/LOG.md, "Where the classifier starts"). First-order MAML trains the
        # same model (the prototypes fit the support set, the second-order term is about 0):
        # 98.72% after the same 29,000 steps in 77 min on 2 cores. Its step takes 0.26 s on
        # one core, so 24,000 steps about fill the 110-minute cap there (not run at that size).
        set_lr_recipe(c, steps=24000)
        c.meta.head_init = "proto"
        c.meta.algorithm = "fomaml"
        c.train.time_budget_s = 110 * 60.0
    # split: "test" (what results report) or "val" (the validation pool, for choosing
    # evaluation settings); inner_steps: None, the meta-config's eval_inner_steps
    c.eval = ml_collections.ConfigDict(dict(episodes=600, seed=1234, batch_size=50, split="test",
                                            inner_steps=placeholder(int)))
    if model == "darts_derived":
        # 10 inner steps at meta-test, chosen on the validation pool, not the test classes
        # (`--config.eval.split=val`: the last 100 meta-training characters, unrotated; 600
        # episodes of the trained cell): 97.64% / 97.71% / 97.85% with 3 / 5 / 10 steps
        # (95.13% / 95.32% / 95.53% with the fixed inner rate).
        c.eval.inner_steps = 10
    return c


def set_lr_recipe(c: ml_collections.ConfigDict, steps: int) -> None:
    """``conv4_lr``'s meta-settings: one inner step of a meta-learned rate per weight tensor,
    meta-lr 3e-3 on a cosine to 0 over ``steps`` meta-steps (the run's length)."""
    c.meta.update(dict(inner_steps=1, inner_lr=0.4, learn_inner_lr=True, meta_lr=3e-3,
                       meta_lr_schedule="cosine", meta_lr_decay_steps=steps))
    c.train.num_steps = steps
