"""Files written whole or not at all, and file identity: the one copy of each idiom.

Every output of the pipeline is written to a temporary sibling (``<name>.<pid>.partial``) and
renamed into place, so a killed run leaves the old file or the new one, never half of one; two
processes writing the same file do not share a temporary name. Leftovers of a killed run match
``*.partial`` and are safe to delete.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import inspect
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Parameters
    ----------
    path : the file to write; its folder is created if missing

    Yields
    ------
    Path -- where the caller writes; removed if the block raises
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (non-ASCII kept) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False))


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Write a CSV table (``\\n`` line ends, header only when there are no rows) atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, text.getvalue())


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, computed once per (path, size, mtime) in a process."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return content_sha256(path)


def content_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read afresh on every call (nothing cached: a file
    rewritten with the same size and modification time is seen as it is now)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def source_digest(modules: Iterable[ModuleType]) -> str:
    """16 hex digits of a hash of the modules' source code, in order: results keyed by it are
    computed again when that code changes."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]
