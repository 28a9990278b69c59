"""Rendering rules shared by every report: CSV that spreadsheets cannot execute and that
follows RFC 4180, and terminal tables that print no control characters."""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Sequence

# A cell starting with one of these is read as a formula by spreadsheet programs (OWASP,
# "CSV Injection"); such cells get a leading single quote. JSON output stays exact.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """RFC 4180: CRLF between records, and any field holding a comma, quote, CR or LF
    quoted; text cells neutralised against formula injection."""
    return csv_records([header], neutralise=False) + csv_records(rows)


def csv_records(rows: Iterable[Sequence[object]], *, neutralise: bool = True) -> str:
    """Records of `csv_text` without its header (a file written a part at a time)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerows([csv_cell(v) for v in row] if neutralise else row for row in rows)
    return buf.getvalue()


SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """Text safe to print to a terminal: control and format characters (ESC, newline,
    bidirectional overrides, ...) shown as escapes."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[ch])
        elif ch == " " or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows (the first is the header) as aligned lines, every cell made printable."""
    cells = [[printable(v) for v in row] for row in rows]
    if not cells:
        return []
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
