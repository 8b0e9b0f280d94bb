"""Small file helpers shared by the stages: hashing, atomic replacement, cheap copies, records."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from slipway.errors import RecordError

_REQUIRED: Any = object()


def read_record(path: Path, missing: Any = _REQUIRED, *, kind: type = dict) -> Any:
    """The JSON record at ``path`` as untyped data: for the publish stage until it reads its records
    through ``slipway.records`` like every other stage.

    A file that is not there is ``missing`` when one is given (an optional record is then "absent"),
    else a ``RecordError``. A file that is there but cannot be read, is not valid JSON, or is not a
    ``kind`` (a JSON object by default) is always a ``RecordError`` naming the file: a damaged record
    never passes for an absent one.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is _REQUIRED:
            raise RecordError(path, "is missing") from None
        return missing
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordError(path, f"cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError(path, f"is not valid JSON ({exc})") from None
    if kind is not None and not isinstance(data, kind):
        expected = "a JSON object" if kind is dict else "a JSON array" if kind is list else kind.__name__
        raise RecordError(path, f"holds {type(data).__name__}, expected {expected}")
    return data


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(paths: Iterable[Path], *, base: Path | None = None) -> str:
    """One hash over files and folders (names and contents), ignoring caches."""
    h = hashlib.sha256()
    for top in sorted(Path(p) for p in paths):
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            name = f.relative_to(base).as_posix() if base else f.as_posix()
            h.update(name.encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` into place as ``target``; an existing ``target`` is removed only afterwards."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (a torch wheel is large), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sync_tree(src: Path, dst: Path, *, ignore: tuple[str, ...] = ("__pycache__", "*.pyc")) -> None:
    """Make ``dst`` an exact copy of ``src``, leaving unchanged files untouched (build cache friendly)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore), copy_function=shutil.copy2)
