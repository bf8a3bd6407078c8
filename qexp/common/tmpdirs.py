"""Temporary folders next to a cache entry, named after the process that owns them, so the garbage a killed run
leaves behind (``.tmp-<entry>-<host>-<pid>-*``) is removed by the next run on that host (issue 14 #9)."""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def remove_stale(parent: Path) -> list[Path]:
    """Remove the ``.tmp-*`` folders in ``parent`` whose owning process (on this host) is gone; returns them."""
    host, removed = socket.gethostname(), []
    for d in Path(parent).glob(".tmp-*") if Path(parent).is_dir() else []:
        parts = d.name.split("~")   # .tmp-<entry>~<host>~<pid>~<random>
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
            continue
        if not _alive(int(parts[2])):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def make_tmp(parent: Path, entry: str) -> Path:
    """A new temporary folder in ``parent`` for building ``entry``, after removing stale ones."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f".tmp-{entry}~{socket.gethostname()}~{os.getpid()}~"))


def replace_dir(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` to ``folder``, replacing an older copy without a moment where a concurrent identical
    job's rename can fail: the old copy is moved aside first; if another job's copy lands first, it is kept."""
    old = None
    if folder.exists():
        old = folder.with_name(f".old-{folder.name}~{socket.gethostname()}~{os.getpid()}")
        try:
            os.rename(folder, old)
        except OSError:
            old = None
    try:
        os.rename(tmp, folder)
    except OSError:   # another job finished the same entry first: keep its copy
        pass
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
