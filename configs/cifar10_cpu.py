"""CIFAR-10, CPU-sized (aimed at about an hour on 2 cores; see README.md for
what was measured). Meta-learning source: CIFAR-10 train images themselves split into NAS
tasks of 64 train / 16 val; target: CIFAR-10 train (minus validation) / test.

    metanas run --config configs/cifar10_cpu.py
    metanas run --config configs/cifar10_cpu.py:/path/to/cifar10-jpg.tar   # other data path
"""

from pathlib import Path

from metanas_jax.config import load_config

DEFAULT_DATA = "../shared/data/cifar10/cifar10-jpg.tar"


def get_config(arg=None):
    c = load_config(str(Path(__file__).with_name("default.py")))
    c.name = "cifar10_cpu"
    path = arg or DEFAULT_DATA
    c.data.source = f"folder:{path}"
    c.data.target = f"folder:{path}"
    c.data.image_size = 32
    c.data.n_classes = 10
    c.data.num_tasks = 12
    c.data.val_fraction = 0.1
    c.data.target_train = 250         # search candidates: 250 train / 250 val images
    c.data.target_val = 250
    c.space.layers = 4
    c.space.ops = ("conv3x3", "sep_conv3x3", "dil_conv3x3", "max_pool3x3", "identity")
    c.space.widths = (8, 16)
    c.space.stem_width = 8
    c.meta.archs_per_task = 8
    c.meta.train_steps = 10
    c.meta.tasks_per_checkpoint = 3
    c.meta.evaluator_steps = 200
    c.search.budget = 12
    c.search.batch_size = 4
    c.train.epochs = 8
    c.train.batch_size = 128
    c.train.lr = 0.1
    c.train.crop_pad = 4
    c.train.flip = True
    c.train.eval_batch_size = 1000
    return c
