"""One final-training step of a ``macro32`` network in PyTorch: the peer of
``benchmarks/bench_train.py`` (which runs this file in a subprocess and prints the ratio).

The network is built from the architecture string as ``metanas_jax.nn.MacroNet`` builds it:
stem conv (``stem_kernel``, no bias) -> BN -> act (``stem_norm=false``: conv with bias ->
act), then per layer the op (conv-BN-act with stride 2 for ``/2``; ``identity`` and
``max_pool3x3`` parameter-free, channels zero-padded to the width), ``+res`` adding the
strided, zero-padded input (in a ``reduction="pool"`` space: op and shortcut at stride 1,
their sum 2x2 max-pooled; with ``pool_before_norm``, the convolution's output and the
shortcut max-pooled before BN-act), then mean or max pooling (``head_pool``) and a linear head whose
logits are scaled by ``head_scale``; act is ReLU or exact GELU (``activation``). The space's
keys come as JSON (``--space``), as ``spaces.get("macro32", ...)`` takes them. The step: SGD with Nesterov momentum and weight decay on label-smoothed cross
entropy, channels-last memory, float32 or bfloat16 autocast, ``--threads`` threads.
Needs only torch (no jax), so it runs in any interpreter that has torch:

    python benchmarks/torch_train.py --arch "conv3x3-64/2 | ..." --dtype bf16
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def parse(arch: str):
    layers = []
    for part in (p.strip() for p in arch.split("|")):
        down = part.endswith("/2")
        part = part[:-2] if down else part
        res = part.endswith("+res")
        part = part[:-4] if res else part
        op, _, width = part.rpartition("-")
        layers.append((op, int(width), res, down))
    return layers


def build(torch, layers, space: dict, num_classes=10):
    nn = torch.nn
    F = torch.nn.functional
    stem_width, stem_kernel = int(space.get("stem_width", 16)), int(space.get("stem_kernel", 3))
    reduction = space.get("reduction", "stride")
    act = F.gelu if space.get("activation", "relu") == "gelu" else F.relu
    head_scale = float(space.get("head_scale", 1.0))
    head_max = space.get("head_pool", "mean") == "max"
    early = reduction == "pool" and bool(space.get("pool_before_norm", False))

    def pool2(x):
        return F.max_pool2d(x, 2, 2, ceil_mode=True)

    def fit(x, c):
        if x.shape[1] == c:
            return x
        if x.shape[1] > c:
            return x[:, :c]
        return F.pad(x, (0, 0, 0, 0, 0, c - x.shape[1]))

    class ConvBN(nn.Module):
        def __init__(self, cin, cout, k, stride, norm=True):
            super().__init__()
            # SAME padding as lax computes it (asymmetric for even kernels / strides)
            self.k, self.stride = k, stride
            self.conv = nn.Conv2d(cin, cout, k, stride, 0, bias=not norm)
            self.norm = nn.BatchNorm2d(cout) if norm else nn.Identity()

        def forward(self, x, pool=False):
            size = x.shape[-1]
            out = -(-size // self.stride)
            total = max((out - 1) * self.stride + self.k - size, 0)
            x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
            x = self.conv(x)
            return act(self.norm(pool2(x) if pool else x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = ConvBN(3, stem_width, stem_kernel, 1, bool(space.get("stem_norm", True)))
            self.ops = nn.ModuleList()
            self.spec = []
            c = stem_width
            for op, width, res, down in layers:
                s = 2 if down and reduction == "stride" else 1
                if op in ("conv3x3", "conv5x5"):
                    self.ops.append(ConvBN(c, width, int(op[4]), s))
                elif op in ("identity", "max_pool3x3"):
                    self.ops.append(nn.Identity())
                else:
                    raise SystemExit(f"torch_train: op {op!r} not written here")
                self.spec.append((op, width, res, s, down and reduction == "pool", down and early))
                c = width
            self.head = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.stem(x)
            for module, (op, width, res, s, pool, early) in zip(self.ops, self.spec):
                if op == "identity":
                    y = x[:, :, ::s, ::s]
                elif op == "max_pool3x3":
                    y = F.max_pool2d(x, 3, s, 1)
                else:
                    y = module(x, pool=early)
                y = fit(pool2(y) if early and op in ("identity", "max_pool3x3") else y, width)
                if res:
                    y = y + fit(pool2(x) if early else x[:, :, ::s, ::s], width)
                x = pool2(y) if pool and not early else y
            pooled = x.amax((2, 3)) if head_max else x.mean((2, 3))
            return self.head(pooled) * head_scale
    return Net()


def bench(arch, space: dict, batch=512, dtype="f32", repeats=5, threads=2):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build(torch, parse(arch), space).to(
        memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.85, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    for _ in range(2):
        step()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    return {"median_s": med, "min_s": min(ts), "max_s": max(ts), "images_per_s": batch / med,
            "note": f"torch {torch.__version__}, {threads} threads, channels-last"
                    + (", bf16 autocast" if dtype == "bf16" else ", f32")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", required=True)
    ap.add_argument("--space", default='{"stem_width": 24, "stem_kernel": 2}')
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--dtype", default="f32", choices=("f32", "bf16"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(json.dumps(bench(a.arch, json.loads(a.space), a.batch, a.dtype, a.repeats, a.threads)))


if __name__ == "__main__":
    main()
