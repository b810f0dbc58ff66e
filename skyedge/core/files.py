"""Files every layer writes: crash-safe atomic writes, JSON documents and CSV rows (stdlib only).

Atomic writes serve manifests, the local object store and the device agent. A reader (or a process restarted after SIGKILL) sees the old file or the new one, never half of
one: write a temporary sibling, fsync it, rename it over the target, then fsync the directory so
the rename itself is on disk. Stdlib only: the device side uses it.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(handle) on a temporary sibling of path, then replace path with it atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_json(path: Path, payload: dict | list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """A list of same-keyed dicts as CSV (training curves for `dvc plots`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict]:
    """Rows written by `write_rows`, with numbers parsed back (empty cells become None)."""
    with Path(path).open(newline="") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> float | str | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text
