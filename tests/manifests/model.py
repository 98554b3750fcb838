"""What the manifest checker works on: rendered objects, and what it reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    """One thing wrong, named so that a person can find it."""

    target: str
    where: str
    message: str

    def __str__(self) -> str:
        where = f" {self.where}:" if self.where else ""
        return f"{self.target}:{where} {self.message}"


@dataclass
class Target:
    """A deployment (the base or an overlay) or an example, with its rendered objects."""

    name: str
    path: Path
    is_example: bool
    objects: list[Obj] = field(default_factory=list)


def ref(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{meta.get('name', '?')}"


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec of a Pod or of a workload's template; None for other kinds."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return spec
    template = spec.get("template")
    if isinstance(template, dict) and obj.get("kind") in {
        "DaemonSet",
        "Deployment",
        "StatefulSet",
        "ReplicaSet",
        "Job",
    }:
        inner = template.get("spec")
        return inner if isinstance(inner, dict) else None
    return None


def containers(spec: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers"):
        yield from spec.get(key) or []


def walk_strings(value: object) -> Iterator[str]:
    """Every string in a document, mapping keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_strings(item)
