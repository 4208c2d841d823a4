"""Read-only file trees: an unpacked folder, a tar or a zip, behind one interface.

Sources see relative POSIX paths and read many files in one call, whatever the container,
so a dataset can be used as shipped (a ``.tar`` or ``.zip``) without unpacking it.  An
uncompressed tar is indexed by a scan of its headers and read by offset, several times
faster than :mod:`tarfile` on archives of many small images.
"""

from __future__ import annotations

import collections
import os
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

__all__ = ["Tree", "IMAGE_EXTS", "is_hidden", "is_image", "wrapped", "check_exists"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def is_hidden(parts: Sequence[str]) -> bool:
    """Dot files and macOS's ``__MACOSX`` zip folders: never data, so never an error."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _parse_pax(block: bytes) -> dict[str, str] | None:
    """Records ``"<len> key=value\\n"`` of a PAX extended header; None if malformed."""
    out, i = {}, 0
    while i < len(block) and block[i:i + 1] not in (b"\0", b""):
        sp = block.find(b" ", i)
        if sp < 0:
            return None
        n = int(block[i:sp])
        rec = block[sp + 1:i + n]
        if n <= 0 or not rec.endswith(b"\n") or b"=" not in rec:
            return None
        k, v = rec[:-1].split(b"=", 1)
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        i += n
    return out


def _fast_tar_index(path: Path) -> list[tuple[str, str, int, int]] | None:
    """(name, "file"/"dir"/"other", data offset, size) of every member of an uncompressed
    ustar / GNU / PAX tar, from a scan of its headers (several times faster than
    ``tarfile`` on archives of many small files).  PAX ``path``/``size`` records and GNU
    long names are honoured; ``None`` means "use tarfile instead" (compressed or pre-POSIX
    archive, sparse files, global PAX headers, base-256 sizes, bad checksum, ...)."""
    out = []
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if len(head) < 512 or head[257:262] != b"ustar":
                return None  # compressed, or pre-POSIX tar
            pos = 0
            override: dict[str, str] = {}
            while True:
                f.seek(pos)
                hdr = f.read(512)
                if len(hdr) < 512:
                    return None
                if hdr == b"\0" * 512:
                    break
                if hdr[257:262] != b"ustar":
                    return None
                chk = hdr[148:156].split(b"\0", 1)[0].strip()
                if not chk or int(chk, 8) != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                    return None
                if hdr[124] & 0x80:
                    return None  # base-256 size
                size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
                typ = hdr[156:157]
                data_pos = pos + 512
                pos = data_pos + (size + 511) // 512 * 512
                if typ in (b"x", b"L"):
                    f.seek(data_pos)
                    block = f.read(size)
                    if len(block) != size:
                        return None
                    if typ == b"L":
                        override["path"] = block.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    else:
                        pax = _parse_pax(block)
                        if pax is None or any(k.startswith("GNU.sparse") for k in pax):
                            return None
                        override.update({k: v for k, v in pax.items() if k in ("path", "size")})
                    continue
                if typ not in (b"0", b"\0", b"5", b"1", b"2", b"3", b"4", b"6", b"7"):
                    return None  # global PAX ("g"), GNU long link ("K"), sparse ("S"), ...
                name_b = hdr[0:100].split(b"\0", 1)[0]
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if prefix:
                    name_b = prefix + b"/" + name_b
                name = override.get("path", name_b.decode("utf-8", "surrogateescape"))
                if "size" in override:
                    size = int(override["size"])
                    pos = data_pos + (size + 511) // 512 * 512
                override = {}
                kind = "file" if typ in (b"0", b"\0", b"7") else "dir" if typ == b"5" else "other"
                if typ in (b"1", b"2", b"3", b"4", b"6"):
                    size = 0
                out.append((name, kind, data_pos, size))
    except (OSError, ValueError):
        return None
    return out


class Tree:
    """A read-only file tree: an unpacked folder, a tar or a zip.

    ``files``: relative POSIX paths of regular files; ``dirs``: relative folder paths
    (explicit and implied).  ``read_many`` yields ``(display name, bytes)`` in the order
    given (a tar is read in a single sequential pass).
    """

    def __init__(self, path: Path):
        self.path = path
        self.dirs: set[str] = set()
        self.files: list[str] = []
        if path.is_dir():
            self.kind = "dir"
            for root, dirs, files in os.walk(path):
                rel_root = os.path.relpath(root, path)
                rel_root = "" if rel_root == "." else PurePosixPath(Path(rel_root)).as_posix()
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
                for d in dirs:
                    self.dirs.add(f"{rel_root}/{d}" if rel_root else d)
                for f in sorted(files):
                    self.files.append(f"{rel_root}/{f}" if rel_root else f)
        elif tarfile.is_tarfile(path):
            self.kind = "tar"
            # Uncompressed tars are indexed by a fast header scan and read by offset;
            # compressed ones (or unusual headers) go through tarfile.
            self._offsets: dict[str, tuple[int, int]] | None = None
            self._members: dict[str, tarfile.TarInfo] = {}
            index = _fast_tar_index(path)
            if index is not None:
                self._offsets = {}
                for name, kind, offset, size in index:
                    name = self._norm(name)
                    if not name or name == ".":
                        continue
                    if kind == "dir":
                        self.dirs.add(name)
                    elif kind == "file":
                        self.files.append(name)
                        self._offsets[name] = (offset, size)
            else:
                try:
                    with tarfile.open(path, "r:*") as tf:
                        for m in tf:
                            name = self._norm(m.name)
                            if not name or name == ".":
                                continue
                            if m.isdir():
                                self.dirs.add(name)
                            elif m.isfile():
                                self.files.append(name)
                                self._members[name] = m
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise ValueError(f"cannot read tar archive {path}: {e}") from e
        elif zipfile.is_zipfile(path):
            self.kind = "zip"
            try:
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        name = info.filename.rstrip("/")
                        if info.is_dir():
                            self.dirs.add(name)
                        else:
                            self.files.append(name)
            except (zipfile.BadZipFile, OSError) as e:
                raise ValueError(f"cannot read zip archive {path}: {e}") from e
        else:
            raise ValueError(f"{path} is neither a folder nor a readable .tar or .zip archive")
        done: set[str] = set()
        for f in self.files:  # implied folders
            d = f.rpartition("/")[0]
            while d and d not in done:
                done.add(d)
                self.dirs.add(d)
                d = d.rpartition("/")[0]

    def display(self, rel: str) -> str:
        if self.kind == "dir":
            return str(self.path / rel)
        return f"{self.path}:{rel}"

    def read_many(self, rels: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        if self.kind == "dir":
            for rel in rels:
                p = self.path / rel
                try:
                    yield str(p), p.read_bytes()
                except OSError as e:
                    raise ValueError(f"cannot read {p}: {e}") from e
        elif self.kind == "tar" and self._offsets is not None:
            with open(self.path, "rb") as f:
                for rel in rels:
                    offset, size = self._offsets[rel]
                    f.seek(offset)
                    data = f.read(size)
                    if len(data) != size:
                        raise ValueError(f"cannot read {self.display(rel)}: the tar archive is truncated")
                    yield self.display(rel), data
        elif self.kind == "tar":
            # One sequential pass in archive order; items are re-emitted in the requested
            # order (buffering only those that come early in the archive).
            got: dict[str, bytes] = {}
            try:
                with tarfile.open(self.path, "r:*") as tf:
                    members = sorted((self._members[r] for r in set(rels)), key=lambda m: m.offset_data)
                    next_i = 0
                    for m in members:
                        name = self._norm(m.name)
                        f = tf.extractfile(m)
                        if f is None:
                            raise ValueError(f"cannot read {self.display(name)}")
                        got[name] = f.read()
                        while next_i < len(rels) and rels[next_i] in got:
                            r = rels[next_i]
                            yield self.display(r), got.pop(r)
                            next_i += 1
            except (tarfile.TarError, OSError, EOFError) as e:
                raise ValueError(f"cannot read tar archive {self.path}: {e}") from e
        else:
            with zipfile.ZipFile(self.path) as zf:
                for rel in rels:
                    try:
                        yield self.display(rel), zf.read(rel)
                    except (zipfile.BadZipFile, OSError, KeyError) as e:
                        raise ValueError(f"cannot read {self.display(rel)}: {e}") from e

    @staticmethod
    def _norm(name: str) -> str:
        while name.startswith("./"):
            name = name[2:]
        return name.rstrip("/")


def check_exists(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _mode_depth(parts_list: list[list[str]]) -> int:
    """The most common path depth (ties -> the larger)."""
    counts = collections.Counter(len(p) for p in parts_list)
    return max(counts, key=lambda d: (counts[d], d))


def wrapped(parts_list: list[list[str]]) -> bool:
    """All paths share one top folder that wraps the expected 3-level layout."""
    return (
        _mode_depth(parts_list) >= 4
        and min(len(p) for p in parts_list) >= 2
        and len({p[0] for p in parts_list}) == 1
    )

