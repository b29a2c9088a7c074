"""The results file of `memefly batch`: JSON Lines, one finished image per line, appended.

A line is written whole, in one write, and flushed, so an interrupt leaves whole lines. A
file cut short by something harsher (a killed process, a full disk) is repaired when it
is opened again: the partial last line is dropped, and that image is done again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO


class ResultsFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.done: set[tuple[str, str | None]] = set()  # (path, sha256) of each line
        self.repaired_bytes = 0
        self._file: BinaryIO | None = None

    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file = open(self.path, "ab", buffering=0)  # unbuffered: each line is one write() call
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # up to the last newline; anything after is a cut line
        if len(whole) != len(data):
            self.repaired_bytes = len(data) - len(whole)
            with open(self.path, "r+b") as file:
                file.truncate(len(whole))
        for number, line in enumerate(whole.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.done.add((record["path"], record.get("sha256")))
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"{self.path}:{number} is not a `memefly batch` result line; choose another --out"
                ) from None

    def has(self, path: str, sha256: str | None) -> bool:
        return (path, sha256) in self.done

    def write(self, record: dict) -> None:
        # ASCII (non-ASCII as \u escapes): a file name that is not valid UTF-8 (kept by Python
        # as lone surrogates) still makes a valid line, and reads back as the same path.
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n"
        assert self._file is not None, "write() inside `with ResultsFile(...)` only"
        self._file.write(line.encode("ascii"))
        self.done.add((record["path"], record.get("sha256")))
