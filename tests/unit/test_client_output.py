"""The client's sizes and output forms, without a driver."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from aiocsi._proto.csi import v1 as csi
from aiocsi.client.cli.render import Fields, Output, Table, message_json, plain, show
from aiocsi.client.sizes import human_size, parse_size

GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1Gi", GiB),
        ("500M", 500_000_000),
        ("1.5G", 1_500_000_000),
        ("1.5Gi", 3 * GiB // 2),
        ("1073741824", GiB),
        ("64MiB", 64 * 1024**2),
        (" 2 Ti ", 2 * 1024**4),
        ("0.0001Ki", 1),  # a fraction of a byte rounds up
    ],
)
def test_sizes_people_write(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "Gi", "1.5X", "-1G", "1,5G", "1e9", "1 G i"])
def test_sizes_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (GiB, "1 GiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (500_000_000, "476.8 MiB"),
    ],
)
def test_sizes_people_read(size: int, text: str) -> None:
    assert human_size(size) == text


def test_json_names_fields_as_the_csi_messages_do() -> None:
    snapshot = csi.Snapshot(
        snapshot_id="s",
        source_volume_id="v",
        size_bytes=2**40,
        creation_time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    usage = csi.NodeGetVolumeStatsResponse(
        usage=[csi.VolumeUsage(total=10, unit=csi.VolumeUsageUnit.BYTES)]
    )
    assert message_json(snapshot) == {
        "size_bytes": 2**40,  # a number, not proto3 JSON's string
        "snapshot_id": "s",
        "source_volume_id": "v",
        "creation_time": "2026-01-02T03:04:05Z",
        "ready_to_use": False,  # zero values are shown
        "group_snapshot_id": "",
    }
    assert message_json(usage) == {
        "usage": [{"available": 0, "total": 10, "used": 0, "unit": "BYTES"}]
    }  # no volume_condition: an unset message is left out


def _output() -> Output:
    fields = Fields("Volume v").add("id", "vol-1").add("size", "1 GiB")
    table = Table("Volumes", ("VOLUME ID", "SIZE"), [("vol-1", "1 GiB"), ("vol-22", "[b]2[/b]")])
    return Output({"x": 1}, [fields, table, Table("Snapshots", ("ID",))])


def test_plain_text_when_no_terminal() -> None:
    assert plain(_output().blocks) == (
        "Volume v\n  id    vol-1\n  size  1 GiB\n\n"
        "Volumes\n  VOLUME ID  SIZE\n  vol-1      1 GiB\n  vol-22     [b]2[/b]\n\n"
        "Snapshots\n  (none)\n"
    )
    stream = io.StringIO()
    show(_output(), as_json=False, stream=stream)
    assert stream.getvalue() == plain(_output().blocks)


def test_one_json_document() -> None:
    stream = io.StringIO()
    show(_output(), as_json=True, stream=stream)
    assert json.loads(stream.getvalue()) == {"x": 1}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rich_tables_on_a_terminal() -> None:
    pytest.importorskip("rich")
    stream = _Terminal()
    show(_output(), as_json=False, stream=stream)
    text = stream.getvalue()
    assert "vol-22" in text
    assert "[b]2[/b]" in text  # cell text is never read as rich markup
    assert "┃" in text or "│" in text  # drawn as a table, not the plain form
