"""``macro32``: the reference CNN macro space, 8 searchable layers x 4 genes = 32 numbers.

Network: ``stem`` (3x3 conv to ``stem_width`` channels, BN, ReLU), then ``layers``
searchable layers, then global average pooling and a linear classifier. Layer ``l`` owns
``z[4 l : 4 l + 4]``, one gene each (layer-major), in this order:

0. ``op``: the layer's operation, in this order (neighbouring values are similar ops):
   ``conv3x3``, ``conv5x5``, ``sep_conv3x3``, ``sep_conv5x5``, ``dil_conv3x3``
   (3x3, dilation 2), ``max_pool3x3``, ``identity``. Convolutions are conv-BN-ReLU;
   separable ones are depthwise kxk then pointwise 1x1, then BN-ReLU.
1. ``width``: output channels, one of ``widths`` (default 16, 32, 48, 64). Parameter-free
   ops keep their input's channels and are zero-padded or truncated to the width.
2. ``residual``: ``off`` / ``on``: add the input (strided and zero-padded / truncated to
   the output shape, parameter-free like ResNet's option A) to the op's output.
3. ``downsample``: ``off`` / ``on``: the op (and the shortcut) run with stride 2. Any
   number of layers may downsample; past 1x1 a stride-2 layer keeps 1x1.

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


@dataclasses.dataclass(frozen=True)
class Macro32(CategoricalSpace):
    layers: int = 8
    ops: tuple[str, ...] = MACRO_OPS
    widths: tuple[int, ...] = (16, 32, 48, 64)
    stem_width: int = 16
    name: str = dataclasses.field(default="macro32", init=False)

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
