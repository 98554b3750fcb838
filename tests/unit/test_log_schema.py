"""docs/logging.md and the code agree: every event emitted is documented with its level and
fields, and every documented event is emitted somewhere."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "aiocsi"
DOC = ROOT / "docs" / "logging.md"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
PRINTED = {"exception": "error"}  # structlog prints .exception() as level error
LOGGERS = {"log", "_log", "logger"}
_ROW = re.compile(r"^\| `(?P<event>[a-z_]+)` \| (?P<level>[a-z]+) \|(?P<fields>[^|]*)\|")
_FIELD = re.compile(r"`(\w+)` ([\w\[\]|]+)")


@dataclass
class Emitted:
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    # Every string literal of the emitting files: where fields built at run time are named.
    literals: set[str] = field(default_factory=set)
    where: set[str] = field(default_factory=set)


def _is_logger(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in LOGGERS
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute | ast.Name)
        and getattr(node.func, "attr", getattr(node.func, "id", "")) == "get_logger"
    )


def emitted_events() -> dict[str, Emitted]:
    events: dict[str, Emitted] = {}
    for path in SRC.rglob("*.py"):
        if "_proto" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        literals = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and _is_logger(node.func.value)
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                continue
            event = events.setdefault(node.args[0].value, Emitted())
            event.levels.add(PRINTED.get(node.func.attr, node.func.attr))
            event.fields |= {k.arg for k in node.keywords if k.arg and k.arg != "exc_info"}
            event.literals |= literals
            event.where.add(f"{path.relative_to(SRC)}:{node.lineno}")
    return events


def documented_events() -> dict[str, tuple[str, dict[str, str]]]:
    text = DOC.read_text().partition("## Events")[2]
    rows = {}
    for line in text.splitlines():
        if match := _ROW.match(line):
            fields = dict(_FIELD.findall(match["fields"]))
            rows[match["event"]] = (match["level"], fields)
    return rows


def test_the_scan_finds_events_in_every_layer() -> None:
    events = emitted_events()
    assert {"rpc", "serving", "volume_staged", "log_dropped", "host_command"} <= set(events)


def test_every_emitted_event_is_documented() -> None:
    documented = documented_events()
    missing = {
        name: sorted(e.where) for name, e in emitted_events().items() if name not in documented
    }
    assert not missing, f"add these events to docs/logging.md: {missing}"


def test_every_documented_event_is_emitted() -> None:
    emitted = emitted_events()
    stale = sorted(set(documented_events()) - set(emitted))
    assert not stale, f"docs/logging.md lists events nothing emits: {stale}"


def test_levels_and_fields_match() -> None:
    documented = documented_events()
    for name, event in emitted_events().items():
        level, fields = documented[name]
        assert event.levels == {level}, f"{name}: code logs at {event.levels}, doc says {level}"
        undocumented = event.fields - set(fields)
        assert not undocumented, f"{name}: fields {undocumented} are not in docs/logging.md"
        # A documented field the call does not pass by name is built at run time: the
        # emitting file must still name it.
        unknown = set(fields) - event.fields - event.literals
        assert not unknown, f"{name}: docs/logging.md lists fields nothing sets: {unknown}"
        for field_name, kind in fields.items():
            assert kind in {"str", "int", "float", "bool", "list[str]", "object", "str|null"}, (
                f"{name}.{field_name}: unknown type {kind}"
            )
