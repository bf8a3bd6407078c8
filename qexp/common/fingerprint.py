"""Content fingerprints of data files and folders: what run ids and cache keys hash instead of paths (issue 14 #1).

A run's identity follows what its data *is*, not where it lies: the same GLUE folder found from another checkout
location gives the same run id (committed records are found and skipped), and a file edited in place gives a new one
(a rerun never passes off a result computed from other data).  A folder's fingerprint covers the regular files directly
in it (names and bytes; hidden files and subfolders are not read).  Memoised per process by (path, size, mtime).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_MEMO: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _MEMO[key] = h.hexdigest()
    return _MEMO[key]


def fingerprint(path: str | os.PathLike, files: list[str] | None = None) -> str | None:
    """``sha256:<16 hex>`` of a file's bytes, or of a folder's files (sorted names and their hashes); None when the
    path does not exist (the run will fail on it by itself, with its own message).  ``files``: for a folder, only
    these names (those that exist; the files the task reads), not every file in it."""
    p = Path(path)
    if p.is_file():
        return "sha256:" + _file_sha256(p)[:16]
    if p.is_dir():
        h = hashlib.sha256()
        chosen = ([p / n for n in sorted(set(files))] if files is not None
                  else [x for x in p.iterdir() if not x.name.startswith(".")])
        for f in sorted(x for x in chosen if x.is_file()):
            h.update(f"{f.name}\0{_file_sha256(f)}\n".encode())
        return "sha256:" + h.hexdigest()[:16]
    return None
