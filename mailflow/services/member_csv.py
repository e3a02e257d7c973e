"""Member CSV files: their rows as cells, and the report of an import row by row.

The file has one address per row in its first column, or a header row with an
``email`` (or ``address``, ``e-mail``) column and an optional ``name`` column.  This
module only finds the cells; the directory validates them
(:meth:`~mailflow.services.directory.DirectoryService.import_member_rows`), so a value
refused on one path is refused on every path.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from mailflow.errors import InvalidInput

HEADER_KEYS: Final = ("email", "address", "e-mail")
NAME_KEY: Final = "name"


@dataclass(frozen=True, slots=True)
class MemberRow:
    line: int      # 1-based among the file's non-empty rows (the header row is 1)
    address: str   # the cell as given
    name: str


@dataclass(frozen=True, slots=True)
class RowProblem:
    line: int
    address: str
    error: str


@dataclass(frozen=True, slots=True)
class MemberImport:
    """What an import did (or, for a dry run, would do)."""

    valid: int                      # rows that passed
    added: int = 0
    existing: int = 0
    renamed: int = 0
    problems: list[RowProblem] = field(default_factory=list)


def read_member_rows(lines: Iterable[str], name: str) -> list[MemberRow]:
    """The non-empty rows of a member CSV, each with its line, address and name cells.

    A first row without an ``@`` is a header; one without an email column is refused
    with the header expected.
    """
    try:
        rows = list(enumerate((row for row in csv.reader(lines)
                               if any(cell.strip() for cell in row)), start=1))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{name} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                           f"offset {exc.start}); save it as UTF-8 CSV and import again"
                           ) from exc
    except csv.Error as exc:
        raise InvalidInput(f"{name} is not a CSV file: {exc}") from exc
    if not rows:
        raise InvalidInput(f"{name} has no rows")
    first = rows[0][1]
    header = [cell.strip().lower() for cell in first]
    column, start, name_column = 0, 0, None
    for key in HEADER_KEYS:
        if key in header:
            column, start = header.index(key), 1
            name_column = header.index(NAME_KEY) if NAME_KEY in header else None
            break
    else:
        if "@" not in (first[0] if first else ""):
            shown = ",".join(cell.strip() for cell in first)
            raise InvalidInput(f"{name}: header row {shown!r} has no email column; expected "
                               "a header `email` or `email,name` (or no header, one address "
                               "per row in the first column)")
    return [MemberRow(line, row[column].strip() if column < len(row) else "",
                      row[name_column].strip()
                      if name_column is not None and name_column < len(row) else "")
            for line, row in rows[start:]]
