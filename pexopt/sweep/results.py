"""The results files: `<out>/results.jsonl` and `<out>/results.csv` (fixed header), one
complete row per finished point, appended and flushed as it arrives; a half-written last line
(a killed writer) is dropped when a sweep resumes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pexopt.errors import PexError
from pexopt.limits import dumps
from pexopt.sweep.signals import _no_sigint
from pexopt.sweep.task import (
    C_DIR,
    C_FILES,
    PLAN_TEXT,
    PLANS_DIR,
    RESULTS_CSV,
    RESULTS_JSONL,
    ROW_FIELDS,
    inside,
)


def _repair_tail(path: Path) -> None:
    """Drop a half-written last line (a killed writer); complete rows are kept."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(cut)


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Complete rows of a results.jsonl (a half-written last line is ignored)."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or an integer of 4,300+ digits
            continue
        if isinstance(row, dict) and "key" in row:
            rows.append(row)
    return rows


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row per key, in first-seen order (a retried point replaces its failure)."""
    last: dict[str, dict[str, Any]] = {}
    for r in rows:
        last[r["key"]] = r
    return list(last.values())


def _csv_line(row: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_FIELDS})
    return buf.getvalue()


def _csv_header() -> str:
    return ",".join(ROW_FIELDS) + "\n"


class ResultsWriter:
    """Appends rows to results.jsonl and results.csv; one write + flush per row and file."""

    def __init__(self, out_dir: Path) -> None:
        self.out = out_dir
        self.jsonl_path = out_dir / RESULTS_JSONL
        self.csv_path = out_dir / RESULTS_CSV
        _repair_tail(self.jsonl_path)
        _repair_tail(self.csv_path)
        previous = read_results(self.jsonl_path)
        if self.csv_path.is_file() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path) as f:
                head = f.readline()
            if head != _csv_header():
                raise PexError(f"{self.csv_path}: its header is not this version's "
                               f"({', '.join(ROW_FIELDS[:4])}, ...); use another output folder")
            fresh_csv = False
        else:
            fresh_csv = True
        self.jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self.csv = open(self.csv_path, "a", encoding="utf-8", newline="")
        if fresh_csv:  # rebuild from results.jsonl if only the CSV went missing
            self.csv.write(_csv_header() + "".join(_csv_line(r) for r in previous))
            self.csv.flush()
        self.done = {r["key"] for r in previous if not r.get("error")}

    def write(self, row: dict[str, Any]) -> None:
        """The point's plan file first (atomic), then its row in both results files."""
        text = row.pop(PLAN_TEXT, None)
        c_files = row.pop(C_FILES, None)
        if text is not None and row.get("plan"):
            from pexopt.plan.format import write_atomic

            dest = inside(self.out / PLANS_DIR, Path(row["plan"]).stem, ".json")
            write_atomic(dest, text)
            row["plan"] = f"{PLANS_DIR}/{dest.name}"
            if c_files:
                folder = inside(self.out / C_DIR, dest.stem, "")
                for name, body in c_files.items():
                    write_atomic(inside(folder, Path(name).stem, Path(name).suffix), body)
                row["codegen"] = f"{C_DIR}/{folder.name}"
        with _no_sigint():
            self.jsonl.write(dumps(row, f"{RESULTS_JSONL} row") + "\n")
            self.jsonl.flush()
            self.csv.write(_csv_line(row))
            self.csv.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.csv.close()
