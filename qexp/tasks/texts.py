"""Named texts that ship with Python (so label-free calibration and LKD run offline), or any UTF-8 text file."""
from __future__ import annotations

from pathlib import Path

from ..common.registry import Registry

TEXT_SOURCES: Registry = Registry("text source")


@TEXT_SOURCES.register("pydoc_topics")
def pydoc_topics() -> str:
    """CPython's help text for the language reference (``pydoc_data.topics``, ~500 kB of English), sorted by topic."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def is_named(source: str) -> bool:
    return source in TEXT_SOURCES


def read_text(source: str) -> str:
    """A TEXT_SOURCES name (``pydoc_topics``) or the path of a UTF-8 text file."""
    if is_named(source):
        return TEXT_SOURCES.get(source)()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"text {source!r} is neither a file nor a known text source; valid sources: "
                                f"{TEXT_SOURCES.names()} or a file path")
    return path.read_text(encoding="utf-8")
