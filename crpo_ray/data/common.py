"""Shared pieces of the data loaders: CSV reading with row-exact errors, reports."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple



class DataError(ValueError):
    """Malformed input, stated in one line naming the file (and row where there is one)."""


@dataclass
class FileReport:
    """What happened to one file: rows read, loaded, skipped (by reason), unmapped labels."""

    path: str
    dataset: str
    split: str
    is_sample: bool = False
    rows_read: int = 0
    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    unmapped_labels: Counter = field(default_factory=Counter)
    mojibake_fixed: int = 0

    def line(self) -> str:
        parts = [f"{self.dataset}/{self.split}: {self.loaded}/{self.rows_read} rows from {self.path}"]
        if self.is_sample:
            parts.append("(a partial sample of the source file)")
        if self.unmapped_labels:
            n = sum(self.unmapped_labels.values())
            top = ", ".join(f"{k!r} x{v}" for k, v in self.unmapped_labels.most_common(3))
            parts.append(f"unmapped labels: {n} ({top})")
        if self.skipped:
            parts.append("skipped: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.skipped.items())))
        if self.mojibake_fixed:
            parts.append(f"mojibake repaired in {self.mojibake_fixed} rows")
        return "; ".join(parts)


@dataclass
class LoadReport:
    files: List[FileReport] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        return sum(f.loaded for f in self.files)

    @property
    def unmapped(self) -> int:
        return sum(sum(f.unmapped_labels.values()) for f in self.files)

    @property
    def skipped(self) -> int:
        return sum(sum(f.skipped.values()) for f in self.files)

    def lines(self) -> List[str]:
        return [f.line() for f in self.files] + list(self.notes)

    def as_dict(self) -> dict:
        return {
            "loaded": self.loaded, "unmapped": self.unmapped, "skipped": self.skipped,
            "files": [
                {"path": f.path, "dataset": f.dataset, "split": f.split, "is_sample": f.is_sample,
                 "rows_read": f.rows_read, "loaded": f.loaded, "skipped": dict(f.skipped),
                 "unmapped_labels": dict(f.unmapped_labels), "mojibake_fixed": f.mojibake_fixed}
                for f in self.files
            ],
            "notes": list(self.notes),
        }


_SURROGATE = re.compile("[\udc80-\udcff]")


def read_csv_rows(path: Path, required: Sequence[str], strict: bool, report: FileReport) -> Iterator[Tuple[int, Dict[str, str]]]:
    """Yield ``(row_number, {column: value})`` for each well-formed data row.

    Row numbers count data rows from 1 (the header is not a row). In strict mode
    the first malformed row raises :class:`DataError`; otherwise it is skipped and
    counted in ``report.skipped``. A missing required column always raises.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text = raw.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file (no header)") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV header ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(h or '<unnamed>' for h in header)})")
    row_no = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            msg = f"malformed CSV ({exc})"
            if strict:
                raise DataError(f"{path}: row {row_no + 1} (line {reader.line_num}): {msg}") from None
            report.skipped["malformed CSV, rest of file unreadable"] += 1
            return
        row_no += 1
        report.rows_read += 1
        if not row or all(not c.strip() for c in row):
            problem = "blank row"
        elif len(row) != len(header):
            problem = f"expected {len(header)} fields, got {len(row)}"
        elif any(_SURROGATE.search(c) for c in row):
            problem = "undecodable bytes (not UTF-8)"
        else:
            yield row_no, dict(zip(header, row))
            continue
        if strict:
            raise DataError(f"{path}: row {row_no} (line {reader.line_num}): {problem}")
        report.skipped[problem.split(",")[0] if problem.startswith("expected") else problem] += 1


def row_problem(path: Path, row_no: int, problem: str, strict: bool, report: FileReport) -> None:
    """A row that parsed as CSV but is unusable (empty text...): raise or count."""
    if strict:
        raise DataError(f"{path}: row {row_no}: {problem}")
    report.skipped[problem] += 1


_MOJIBAKE_RUN = re.compile("[\u0080-\uffff]{2,}")


def fix_mojibake(text: str) -> Tuple[str, bool]:
    """Repair UTF-8 that was decoded as Mac Roman ("‚Äô" -> "’"), conservatively.

    Only runs of two or more non-ASCII characters that encode to Mac Roman and then
    decode as valid UTF-8 are replaced; anything else is left byte for byte.
    """
    changed = False

    def repl(m):
        nonlocal changed
        run = m.group(0)
        try:
            fixed = run.encode("mac_roman").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return run
        changed = changed or fixed != run
        return fixed

    return _MOJIBAKE_RUN.sub(repl, text), changed
