"""What a command prints: one JSON document, or readable blocks (rich on a terminal).

JSON field names are the CSI messages' own (`volume_id`, `capacity_bytes`), every scalar
field is present even when zero, unset messages are left out, enums are their names,
64-bit integers are JSON numbers (not the strings of proto3's JSON mapping: sizes are
compared and summed by the people reading them) and timestamps are RFC 3339 in UTC.
"""

from __future__ import annotations

import base64
import enum
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

import betterproto2

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

Json = dict[str, "Json"] | list["Json"] | str | int | float | bool | None


def message_json(message: betterproto2.Message) -> dict[str, Json]:
    raw = message.to_dict(
        output_format=betterproto2.OutputFormat.PYTHON,
        casing=betterproto2.Casing.SNAKE,
        include_default_values=True,
    )
    return {k: _plain(v) for k, v in raw.items() if v is not None}


def _plain(value: Any) -> Json:  # noqa: ANN401 - betterproto2's dicts are untyped
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return _scalar(value)


def _scalar(value: object) -> Json:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot print {type(value).__name__} as JSON")


@dataclass
class Fields:
    """A titled list of `name  value` lines."""

    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, value: object) -> Fields:
        self.rows.append((name, "" if value is None else str(value)))
        return self


@dataclass
class Table:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    empty: str = "none"


Block = Fields | Table


@dataclass
class Output:
    """What a command printed: the JSON document and the same thing for people."""

    document: Json
    blocks: list[Block]


def pairs(mapping: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "-"


def show(output: Output, *, as_json: bool, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    if as_json:
        out.write(json.dumps(output.document, indent=2) + "\n")
    elif out.isatty() and _rich_available():
        _rich(output.blocks, out)
    else:
        out.write(plain(output.blocks))


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401, PLC0415 - optional: `pip install aiocsi[client]`
    except ImportError:
        return False
    return True


def plain(blocks: Iterable[Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        lines = [block.title]
        if isinstance(block, Fields):
            width = max((len(name) for name, _ in block.rows), default=0)
            lines += [f"  {name.ljust(width)}  {value}".rstrip() for name, value in block.rows]
        elif not block.rows:
            lines.append(f"  ({block.empty})")
        else:
            widths = [
                max(len(cell) for cell in column)
                for column in zip(block.headers, *block.rows, strict=True)
            ]
            for row in (block.headers, *block.rows):
                cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                lines.append("  " + "  ".join(cells).rstrip())
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _rich(blocks: Iterable[Block], stream: TextIO) -> None:
    from rich.console import Console  # noqa: PLC0415 - optional dependency
    from rich.table import Table as RichTable  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415 - cells are text, never rich markup

    console = Console(file=stream)
    for block in blocks:
        if isinstance(block, Fields):
            table = RichTable(title=block.title, show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
        else:
            table = RichTable(title=block.title, title_justify="left")
            for header in block.headers:
                table.add_column(header)
            if not block.rows:
                table.caption = block.empty
        for row in block.rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
