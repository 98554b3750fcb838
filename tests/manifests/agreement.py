"""Code and manifests agree: names, socket paths, topology keys, flags and env variables."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from aiocsi.config import (
    DEFAULT_DRIVER_NAME,
    DEFAULT_ENDPOINT,
    TOPOLOGY_KEY,
    ConfigError,
    parse_endpoint,
)
from tests.manifests import cli
from tests.manifests.model import Obj, containers, pod_spec, ref, walk_strings
from tests.manifests.sidecars import SIDECAR_REGISTRY, SIDECARS, parse_args, split_image

DRIVER_IMAGE = "ghcr.io/aiocsi/aiocsi"
KUBELET_PLUGINS = "/var/lib/kubelet/plugins/"
SIDECAR_DEFAULT_ADDRESS = "/run/csi/socket"
_OUR_TOPOLOGY = re.compile(r"topology\.aiocsi\.dev/[A-Za-z0-9_.-]*")
Problem = tuple[str, str]  # (where, message)


@dataclass(frozen=True)
class Driver:
    """An `aiocsi serve` container and the settings the checks need from it."""

    container: Obj
    values: dict[str, str]  # flag name (without --) -> value, env applied

    @property
    def name(self) -> str:
        return self.values.get("driver-name", DEFAULT_DRIVER_NAME)

    @property
    def attach(self) -> bool:
        return self.values.get("enable-attach", "false").lower() in ("true", "1", "yes", "on")


def aiocsi_argv(container: Obj) -> list[str] | None:
    """The aiocsi command line of a container of our image (or that runs `aiocsi`)."""
    command = [str(part) for part in container.get("command") or []]
    args = [str(part) for part in container.get("args") or []]
    repo, _ = split_image(str(container.get("image", "")))
    if command and PurePosixPath(command[0]).name == "aiocsi":
        return command[1:] + args
    if repo == DRIVER_IMAGE and not command:
        return args or ["serve"]
    return None


def check_aiocsi_container(where: str, container: Obj) -> Iterator[Problem]:
    argv = aiocsi_argv(container)
    if argv is None:
        return
    if not argv or argv[0].startswith("-"):
        yield where, f"container {container.get('name')}: no aiocsi command in {argv}"
        return
    words = len(argv) - len(list(itertools.dropwhile(lambda a: not a.startswith("-"), argv)))
    command = " ".join(argv[:words])
    try:
        known = cli.help_of(command)
    except cli.HelpError as exc:
        yield where, f"container {container.get('name')}: {exc}"
        return
    every_env = known.env | cli.help_of("serve").env
    for arg in argv[words:]:
        flag = arg.split("=", 1)[0]
        if flag.startswith("-") and flag not in known.flags:
            yield where, f"container {container.get('name')}: `aiocsi {command}` has no {flag}"
    for item in container.get("env") or []:
        name = str(item.get("name", ""))
        if (name.startswith("AIOCSI_") or name in every_env) and name not in known.env:
            yield (
                where,
                (
                    f"container {container.get('name')}: env {name} is not read by "
                    f"`aiocsi {command}` (not in its --help)"
                ),
            )


_ENV_OF_FLAG = {
    "endpoint": "CSI_ENDPOINT",
    "driver-name": "AIOCSI_DRIVER_NAME",
    "enable-attach": "AIOCSI_ENABLE_ATTACH",
    "controller-expand": "AIOCSI_CONTROLLER_EXPAND",
}


def driver_of(spec: Obj) -> Driver | None:
    for container in containers(spec):
        argv = aiocsi_argv(container)
        if not argv or argv[0] != "serve":
            continue
        values: dict[str, str] = {}
        env = {str(e.get("name")): e.get("value") for e in container.get("env") or []}
        for flag, name in _ENV_OF_FLAG.items():
            if isinstance(env.get(name), str):
                values[flag] = env[name]
        flags, _ = parse_args(argv[1:])
        values.update(flags)
        return Driver(container, values)
    return None


def _named(obj: Obj) -> list[tuple[str, object]]:
    """(field, value) for every field of the object that names a CSI driver."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    fields = {
        "CSIDriver": ("metadata.name", (obj.get("metadata") or {}).get("name")),
        "SnapshotMetadataService": ("metadata.name", (obj.get("metadata") or {}).get("name")),
        "StorageClass": ("provisioner", obj.get("provisioner")),
        "VolumeSnapshotClass": ("driver", obj.get("driver")),
        "VolumeGroupSnapshotClass": ("driver", obj.get("driver")),
        "VolumeAttributesClass": ("driverName", obj.get("driverName")),
        "VolumeSnapshotContent": ("spec.driver", spec.get("driver")),
        "VolumeGroupSnapshotContent": ("spec.driver", spec.get("driver")),
    }
    named: list[tuple[str, object]] = []
    if kind in fields:
        named.append(fields[str(kind)])
    if kind == "PersistentVolume" and "csi" in spec:
        named.append(("spec.csi.driver", spec["csi"].get("driver")))
    return named + _named_by_pod(pod_spec(obj) or {})


def _named_by_pod(spec: Obj) -> list[tuple[str, object]]:
    named: list[tuple[str, object]] = []
    for volume in spec.get("volumes") or []:
        if "csi" in volume:
            named.append((f"volume {volume.get('name')}: csi.driver", volume["csi"].get("driver")))
        path = str((volume.get("hostPath") or {}).get("path", ""))
        if path.startswith(KUBELET_PLUGINS):
            plugin = path[len(KUBELET_PLUGINS) :].strip("/").split("/", 1)[0]
            named.append((f"volume {volume.get('name')}: hostPath {path}", plugin))
    return named


def check_names(obj: Obj) -> Iterator[Problem]:
    """Every place a manifest names the driver names the one the code is called."""
    for field, value in _named(obj):
        if value != DEFAULT_DRIVER_NAME:
            yield ref(obj), f"{field} is {value!r}; the driver is {DEFAULT_DRIVER_NAME!r}"


def check_topology(obj: Obj) -> Iterator[Problem]:
    for text in walk_strings(obj):
        for key in _OUR_TOPOLOGY.findall(text):
            if key != TOPOLOGY_KEY:
                yield ref(obj), f"topology key {key!r}; the driver's is {TOPOLOGY_KEY!r}"
    if obj.get("kind") == "StorageClass" and obj.get("provisioner") == DEFAULT_DRIVER_NAME:
        for term in obj.get("allowedTopologies") or []:
            for expr in term.get("matchLabelExpressions") or []:
                if expr.get("key") != TOPOLOGY_KEY:
                    yield (
                        ref(obj),
                        (
                            f"allowedTopologies key {expr.get('key')!r}: the driver reports "
                            f"only {TOPOLOGY_KEY!r}"
                        ),
                    )


def host_path(spec: Obj, container: Obj, path: str) -> str | None:
    """Where a path inside a container lies on the host (through a hostPath mount)."""
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    best: tuple[int, str] | None = None
    for mount in container.get("volumeMounts") or []:
        mount_path = str(mount.get("mountPath", "")).rstrip("/") or "/"
        inside = os.path.relpath(path, mount_path)
        if inside.startswith(".."):
            continue
        source = volumes.get(mount.get("name"), {}).get("hostPath")
        if source is None:
            continue
        if best is None or len(mount_path) > best[0]:
            base = str(source.get("path", "")).rstrip("/")
            best = (len(mount_path), os.path.normpath(PurePosixPath(base, inside)))
    return None if best is None else best[1]


def check_sockets(where: str, spec: Obj, driver: Driver) -> Iterator[Problem]:
    endpoint = driver.values.get("endpoint", DEFAULT_ENDPOINT)
    try:
        inside = str(parse_endpoint(endpoint))
    except ConfigError as exc:
        yield where, f"driver endpoint: {exc}"
        return
    socket = host_path(spec, driver.container, inside)
    expected = f"{KUBELET_PLUGINS}{driver.name}/csi.sock"
    if socket != expected:
        yield (
            where,
            (
                f"the driver's socket {inside} is {socket or 'not on a hostPath'} on the host; "
                f"kubelet looks for {expected}"
            ),
        )
        return
    for container in containers(spec):
        repo, _ = split_image(str(container.get("image", "")))
        if not repo.startswith(SIDECAR_REGISTRY):
            continue
        flags, _ = parse_args([str(a) for a in container.get("args") or []])
        address = flags.get("csi-address", SIDECAR_DEFAULT_ADDRESS)
        seen = host_path(spec, container, address.removeprefix("unix://"))
        if seen != socket:
            yield (
                where,
                (
                    f"{container.get('name')}: --csi-address {address} is {seen or 'not shared'} "
                    f"on the host, but the driver listens on {socket}"
                ),
            )
        registration = flags.get("kubelet-registration-path")
        if registration is not None and registration != socket:
            yield (
                where,
                (
                    f"{container.get('name')}: --kubelet-registration-path {registration} "
                    f"is not the driver's socket {socket}"
                ),
            )


def check_sidecar_flags(where: str, spec: Obj) -> Iterator[Problem]:
    for container in containers(spec):
        repo, tag = split_image(str(container.get("image", "")))
        if not repo.startswith(SIDECAR_REGISTRY):
            continue
        name = repo.removeprefix(SIDECAR_REGISTRY)
        sidecar = SIDECARS.get(name, {}).get(tag)
        if sidecar is None:
            yield where, f"{name}:{tag}: no flag and RBAC table in tests/manifests/sidecars.py"
            continue
        flags, stray = parse_args([str(a) for a in container.get("args") or []])
        for flag in sorted(set(flags) - sidecar.flags):
            yield where, f"{container.get('name')}: {name} {tag} has no --{flag}"
        for arg in stray:
            yield where, f"{container.get('name')}: {arg!r} is not a --flag=value argument"


def check_driver_settings(obj: Obj, objects: list[Obj], driver: Driver) -> Iterator[Problem]:
    """Settings that must match across objects: attach on both sides, expansion per node."""
    where = ref(obj)
    spec = pod_spec(obj) or {}
    images = {split_image(str(c.get("image", "")))[0] for c in containers(spec)}
    has_attacher = f"{SIDECAR_REGISTRY}csi-attacher" in images
    for other in objects:
        if other.get("kind") == "CSIDriver":
            required = bool((other.get("spec") or {}).get("attachRequired", True))
            if required != driver.attach:
                yield (
                    where,
                    (
                        f"the driver's --enable-attach is {driver.attach} but CSIDriver "
                        f"attachRequired is {required}"
                    ),
                )
    if has_attacher != driver.attach:
        yield (
            where,
            (
                f"--enable-attach is {driver.attach} but csi-attacher is "
                f"{'present' if has_attacher else 'missing'}"
            ),
        )
    resizer = f"{SIDECAR_REGISTRY}csi-resizer" in images
    expand = driver.values.get("controller-expand", "true").lower() in ("true", "1", "yes", "on")
    if obj.get("kind") == "DaemonSet" and resizer and expand:
        yield (
            where,
            (
                "a per-node driver with csi-resizer must run with --controller-expand false "
                "(the one active resizer reaches only its own node's driver)"
            ),
        )
