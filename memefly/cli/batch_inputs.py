"""What `memefly batch` works through: files, folders (recursively, by extension), globs and
list files, expanded lazily into one ordered stream of distinct paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


class InputError(ValueError):
    """An input that names nothing: a missing file, an empty glob, an unreadable list file."""


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def expand(
    inputs: Iterable[str], lists: Iterable[str] = (), extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> Iterator[Path]:
    """Absolute paths, each once, in the order given (folders and globs sorted). Files named
    outright are taken whatever their extension (the user asked for them); folders and globs
    yield only files with an image extension. Raises InputError for an input naming nothing."""
    wanted = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    seen: set[str] = set()

    def once(path: Path) -> Iterator[Path]:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            yield Path(key)

    def one(entry: str, *, explicit: bool) -> Iterator[Path]:
        path = Path(entry).expanduser()
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(wanted):
                        yield from once(Path(root) / name)
        elif path.exists() or path.is_symlink():
            yield from once(path)
        elif _has_magic(entry):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise InputError(f"{entry}: the pattern matches nothing")
            for match in matches:
                if Path(match).is_file() and match.lower().endswith(wanted):
                    yield from once(Path(match))
        elif explicit:
            raise InputError(f"{entry}: no such file or folder")
        else:  # a line of a list file naming a file that is gone: its result will say so
            yield from once(path)

    for entry in inputs:
        yield from one(entry, explicit=True)
    for list_file in lists:
        try:
            lines = Path(list_file).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise InputError(f"{list_file}: cannot read the list: {error.strerror}") from None
        for line in lines:  # one path per line, relative to the current folder, as xargs would
            line = line.strip()
            if line and not line.startswith("#"):
                yield from one(line, explicit=False)
