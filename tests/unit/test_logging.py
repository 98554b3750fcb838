from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from aiocsi.context import CallContext, call_scope, current_call, set_call
from aiocsi.logging import configure, get_logger
from tests.conftest import LoggingState


@pytest.fixture
def stream() -> io.StringIO:
    # The suite's `_process_state` fixture puts the default configuration back afterwards.
    out = io.StringIO()
    configure("json", "debug", stream=out)
    return out


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_fields_named_secrets_are_redacted_at_any_depth(stream: io.StringIO) -> None:
    get_logger().info(
        "rpc_request",
        secrets={"k": "v"},
        request={"name": "n", "secrets": {"password": "hunter2"}, "nested": [{"secrets": "x"}]},
    )
    (line,) = _lines(stream)
    assert line["secrets"] == "***"
    assert line["request"] == {"name": "n", "secrets": "***", "nested": [{"secrets": "***"}]}
    assert "hunter2" not in stream.getvalue()


def test_secret_values_of_the_call_are_scrubbed_from_messages_and_tracebacks(
    stream: io.StringIO,
) -> None:
    call = CallContext("r1", "CreateVolume", secret_values=frozenset({"s3cr3t-value"}))
    with call_scope(call):
        try:
            raise ValueError("failed with s3cr3t-value inside")
        except ValueError:
            get_logger().exception("unexpected_error", detail="saw s3cr3t-value")
    assert current_call() is None
    text = stream.getvalue()
    assert "s3cr3t-value" not in text
    (line,) = _lines(stream)
    assert "failed with *** inside" in str(line["exception"])
    assert line["detail"] == "saw ***"


def test_stdlib_records_join_the_json_stream(stream: io.StringIO) -> None:
    logging.getLogger("grpclib.server").info("Deadline exceeded")
    (line,) = _lines(stream)
    assert line["event"] == "Deadline exceeded"
    assert line["logger"] == "grpclib.server"
    assert line["level"] == "info"


def test_level_filters_lower_events() -> None:
    out = io.StringIO()
    configure("json", "warning", stream=out)
    get_logger().info("quiet")
    get_logger().warning("loud")
    logging.getLogger("other").info("quiet too")
    assert [line["event"] for line in _lines(out)] == ["loud"]


def test_console_format_is_for_humans() -> None:
    out = io.StringIO()
    configure("console", "info", stream=out)
    get_logger().info("volume_staged", volume_id="vol-1", secrets={"a": "b"})
    text = out.getvalue()
    assert "volume_staged" in text
    assert "vol-1" in text
    assert "'b'" not in text


def test_call_scope_restores_the_call_it_replaced() -> None:
    outer, inner = CallContext("r1", "A"), CallContext("r2", "B")
    with call_scope(outer):
        with call_scope(inner):
            assert current_call() is inner
        assert current_call() is outer
    assert current_call() is None


def test_lines_of_a_call_carry_its_request_id_method_and_volume_id(stream: io.StringIO) -> None:
    call = CallContext("req-1", "NodeStageVolume")
    with call_scope(call):
        get_logger().info("before_the_request")
        call.volume_id = "vol-1"
        get_logger().info("after_the_request")
        get_logger().info("explicit", method="Other", volume_id="")
    get_logger().info("outside")
    before, after, explicit, outside = _lines(stream)
    assert (before["request_id"], before["method"]) == ("req-1", "NodeStageVolume")
    assert "volume_id" not in before
    assert after["volume_id"] == "vol-1"
    # What a line says itself wins.
    assert (explicit["method"], explicit["volume_id"]) == ("Other", "")
    assert not {"request_id", "method", "volume_id"} & outside.keys()


# The next two tests run in this order: the first leaves a call holding a secret and a
# debug configuration writing to a buffer behind, on purpose; the second must not see them.


def test_leaves_process_state_behind_on_purpose() -> None:
    set_call(CallContext("r9", "CreateVolume", secret_values=frozenset({"left-behind"})))
    configure("console", "debug", stream=io.StringIO())
    structlog.contextvars.bind_contextvars(request_id="r9")
    assert current_call() is not None


def test_starts_with_no_call_and_the_default_logging(default_logging: LoggingState) -> None:
    assert current_call() is None
    assert LoggingState.current() == default_logging
    assert not get_logger().is_enabled_for(logging.DEBUG)
    assert get_logger().is_enabled_for(logging.INFO)
    assert logging.getLogger().level == logging.INFO
