"""Small file helpers shared by the stages: hashing, atomic replacement, cheap copies."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path


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
