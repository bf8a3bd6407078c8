"""Output folders checked before any work: a run or a benchmark that cannot write its result fails at once, not
after it has run (issue 14 #5, issue 27 #13/#15)."""
from __future__ import annotations

from pathlib import Path


class OutputDirError(ValueError):
    pass


def writable(folder: Path, key: str) -> None:
    """Refuse an output folder that cannot be created or written, now, so it fails before the run and not at its end
    (issue 14 #5, issue 27 #13).  The nearest existing ancestor must be a folder in which a probe file can really be
    created and removed (``os.access`` says yes under ``/proc`` as root); a dangling symlink (an unmounted scratch
    disk) on the way is refused by name."""
    import os
    import tempfile

    p = folder
    while not p.exists() and p != p.parent:
        if p.is_symlink():
            raise OutputDirError(f"{key}={str(folder)!r} cannot be created: {str(p)!r} is a symlink to "
                                 f"{os.readlink(p)!r}, which does not exist (an unmounted disk?); choose another with "
                                 f"{key}=DIR")
        p = p.parent
    if not p.is_dir():
        raise OutputDirError(f"{key}={str(folder)!r} cannot be created: {str(p)!r} is a file, not a folder; choose "
                             f"another with {key}=DIR")
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".qexp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(f"{key}={str(folder)!r} is not writable (creating a file in {str(p)!r} failed: "
                             f"{e.strerror or e}); choose another with {key}=DIR") from None
