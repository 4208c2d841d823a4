"""Dataset spec strings: ``KIND:ARG?name=value&name=value``.

A spec names a dataset in one string, so a config key (``data.target``) or a command-line
override can carry it whole: ``digits``, ``folder:/data/pets?test_fraction=0.2&seed=1``,
``tfds:mnist?data_dir=/data/tfds``.  Options follow the last ``?`` as ``name=value`` pairs
joined by ``&``; a value may be %-escaped (``%26`` for ``&``).  Text after a ``?`` that is
not such a list stays part of the path.  Which options a kind takes is checked by
:func:`check_options`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from urllib.parse import unquote

__all__ = ["Spec", "parse_spec", "check_options", "same_dataset"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_QUERY = re.compile(rf"{_NAME}=[^&]*(?:&{_NAME}=[^&]*)*")
_PATH_KINDS = ("folder", "omniglot", "idx", "npz")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed spec: ``kind`` (lower case), ``arg`` (path or name, stripped) and the
    ``options`` as strings; ``text`` is the spec as given."""

    kind: str
    arg: str
    options: dict
    text: str

    @property
    def base(self) -> str:
        """The spec without its options (``kind:arg``, or ``kind``)."""
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


def parse_spec(spec: str) -> Spec:
    """Split ``spec`` into kind, argument and options (no check of the kind)."""
    body, q, query = spec.rpartition("?")
    options: dict[str, str] = {}
    if q and _QUERY.fullmatch(query):
        for item in query.split("&"):
            name, _, value = item.partition("=")
            if name in options:
                raise ValueError(f"option {name!r} given twice in dataset spec {spec!r}")
            options[name] = unquote(value.strip())
    else:
        body = spec
    kind, _, arg = body.partition(":")
    return Spec(kind.strip().lower(), arg.strip(), options, spec)


def check_options(spec: Spec, allowed: tuple[str, ...]) -> None:
    """``ValueError`` naming the spec for an option its kind does not take."""
    unknown = sorted(set(spec.options) - set(allowed))
    if unknown:
        takes = f"takes only {', '.join(a + '=' for a in allowed)}" if allowed else "takes no options"
        raise ValueError(f"unknown option {unknown[0]!r} in dataset spec {spec.text!r}: '{spec.kind}:' {takes}")


def _identity(text: str) -> tuple[str, str]:
    spec = parse_spec(str(text))
    kind, arg = spec.kind, spec.arg
    if kind in _PATH_KINDS and arg:
        paths = [Path(p.strip()).expanduser().resolve() for p in arg.split(",")] if kind == "omniglot" \
            else [Path(arg).expanduser().resolve()]
        if kind == "folder" and paths[0].is_dir():
            from .formats import has_idx

            if has_idx(paths[0]):
                kind = "idx"
        arg = ",".join(str(p) for p in paths)
    return kind, arg


def same_dataset(a: str, b: str) -> bool:
    """Whether two specs name the same data: paths resolved, options ignored (a carved
    split or a TFDS data folder is still the same dataset), ``folder:`` of IDX files and
    ``idx:`` of that folder alike."""
    return _identity(a) == _identity(b)
