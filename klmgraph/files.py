"""Atomic file writes: a file under its final name is always complete."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    The rename is atomic on POSIX file systems, so readers (and a resumed run) see either the old
    file or the new one, never a half-written one. If the block raises, the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
