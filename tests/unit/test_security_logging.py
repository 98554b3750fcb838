"""Secrets never leave through the log pipeline or error messages, whatever their shape."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from aiocsi.context import CallContext, call_scope, scrub
from aiocsi.logging import configure, get_logger
from aiocsi.server.interceptor import _request_id

SECRET = "pa55-w0rd'\"\n\x01é"  # quotes, a newline, a control character, non-ASCII


@pytest.fixture(params=["json", "console"])
def stream(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    # The suite's `_process_state` fixture puts the default configuration back afterwards.
    out = io.StringIO()
    configure(request.param, "debug", stream=out)
    with call_scope(
        CallContext("r1", "CreateVolume", secret_values=frozenset({SECRET, "hunter2"}))
    ):
        yield out


def _leaks(text: str) -> list[str]:
    # Any escaped spelling of SECRET (repr, JSON, console) still holds its plain core.
    return [core for core in ("pa55-w0rd", "hunter2") if core in text]


def test_a_secret_used_as_a_map_key_is_scrubbed(stream: io.StringIO) -> None:
    get_logger().debug("rpc_request", request={"parameters": {SECRET: "1", "hunter2": "x"}})
    assert _leaks(stream.getvalue()) == []
    assert "***" in stream.getvalue()


def test_a_secret_quoted_with_repr_in_a_message_is_scrubbed(stream: io.StringIO) -> None:
    get_logger().info("rpc", error=f"parameters: unknown key {SECRET!r}")
    assert _leaks(stream.getvalue()) == []


def test_console_tracebacks_show_no_secret_locals(stream: io.StringIO) -> None:
    def fail(password: str) -> None:
        raise ValueError("bad " + password)

    try:
        fail("hunter2")
    except ValueError:
        get_logger().exception("unexpected_error")
    text = stream.getvalue()
    assert "ValueError" in text
    assert "bad ***" in text
    assert _leaks(text) == []


def test_longest_secret_is_replaced_first() -> None:
    assert scrub("abcdef", frozenset({"abc", "abcdef"})) == "***"


@pytest.mark.parametrize(
    ("supplied", "kept"),
    [
        ("abc-123", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("x\ny", False),
        ('"}{"level":"error', False),
        ("ünï", False),
        ("", False),
    ],
)
def test_request_ids_from_metadata_are_plain_or_replaced(supplied: str, kept: bool) -> None:
    request_id = _request_id({"x-request-id": supplied})
    assert (request_id == supplied) is kept
    assert request_id.isascii()
    assert request_id.isprintable()
