"""The same second-order MAML meta-step as ``meta.make_meta_step`` on conv4, in PyTorch.

Network: ``blocks`` x [conv 3x3 (no bias), batch norm on batch statistics (scale, bias),
ReLU, 2x2 max-pool], linear head: ``nn/conv4.py`` with ``downsample="pool"``. Inner loop:
``inner_steps`` SGD steps per task with ``torch.autograd.grad(create_graph=True)``
(second order); outer: mean query loss over the meta-batch, Adam. ``--bf16``: the forward
passes under ``torch.autocast`` with bfloat16 (convolutions and matmuls in bf16, parameters
and the loss in float32), PyTorch's mixed precision, to set against JAX's ``matmul_bf16``
convolutions. Used by ``benchmarks/suite.py`` for the JAX/PyTorch ratio; runnable alone:

    python benchmarks/torch_maml.py --meta-batch 16 --repeats 5 [--bf16]
"""
from __future__ import annotations

import argparse
import statistics
import time


def conv4_params(torch, n_way, channels=64, blocks=4, in_ch=1, size=28, device="cpu",
                 dtype=None):
    g = torch.Generator().manual_seed(0)
    ps, c = [], in_ch
    for _ in range(blocks):
        fan_in = 9 * c
        ps.append(torch.randn(channels, c, 3, 3, generator=g) / fan_in ** 0.5)
        ps += [torch.ones(channels), torch.zeros(channels)]
        c = channels
        size //= 2
    ps.append(torch.randn(n_way, c * size * size, generator=g) / (c * size * size) ** 0.5)
    ps.append(torch.zeros(n_way))
    return [p.to(device=device, dtype=dtype).requires_grad_() for p in ps]


def episodes(torch, dev, meta_batch, n_way, k_shot, n_query, size):
    """Seeded random Omniglot-shaped episodes ``(sx, sy, qx, qy)``, NCHW, task axis first."""
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(meta_batch, n_way * k_shot, 1, size, size, generator=g).to(dev)
    qx = torch.randn(meta_batch, n_way * n_query, 1, size, size, generator=g).to(dev)
    sy = torch.arange(n_way).repeat_interleave(k_shot).repeat(meta_batch, 1).to(dev)
    qy = torch.arange(n_way).repeat_interleave(n_query).repeat(meta_batch, 1).to(dev)
    return sx, sy, qx, qy


def forward(F, params, x, blocks):
    for b in range(blocks):
        w, s, bias = params[3 * b:3 * b + 3]
        x = F.conv2d(x, w, padding=1)
        x = F.batch_norm(x, None, None, s, bias, training=True, eps=1e-5)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params[-2], params[-1])


def make_step(torch, params, blocks, inner_steps, inner_lr, meta_lr, bf16=False):
    F = torch.nn.functional
    opt = torch.optim.Adam(params, lr=meta_lr)
    device = params[0].device.type

    def logits(p, x):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return forward(F, p, x, blocks).float()

    def step(sx, sy, qx, qy):
        opt.zero_grad(set_to_none=True)
        t = sx.shape[0]
        total = 0.0
        for i in range(t):  # tasks one after another, each graph freed after backward
            fast = list(params)
            for _ in range(inner_steps):
                loss = F.cross_entropy(logits(fast, sx[i]), sy[i])
                grads = torch.autograd.grad(loss, fast, create_graph=True)
                fast = [p - inner_lr * g for p, g in zip(fast, grads)]
            q = F.cross_entropy(logits(fast, qx[i]), qy[i]) / t
            q.backward()
            total += float(q.detach())
        opt.step()
        return total

    return step


def bench(meta_batch=16, n_way=5, k_shot=1, n_query=15, size=28, channels=64, blocks=4,
          inner_steps=5, inner_lr=0.1, repeats=5, warmup=1, threads=None, device="cpu",
          bf16=False):
    """Median and all step times (seconds) of the second-order MAML step in PyTorch."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device)
    sx, sy, qx, qy = episodes(torch, dev, meta_batch, n_way, k_shot, n_query, size)
    params = conv4_params(torch, n_way, channels, blocks, 1, size, dev)
    step = make_step(torch, params, blocks, inner_steps, inner_lr, 1e-3, bf16)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step(sx, sy, qx, qy)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(sx, sy, qx, qy)
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times": times, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast")
    a = ap.parse_args(argv)
    r = bench(meta_batch=a.meta_batch, inner_steps=a.inner_steps, repeats=a.repeats,
              device=a.device, bf16=a.bf16)
    print(f"torch {r['torch']} ({r['threads']} threads{', bf16 autocast' if a.bf16 else ''}): MAML step median {r['median_s']:.4f}s "
          f"over {a.repeats}: {[round(t, 4) for t in r['times']]}")


if __name__ == "__main__":
    main()
