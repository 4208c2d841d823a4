"""The same DARTS-supernet meta-step as ``meta.make_meta_step`` (``suite.py``'s
``meta/darts/<algorithm>`` rows), in PyTorch.

Network (``nn/cells.py`` ``DartsSupernet`` with the space ``spaces.get("darts")``): stem
conv 3x3 (``3 * channels``, no bias) -> batch norm; ``cells`` cells, reductions at
``cells // 3`` and ``2 * cells // 3`` (for ``cells >= 3``), which double the channels;
each cell preprocesses its inputs (ReLU-conv 1x1-BN, or a factorized reduce after a
reduction cell), has ``nodes`` nodes, node ``j`` summing a mixed edge from each of the
``j + 2`` earlier states, and outputs the nodes concatenated; global mean pool, linear head.
An edge is ``sum_k softmax(alpha)[k] * op_k(x)`` over the 8 DARTS primitives: ``none`` (zero:
left out, as the JAX edge leaves it out), 3x3 max / average pool (average without the
padding), ``skip_connect`` (identity; in a reduction cell's stride-2 input edges a
factorized reduce: ReLU, two 1x1 stride-2 convs, the second on the input shifted by one
pixel, concatenated, BN), ``sep_conv_3x3/5x5`` (twice ReLU-depthwise-pointwise-BN, stride on
the first), ``dil_conv_3x3/5x5`` (once, dilation 2). No convolution has a bias; every batch
norm has a scale and bias and normalises with the batch's statistics (biased variance,
eps 1e-5). Architecture weights: ``alpha`` of shape ``(2, edges, 8)`` (normal, reduction),
started at ``1e-3 * N(0, 1)``. Kernels are flax's ``lecun_normal`` (truncated normal).

Meta-step (``meta/outer.py``, ``meta/inner.py`` with ``suite.meta_config``: inner SGD at
``inner_lr`` 0.1, "alternating" architecture updates): per task, ``inner_steps`` times, an
SGD step on the weights from the support loss, then an SGD step (``arch_inner_lr`` 0.1) on
the task's copy of ``alpha`` from the support loss at the new weights. Meta-gradient, mean
over the tasks: ``fomaml`` the query-loss gradient at the adapted weights and alpha
(``torch.autograd.grad``, no graph through the inner loop); ``reptile`` initial minus
adapted weights and alpha (the query loss is computed, forward only, as JAX does for its
metrics); ``maml`` (second order) the query loss differentiated through the whole inner
loop, both updates (``create_graph=True``). Outer: Adam (lr 1e-3) on the weights; Adam
(lr 3e-4, betas (0.5, 0.999), L2 weight decay 1e-3 added to the gradient, i.e. optax
``add_decayed_weights`` then ``adam``) on alpha. Tasks run one after another (as JAX maps
over them on CPU), each task's graph freed before the next.

Same parameters, one for one (``cell{i}/e{edge}/{op}/...`` is JAX's unstacked
``cell{i}/e{edge}_{op}/...``, kernels OIHW instead of HWIO): 218,765 weights and 224 alphas at
the suite's sizes (8 channels, 3 cells, 4 nodes, 5 ways), as in JAX. With JAX's weights
copied in, the logits agree to 3e-7 on 25x25 inputs (odd sides, where the paddings below
coincide; a one-off check, not a test).

Where it differs from the JAX step (none changes shapes, FLOPs or parameter counts):
* Padding of strided 3x3/5x5 convolutions and pools: symmetric (``padding=k // 2 *
  dilation``, as DARTS' PyTorch code has it); JAX's SAME padding puts the odd extra row and
  column at the bottom/right when the side is even (28 -> 14, 14 -> 7), so those windows sit
  one pixel lower/right. Same output sizes.
* Layout NCHW (PyTorch's default; ``--channels-last`` stores images and kernels NHWC)
  instead of NHWC; convolutions are PyTorch's own (JAX on CPU uses im2col matmuls and
  shifted multiply-adds, ``nn/fastconv.py``).
* ``maml`` only: batch norm written out (``var_mean``, normalise, scale, shift) instead of
  the fused ``F.batch_norm``. The meta-gradient through the alternating alpha step (a
  gradient taken at weights that are themselves a gradient step) needs third derivatives,
  which ``F.batch_norm`` does not provide; JAX differentiates to any order.
* JAX rematerialises each mixed edge in the backward pass (``nn.remat``) and scans over
  edges; here autograd keeps the activations, the natural eager formulation.
* Adam's ``eps_root`` (1e-16 in JAX) is absent; accuracy and gradient-norm metrics are not
  computed (the step returns the mean query loss).

Used by ``benchmarks/suite.py`` for the JAX/PyTorch ratio of the DARTS rows; runnable alone:

    python benchmarks/torch_darts.py --algorithm fomaml --meta-batch 16 --repeats 3
    python benchmarks/torch_darts.py --meta-batch 2 --inner-steps 1 --repeats 1 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time

from torch_maml import episodes

PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
              "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
CONVS = {"sep_conv_3x3": (3, 1, 2), "sep_conv_5x5": (5, 1, 2),  # kernel, dilation, repeats
         "dil_conv_3x3": (3, 2, 1), "dil_conv_5x5": (5, 2, 1)}


def edges(nodes):
    """``(node, input state)`` per edge, ordered by node (as ``spaces.darts.Darts.edges``)."""
    return [(j, i) for j in range(nodes) for i in range(j + 2)]


def layout(channels=8, cells=3, stem_multiplier=3):
    """``(cell channels, reduction, reduction_prev)`` per cell, as ``_DartsBody.run``."""
    out, c, prev = [], channels, False
    for i in range(cells):
        red = cells >= 3 and i in (cells // 3, 2 * cells // 3)
        c = c * 2 if red else c
        out.append((c, red, prev))
        prev = red
    return out


def supernet_shapes(n_way, channels=8, cells=3, nodes=4, in_ch=1, stem_multiplier=3):
    """``{name: (shape, fan_in or None)}``: kernels (PyTorch's OIHW) with their fan-in, BN
    scales (``None``: ones) and biases (``fan_in 0``: zeros)."""
    shapes = {}

    def conv(name, o, i, k=1):
        shapes[name] = ((o, i, k, k), i * k * k)

    def norm(name, c):
        shapes[name + "/scale"], shapes[name + "/bias"] = ((c,), None), ((c,), 0)

    c_stem = channels * stem_multiplier
    conv("stem", c_stem, in_ch, 3)
    norm("stem_norm", c_stem)
    c_pp = c_p = c_stem
    for n, (c, red, red_prev) in enumerate(layout(channels, cells, stem_multiplier)):
        cell = f"cell{n}"
        if red_prev:
            conv(f"{cell}/pre0/conv_a", c // 2, c_pp)
            conv(f"{cell}/pre0/conv_b", c - c // 2, c_pp)
            norm(f"{cell}/pre0/norm", c)
        else:
            conv(f"{cell}/pre0/conv", c, c_pp)
            norm(f"{cell}/pre0/norm", c)
        conv(f"{cell}/pre1/conv", c, c_p)
        norm(f"{cell}/pre1/norm", c)
        for e, (_, i) in enumerate(edges(nodes)):
            stride = 2 if red and i < 2 else 1
            for op in PRIMITIVES:
                name = f"{cell}/e{e}/{op}"
                if op == "skip_connect" and stride == 2:
                    conv(name + "/conv_a", c // 2, c)
                    conv(name + "/conv_b", c - c // 2, c)
                    norm(name + "/norm", c)
                elif op in CONVS:
                    k, _, reps = CONVS[op]
                    for r in range(reps):
                        shapes[f"{name}/depthwise{r}"] = ((c, 1, k, k), k * k)
                        conv(f"{name}/pointwise{r}", c, c)
                        norm(f"{name}/norm{r}", c)
        c_pp, c_p = c_p, nodes * c
    shapes["head/kernel"] = ((n_way, c_p), c_p)
    shapes["head/bias"] = ((n_way,), 0)
    return shapes


def supernet_params(torch, n_way, channels=8, cells=3, nodes=4, in_ch=1, device="cpu",
                    dtype=None, seed=0, channels_last=False):
    """``(params, alpha)``: weights (a dict of leaf tensors) and architecture logits."""
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, (shape, fan_in) in supernet_shapes(n_way, channels, cells, nodes, in_ch).items():
        if fan_in is None:
            p = torch.ones(shape)
        elif fan_in == 0:
            p = torch.zeros(shape)
        else:  # flax lecun_normal: truncated N(0, 1) on [-2, 2], rescaled to variance 1/fan_in
            std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978
            p = torch.nn.init.trunc_normal_(torch.empty(shape), 0.0, std, -2 * std, 2 * std,
                                            generator=g)
        p = p.to(device=device, dtype=dtype)
        if channels_last and p.ndim == 4:
            p = p.contiguous(memory_format=torch.channels_last)
        params[name] = p.requires_grad_()
    alpha = 1e-3 * torch.randn(2, len(edges(nodes)), len(PRIMITIVES), generator=g)
    return params, alpha.to(device=device, dtype=dtype).requires_grad_()


def forward(F, torch, p, w_normal, w_reduce, x, channels=8, cells=3, nodes=4,
            composite_bn=False):
    """Logits of the supernet with weights ``p`` and edge weights ``w_* (edges, 8)``.
    ``composite_bn``: batch norm from elementary ops (differentiable to any order; the
    fused ``F.batch_norm`` stops at second order)."""
    def bn(x, name):
        scale, bias = p[name + "/scale"], p[name + "/bias"]
        if not composite_bn:
            return F.batch_norm(x, None, None, scale, bias, training=True, eps=1e-5)
        var, mean = torch.var_mean(x, (0, 2, 3), correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + 1e-5) * scale[:, None, None] + bias[:, None, None]

    def relu_conv_bn(x, name):
        return bn(F.conv2d(F.relu(x), p[name + "/conv"]), name + "/norm")

    def factorized_reduce(x, name):
        x = F.relu(x)
        a = F.conv2d(x, p[name + "/conv_a"], stride=2)
        b = F.conv2d(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)), p[name + "/conv_b"], stride=2)
        return bn(torch.cat([a, b], 1), name + "/norm")

    def sep_conv(x, name, k, dil, reps, stride):
        c = x.shape[1]
        for r in range(reps):
            x = F.conv2d(F.relu(x), p[f"{name}/depthwise{r}"], stride=stride if r == 0 else 1,
                         padding=dil * (k - 1) // 2, dilation=dil, groups=c)
            x = bn(F.conv2d(x, p[f"{name}/pointwise{r}"]), f"{name}/norm{r}")
        return x

    def op(name, x, stride, prim):
        if prim == "max_pool_3x3":
            return F.max_pool2d(x, 3, stride, 1)
        if prim == "avg_pool_3x3":
            return F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
        if prim == "skip_connect":
            return x if stride == 1 else factorized_reduce(x, name)
        return sep_conv(x, name, *CONVS[prim], stride)

    s0 = s1 = bn(F.conv2d(x, p["stem"], padding=1), "stem_norm")
    es = edges(nodes)
    for n, (_, red, red_prev) in enumerate(layout(channels, cells)):
        cell = f"cell{n}"
        w = [row.unbind() for row in (w_reduce if red else w_normal).unbind()]  # w[e][k]
        s0 = factorized_reduce(s0, cell + "/pre0") if red_prev else relu_conv_bn(s0, cell + "/pre0")
        states = [s0, relu_conv_bn(s1, cell + "/pre1")]
        for j in range(nodes):
            node = None
            for e, (to, i) in enumerate(es):
                if to != j:
                    continue
                stride = 2 if red and i < 2 else 1
                for k, prim in enumerate(PRIMITIVES):
                    if prim != "none":  # zero output: contributes nothing
                        y = w[e][k] * op(f"{cell}/e{e}/{prim}", states[i], stride, prim)
                        node = y if node is None else node + y
            states.append(node)
        s0, s1 = s1, torch.cat(states[2:], 1)
    return F.linear(s1.mean((2, 3)), p["head/kernel"], p["head/bias"])


def make_step(torch, params, alpha, algorithm="fomaml", channels=8, cells=3, nodes=4,
              inner_steps=5, inner_lr=0.1, arch_inner_lr=0.1, meta_lr=1e-3, arch_meta_lr=3e-4,
              arch_weight_decay=1e-3):
    """``step(sx, sy, qx, qy) -> mean query loss``: one meta-step, updating ``params`` and
    ``alpha`` in place."""
    if algorithm not in ("maml", "fomaml", "reptile"):
        raise ValueError(f"unknown algorithm {algorithm!r}; known: maml, fomaml, reptile")
    F = torch.nn.functional
    names, leaves = list(params), list(params.values())
    opt = torch.optim.Adam(leaves, lr=meta_lr)
    a_opt = torch.optim.Adam([alpha], lr=arch_meta_lr, betas=(0.5, 0.999),
                             weight_decay=arch_weight_decay)
    second = algorithm == "maml"

    def loss(ws, a, x, y):
        w = torch.softmax(a, -1)  # relax(z, T=1): softmax per edge
        return F.cross_entropy(forward(F, torch, dict(zip(names, ws)), w[0], w[1], x, channels,
                                       cells, nodes, composite_bn=second), y)

    def adapt(sx, sy):
        """``inner_steps`` x (weight SGD step, then alpha SGD step at the new weights)."""
        if second:
            fast, a = leaves, alpha
        else:  # first order: no graph through the updates, each gradient wrt its argument
            fast, a = [p.detach() for p in leaves], alpha.detach()
        for _ in range(inner_steps):
            if not second:
                fast = [f.requires_grad_() for f in fast]
            gs = torch.autograd.grad(loss(fast, a if second else a.detach(), sx, sy), fast,
                                     create_graph=second)
            with torch.set_grad_enabled(second):
                fast = [f - inner_lr * g for f, g in zip(fast, gs)]
            if not second:
                a = a.detach().requires_grad_()
            ga, = torch.autograd.grad(loss(fast, a, sx, sy), [a], create_graph=second)
            with torch.set_grad_enabled(second):
                a = a - arch_inner_lr * ga
        return fast, a

    def step(sx, sy, qx, qy):
        opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        t = sx.shape[0]
        grads = [torch.zeros_like(p) for p in leaves + [alpha]]
        total = 0.0
        for i in range(t):  # tasks one after another, each graph freed after its gradient
            fast, a = adapt(sx[i], sy[i])
            if algorithm == "reptile":
                with torch.no_grad():
                    q = loss(fast, a, qx[i], qy[i])
                    gs = [p - f for p, f in zip(leaves + [alpha], fast + [a])]
            elif algorithm == "fomaml":
                a = a.requires_grad_()
                fast = [f.requires_grad_() for f in fast]
                q = loss(fast, a, qx[i], qy[i])
                gs = torch.autograd.grad(q, fast + [a])
            else:
                q = loss(fast, a, qx[i], qy[i])
                gs = torch.autograd.grad(q, leaves + [alpha])
            with torch.no_grad():
                for acc, gi in zip(grads, gs):
                    acc.add_(gi, alpha=1.0 / t)
            total += float(q.detach()) / t
        for p, g in zip(leaves + [alpha], grads):
            p.grad = g
        opt.step()
        a_opt.step()
        return total

    return step


def bench(algorithm="fomaml", meta_batch=16, n_way=5, k_shot=1, n_query=15, size=28,
          channels=8, cells=3, nodes=4, inner_steps=5, inner_lr=0.1, repeats=5, warmup=1,
          threads=None, device="cpu", channels_last=False):
    """Median and all step times (seconds) of the DARTS-supernet meta-step in PyTorch."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    sx, sy, qx, qy = episodes(torch, dev, meta_batch, n_way, k_shot, n_query, size)
    if channels_last:  # images (T, N, C, H, W): each task's (N, C, H, W) slice NHWC in memory
        sx, qx = (x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) for x in (sx, qx))
    params, alpha = supernet_params(torch, n_way, channels, cells, nodes, 1, dev,
                                    channels_last=channels_last)
    step = make_step(torch, params, alpha, algorithm, channels, cells, nodes, inner_steps,
                     inner_lr)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    losses = [step(sx, sy, qx, qy) for _ in range(warmup)]
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        losses.append(step(sx, sy, qx, qy))
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times": times, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "losses": losses,
            "params": sum(p.numel() for p in params.values()), "arch_params": alpha.numel()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithm", default="fomaml", choices=["maml", "fomaml", "reptile"])
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--cells", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed meta-steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels-last", action="store_true", help="NHWC images and kernels")
    a = ap.parse_args(argv)
    r = bench(algorithm=a.algorithm, meta_batch=a.meta_batch, inner_steps=a.inner_steps,
              channels=a.channels, cells=a.cells, nodes=a.nodes, repeats=a.repeats,
              warmup=a.warmup, threads=a.threads, device=a.device,
              channels_last=a.channels_last)
    print(f"torch {r['torch']} ({r['threads']} threads): DARTS {a.algorithm} step "
          f"(mb{a.meta_batch}, {a.inner_steps} inner steps, {r['params']} weights + "
          f"{r['arch_params']} alphas) median {r['median_s']:.4f}s over {a.repeats}: "
          f"{[round(t, 4) for t in r['times']]}; query losses {[round(v, 4) for v in r['losses']]}")


if __name__ == "__main__":
    main()
