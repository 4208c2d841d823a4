"""The reference experiment as designed (for a GPU/TPU): meta-train on 100 NAS tasks of
64 train / 16 val images from a source dataset (CIFAR-100 via TFDS by default; pass
``:tfds:imagenet_resized/32x32`` for downsampled ImageNet), search CIFAR-10 with 200
real evaluations, train the found architecture for 300 epochs.

    metanas run --config configs/cifar10_reference.py
    metanas run --config 'configs/cifar10_reference.py:tfds:imagenet_resized/32x32'
"""

from pathlib import Path

from metanas_jax.config import load_config

def get_config(arg=None):
    c = load_config(str(Path(__file__).with_name("default.py")))
    c.name = "cifar10_reference"
    c.data.source = arg or "tfds:cifar100"
    c.data.target = "tfds:cifar10"
    c.data.image_size = 32
    c.data.n_classes = 10
    c.data.n_train = 64
    c.data.n_val = 16
    c.data.num_tasks = 100
    c.data.val_fraction = 0.1
    c.data.target_train = 5000
    c.data.target_val = 1000
    c.space.layers = 8
    c.space.ops = ("conv3x3", "conv5x5", "sep_conv3x3", "sep_conv5x5", "dil_conv3x3",
                   "max_pool3x3", "identity")
    c.space.widths = (16, 32, 48, 64)
    c.space.stem_width = 16
    c.meta.archs_per_task = 64
    c.meta.train_steps = 50
    c.meta.chunk = 64
    c.meta.tasks_per_checkpoint = 10
    c.meta.evaluator_steps = 2000
    c.meta.batch_tasks = 8
    c.meta.hidden = (128, 128)
    c.meta.es_iterations = 10
    c.meta.es_population = 8
    c.search.budget = 200
    c.search.batch_size = 20
    c.search.n_random = 256
    c.search.n_starts = 16
    c.train.epochs = 300
    c.train.batch_size = 128
    c.train.lr = 0.1
    c.train.weight_decay = 5e-4
    c.train.warmup_epochs = 5
    c.train.crop_pad = 4
    c.train.flip = True
    c.train.bf16 = "auto"
    c.train.eval_batch_size = 1000
    return c
