"""server/wire.py is the one file that reaches into grpclib's private attributes.

The scan keeps it that way; the pins fail here, not in a call, when a grpclib upgrade
moves what the wire guards rely on.
"""

from __future__ import annotations

import ast
import inspect
import time
from pathlib import Path

import grpclib
from grpclib import protocol, server
from grpclib.metadata import Deadline

from aiocsi.server.wire import deadline_at

SRC = Path(__file__).resolve().parents[2] / "src" / "aiocsi"
WIRE = SRC / "server" / "wire.py"
# A type-only import of grpclib's private typing module (the servable protocol), made
# where the services are listed; no attribute of a grpclib object is touched there.
PRIVATE_IMPORT_ALLOWED = {WIRE, SRC / "services" / "__init__.py"}


def _grpclib_private_names() -> set[str]:
    """Every `self._name` grpclib's own code assigns: its objects' private attributes."""
    names: set[str] = set()
    for module in Path(grpclib.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                names.add(node.attr)
    return names


def _our_sources() -> list[Path]:
    return [p for p in SRC.rglob("*.py") if "_proto" not in p.parts]


def _private_uses(path: Path, names: set[str]) -> list[str]:
    """`obj._name` for a grpclib private name, on anything but `self`/`cls`."""
    return [
        f"{path.relative_to(SRC)}:{node.lineno} {node.attr}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in names
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]


def _private_imports(path: Path) -> list[str]:
    return [
        f"{path.relative_to(SRC)}:{node.lineno} {node.module}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("grpclib._")
    ]


def test_only_wire_touches_grpclib_private_attributes() -> None:
    names = _grpclib_private_names()
    assert {"_stream", "_codec", "_timestamp"} <= names
    uses = {path: _private_uses(path, names) for path in _our_sources()}
    assert {path for path, found in uses.items() if found} == {WIRE}, uses
    assert {u.rsplit(" ", 1)[1] for u in uses[WIRE]} == {"_codec", "_stream", "_timestamp"}


def test_grpclib_private_modules_are_imported_only_where_allowed() -> None:
    importing = {path for path in _our_sources() if _private_imports(path)}
    assert importing <= PRIVATE_IMPORT_ALLOWED


def test_the_private_attributes_wire_relies_on_are_still_there() -> None:
    # The server stream keeps its protocol stream and codec where guard_request swaps them.
    source = inspect.getsource(server.Stream.__init__)
    assert "self._stream = stream" in source
    assert "self._codec = codec" in source
    assert inspect.iscoroutinefunction(protocol.Stream.recv_data)
    # The deadline is a time.monotonic() instant.
    before = time.monotonic()
    at = deadline_at(Deadline.from_timeout(10))
    assert at is not None
    assert before + 10 <= at <= time.monotonic() + 10
    assert deadline_at(None) is None
