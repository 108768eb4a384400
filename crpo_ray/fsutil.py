"""Crash-safe file output: a directory appears complete under its final name, or not at all.

    with atomic_dir(out / "export") as tmp:      # tmp = out/export.tmp-XXXXXXXX
        write_files(tmp)
    # out/export now holds everything written, fsynced; on an exception nothing is left

Pure: no Ray, no torch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Union

TMP_MARK = ".tmp-"


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then each directory (so the entries themselves persist)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for dirpath, _, _ in os.walk(root, topdown=False):
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(path: Union[str, Path], overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh sibling ``<path>.tmp-XXXXXXXX`` to fill; on success fsync it and rename it to
    ``path``; on any exception remove it. An existing ``path`` raises FileExistsError unless
    ``overwrite``, in which case it is replaced (moved aside, then deleted, after the rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists")
    tmp = Path(tempfile.mkdtemp(prefix=path.name + TMP_MARK, dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=path.name + ".old-", dir=path.parent))
            os.replace(path, old / path.name)
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_digests(root: Path, skip: tuple = ()) -> Dict[str, dict]:
    """{relative posix path: {"size", "sha256"}} for every file under ``root`` except ``skip``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in skip:
            out[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out
