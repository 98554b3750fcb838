"""Helpers for the operator endpoint tests: an HTTP GET that never blocks the loop, a
parsed scrape."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

CREATE = "/csi.v1.Controller/CreateVolume"
DELETE = "/csi.v1.Controller/DeleteVolume"
STAGE = "/csi.v1.Node/NodeStageVolume"
DRIVER = "loop.csi.aiocsi.dev"


async def http_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@dataclass(frozen=True)
class Scrape:
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def __call__(self, name: str, **labels: str) -> float:
        value = self.value(name, **labels)
        assert value is not None, f"no sample {name} {labels}"
        return value

    def calls(self, method: str, code: str) -> float:
        """How many calls of `method` ended with `code` (0: no series yet)."""
        labels = {"driver_name": DRIVER, "method_name": method, "grpc_status_code": code}
        return self.value("csi_plugin_operations_seconds_count", **labels) or 0.0

    def labelled(self, name: str, label: str) -> dict[str, float]:
        return {
            dict(labels)[label]: value
            for (sample, labels), value in self.samples.items()
            if sample == name and len(labels) == 1
        }


async def scrape(address: tuple[str, int]) -> Scrape:
    status, text = await http_get(address, "/metrics")
    assert status == 200, text
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Scrape(samples)
