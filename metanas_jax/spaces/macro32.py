"""``macro32``: the reference CNN macro space, 8 searchable layers x 4 genes = 32 numbers.

Network: ``stem`` (``stem_kernel`` x ``stem_kernel`` conv, default 3, to ``stem_width``
channels, BN, activation; ``stem_norm=False``: conv with bias, activation; a 2x2 stem can
be initialised as a frozen patch-whitening layer by the final-training recipe, see
:mod:`metanas_jax.train`), then ``layers`` searchable layers, then global pooling
(``head_pool``: mean or max) and a linear classifier whose logits are scaled by
``head_scale``. ``activation`` (ReLU or GELU) is every convolution's. Fixed properties of
the family, not genes: they are what lets a space hold airbench-class networks. Layer ``l``
owns ``z[4 l : 4 l + 4]``, one gene each (layer-major), in this order:

0. ``op``: the layer's operation, in this order (neighbouring values are similar ops):
   ``conv3x3``, ``conv5x5``, ``sep_conv3x3``, ``sep_conv5x5``, ``dil_conv3x3``
   (3x3, dilation 2), ``max_pool3x3``, ``identity``. Convolutions are conv-BN-activation;
   separable ones are depthwise kxk then pointwise 1x1, then BN-activation.
1. ``width``: output channels, one of ``widths`` (default 16, 32, 48, 64). Parameter-free
   ops keep their input's channels and are zero-padded or truncated to the width.
2. ``residual``: ``off`` / ``on``: add the input (strided and zero-padded / truncated to
   the output shape, parameter-free like ResNet's option A) to the op's output.
3. ``downsample``: ``off`` / ``on``: the layer halves the resolution, as the space's
   ``reduction`` says: ``"stride"`` (default): the op (and the shortcut) run with stride 2;
   ``"pool"``: the layer (op plus shortcut) runs at its input's resolution and its output
   is 2x2 max-pooled, airbench's and VGG's convolution-then-pool (4x the convolution's
   FLOPs of a strided layer, and more accurate). Any number of layers may downsample;
   past 1x1 a downsampling layer keeps 1x1. ``pool_before_norm=True`` (a ``"pool"``
   space only) moves the pool inside the op, airbench's order: convolution, 2x2 max-pool,
   then batch norm and activation on the pooled map (a quarter of the pixels); the
   shortcut and the parameter-free ops are max-pooled the same way.

Why these genes: they are the choices that set a plain CNN's accuracy and cost (op type
and receptive field, capacity, trainability, resolution schedule), each is independent of
the others, so every point of [0, 1]^32 decodes to a valid network, and the width and
downsample choices can be expressed as data (channel masks and resolution levels) inside
one supernet program, see :mod:`metanas_jax.nn.macro`.
"""
from __future__ import annotations

import dataclasses

from metanas_jax.spaces.base import Arch, GeneGroup
from metanas_jax.spaces.categorical import CategoricalSpace, layer_major

MACRO_OPS = ("conv3x3", "conv5x5", "sep_conv3x3", "sep_conv5x5", "dil_conv3x3",
             "max_pool3x3", "identity")
GENES = ("op", "width", "residual", "downsample")

REDUCTIONS = ("stride", "pool")
ACTIVATIONS = ("relu", "gelu")
HEAD_POOLS = ("mean", "max")

# A macro32 space wide enough for strong CIFAR-10 networks, shaped as airbench94 (Jordan
# 2024): 8 layers, widths up to 256, a 2x2 stem of 24 channels without batch norm that the
# fast final-training recipe makes a frozen patch-whitening layer (2 x 2x2x3 = 24),
# downsampling by convolution, max-pool, then batch norm and GELU (airbench's order: 1.2x
# the training step of conv-BN-GELU-pool on a CPU, as accurate; benchmarks/LOG.md), global
# max-pooling and logits x 1/9.
CIFAR_SPACE = dict(layers=8, widths=(32, 64, 128, 256), stem_width=24, stem_kernel=2,
                   reduction="pool", pool_before_norm=True, stem_norm=False, activation="gelu",
                   head_pool="max", head_scale=1 / 9)

# Hand-designed points of macro32 (8 layers; need conv3x3 and identity among the ops and
# the widths they name), the baselines a search must beat at the same training budget:
# ``airbench8`` follows airbench94's layout (Jordan 2024): 64, 256, 256 channels, two
# convolutions per resolution, the first followed by the 2x2 max-pool in a ``reduction="pool"``
# space (a stride-2 convolution in a ``"stride"`` space); in :data:`CIFAR_SPACE` it differs
# from airbench94 in SAME padding (32, 16, 8, 4 pixels; airbench 31, 15, 7, 3), a head
# bias and two identity layers;
# ``resnet8`` a ResNet-like network of residual pairs at 64, 128, 256 channels.
REFERENCE_ARCHS = {
    "airbench8": "conv3x3-64/2 | conv3x3-64 | conv3x3-256/2 | conv3x3-256 | conv3x3-256/2 | "
                 "conv3x3-256 | identity-256 | identity-256",
    "resnet8": "conv3x3-64 | conv3x3-64+res | conv3x3-128/2 | conv3x3-128+res | conv3x3-256/2 | "
               "conv3x3-256+res | conv3x3-256/2 | conv3x3-256+res",
}


@dataclasses.dataclass(frozen=True)
class Macro32(CategoricalSpace):
    layers: int = 8
    ops: tuple[str, ...] = MACRO_OPS
    widths: tuple[int, ...] = (16, 32, 48, 64)
    stem_width: int = 16
    stem_kernel: int = 3
    reduction: str = "stride"
    stem_norm: bool = True          # stem conv -> BN -> act; False: conv with bias -> act
    activation: str = "relu"        # of every conv op and the stem: "relu" or "gelu"
    head_pool: str = "mean"         # global pooling before the classifier: "mean" or "max"
    head_scale: float = 1.0         # the logits are multiplied by it (airbench: 1/9)
    pool_before_norm: bool = False  # "pool" spaces: conv -> pool -> BN -> act (airbench)
    name: str = dataclasses.field(default="macro32", init=False)
    encoding_center = 0.5  # genes live in [0, 1]: 0.5 prefers no choice (not a field)

    def __post_init__(self):
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.layers < 1:
            raise ValueError(f"macro32: layers must be >= 1, got {self.layers}")
        unknown = [o for o in self.ops if o not in MACRO_OPS]
        if unknown or not self.ops:
            raise ValueError(f"macro32: unknown op(s) {unknown}; known: {list(MACRO_OPS)}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"macro32: widths must be positive channel counts, got {self.widths}")
        if self.stem_width < 1:
            raise ValueError(f"macro32: stem_width must be >= 1, got {self.stem_width}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"macro32: reduction must be one of {list(REDUCTIONS)}, got {self.reduction!r}")
        if self.stem_kernel < 1:
            raise ValueError(f"macro32: stem_kernel must be >= 1, got {self.stem_kernel}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"macro32: activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if self.head_pool not in HEAD_POOLS:
            raise ValueError(f"macro32: head_pool must be one of {list(HEAD_POOLS)}, got {self.head_pool!r}")
        if not (isinstance(self.head_scale, (int, float)) and 0 < self.head_scale < float("inf")):
            raise ValueError(f"macro32: head_scale must be a positive number, got {self.head_scale!r}")
        if self.pool_before_norm and self.reduction != "pool":
            raise ValueError(f"macro32: pool_before_norm=True needs reduction='pool', got "
                             f"reduction={self.reduction!r}")
        object.__setattr__(self, "stem_norm", bool(self.stem_norm))
        object.__setattr__(self, "pool_before_norm", bool(self.pool_before_norm))
        object.__setattr__(self, "head_scale", float(self.head_scale))

    def config(self):
        cfg = super().config()
        cfg.pop("name")
        return cfg

    @property
    def groups(self):
        return (GeneGroup("op", self.layers, self.ops),
                GeneGroup("width", self.layers, tuple(str(w) for w in self.widths)),
                GeneGroup("residual", self.layers, ("off", "on")),
                GeneGroup("downsample", self.layers, ("off", "on")))

    @property
    def gene_index(self):
        return layer_major(self.groups, self.layers)

    def layer(self, arch: Arch, l: int) -> tuple[str, int, bool, bool]:
        """``(op, width, residual, downsample)`` of layer ``l``."""
        op, width, res, down = arch.choices[4 * l: 4 * l + 4]
        return self.ops[op], self.widths[width], bool(res), bool(down)

    def reference(self, name: str) -> Arch:
        """The named hand-designed architecture :data:`REFERENCE_ARCHS` ``[name]`` in this space."""
        if name not in REFERENCE_ARCHS:
            raise ValueError(f"macro32: unknown reference architecture {name!r}; known: "
                             f"{sorted(REFERENCE_ARCHS)}")
        try:
            return self.from_string(REFERENCE_ARCHS[name])
        except ValueError as e:
            raise ValueError(f"macro32: reference {name!r} does not fit this space ({e}); it "
                             f"needs 8 layers, e.g. spaces.get('macro32', **CIFAR_SPACE)") from None

    def to_string(self, arch: Arch) -> str:
        parts = []
        for l in range(self.layers):
            op, width, res, down = self.layer(arch, l)
            parts.append(f"{op}-{width}" + ("+res" if res else "") + ("/2" if down else ""))
        return " | ".join(parts)

    def from_string(self, text: str) -> Arch:
        parts = [p.strip() for p in str(text).split("|")]
        if len(parts) != self.layers:
            raise ValueError(f"macro32: expected {self.layers} layers separated by '|', "
                             f"got {len(parts)} in {text!r}")
        choices = []
        for l, p in enumerate(parts):
            down = p.endswith("/2")
            p = p[:-2] if down else p
            res = p.endswith("+res")
            p = p[:-4] if res else p
            op, _, width = p.rpartition("-")
            if op not in self.ops:
                raise ValueError(f"macro32: unknown op {op!r} in layer {l} of {text!r}; "
                                 f"known: {list(self.ops)}")
            try:
                w = self.widths.index(int(width))
            except ValueError:
                raise ValueError(f"macro32: width {width!r} in layer {l} of {text!r} is not "
                                 f"one of {list(self.widths)}") from None
            choices += [self.ops.index(op), w, int(res), int(down)]
        return self.make_arch(choices)
