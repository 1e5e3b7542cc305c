"""Atomic file writes: every file the package writes appears whole or not at all.

A process killed halfway through writing a plot, a results file or a converted shard must not
leave a truncated file that a later run takes for a finished one, so writers write to a
temporary sibling and rename it into place (a rename is atomic on POSIX file systems).
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `target` to write to; it replaces `target` when the block ends
    without an error and is removed otherwise. The name is unique per process and call, so
    concurrent writers never share a temporary file, and it is created with the usual file mode
    (mkstemp's 0600 would make results private)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
