"""Fail fast when a hub asset is needed and the hub cannot be reached.

transformers and datasets retry an unreachable hub for up to a minute before failing.  Before any hub load we
probe the endpoint once (a TCP connect, 3 s at most); when it is unreachable we use the local HF cache only, and if
the asset is not cached we stop at once with an error that names the override which loads a local copy."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import urlparse


class HubUnavailableError(RuntimeError):
    pass


def _offline_env() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                                            "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    if _offline_env():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def _datasets_offline():
    import datasets.config as dc

    old = dc.HF_HUB_OFFLINE
    dc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE = old


def from_hub(load, what: str, hint: str, datasets_lib: bool = False):
    """Call ``load(local_files_only: bool)``; cache only (and fail fast) when the hub is unreachable."""
    if hub_reachable():
        return load(False)
    try:
        if datasets_lib:
            with _datasets_offline():
                return load(True)
        return load(True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not cached"
        raise HubUnavailableError(
            f"{what} is not in the local Hugging Face cache and the hub is unreachable (offline?). "
            f"To use a local copy: {hint}  [{type(e).__name__}: {str(e).splitlines()[0][:200]}]") from None
