"""What manifests ask of the driver is what the driver accepts: class parameters, mount
options, inline volume attributes, access modes, and the names objects refer to."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from aiocsi.config import DEFAULT_DRIVER_NAME
from aiocsi.engine.parameters import MUTABLE_PARAMETERS, SNAPSHOT_PARAMETERS, VOLUME_PARAMETERS
from aiocsi.engine.parameters import normalise as normalise_parameters
from aiocsi.errors import InvalidArgument
from aiocsi.models import AccessMode, AccessType, Capability
from aiocsi.services.validation.node import EPHEMERAL_SIZE_KEY, FS_MOUNT_FLAGS, mount_flags
from tests.manifests.model import Obj, pod_spec, ref

FSTYPE_KEY = "csi.storage.k8s.io/fstype"
FILESYSTEMS = frozenset(FS_MOUNT_FLAGS)
# Kubernetes access modes the driver serves (it has single-node modes only).
SINGLE_NODE_MODES = frozenset({"ReadWriteOnce", "ReadWriteOncePod"})
Problem = tuple[str, str]
# (kind, name) of every object one can refer to, across the base and the examples.
Catalogue = frozenset[tuple[str, str]]


def _refused(given: Mapping[str, str], known: Mapping[str, Mapping[str, str]], what: str) -> str:
    try:
        normalise_parameters(given, known, what)
    except InvalidArgument as exc:
        return str(exc)
    return ""


def _mount_options(flags: list[str], fs_type: str) -> str:
    capability = Capability(
        AccessType.MOUNT, AccessMode.SINGLE_NODE_WRITER, fs_type, tuple(map(str, flags))
    )
    try:
        mount_flags(capability, "mountOptions")
    except InvalidArgument as exc:
        return str(exc)
    return ""


def _ours(obj: Obj) -> bool:
    kind = obj.get("kind")
    if kind == "StorageClass":
        return obj.get("provisioner") == DEFAULT_DRIVER_NAME
    if kind == "VolumeAttributesClass":
        return obj.get("driverName") == DEFAULT_DRIVER_NAME
    return obj.get("driver") == DEFAULT_DRIVER_NAME


def check_class(obj: Obj) -> Iterator[Problem]:
    kind = obj.get("kind")
    if kind not in {
        "StorageClass",
        "VolumeAttributesClass",
        "VolumeSnapshotClass",
        "VolumeGroupSnapshotClass",
    } or not _ours(obj):
        return
    parameters = {str(k): str(v) for k, v in (obj.get("parameters") or {}).items()}
    known = {
        "StorageClass": VOLUME_PARAMETERS,
        "VolumeAttributesClass": MUTABLE_PARAMETERS,
    }.get(str(kind), SNAPSHOT_PARAMETERS)
    problem = _refused(parameters, known, f"{kind} parameters")
    if problem:
        yield ref(obj), f"the driver refuses it: {problem}"
    if kind != "StorageClass":
        return
    fs_type = parameters.get(FSTYPE_KEY, "ext4")
    if fs_type not in FILESYSTEMS:
        yield ref(obj), f"{FSTYPE_KEY} {fs_type!r}: the driver formats {sorted(FILESYSTEMS)}"
    problem = _mount_options(list(obj.get("mountOptions") or []), fs_type)
    if problem:
        yield ref(obj), f"the driver refuses it: {problem}"


def check_inline_volumes(obj: Obj) -> Iterator[Problem]:
    for volume in (pod_spec(obj) or {}).get("volumes") or []:
        csi = volume.get("csi")
        if not isinstance(csi, dict) or csi.get("driver") != DEFAULT_DRIVER_NAME:
            continue
        where = f"{ref(obj)} volume {volume.get('name')}"
        for key in sorted(set(csi.get("volumeAttributes") or {}) - {EPHEMERAL_SIZE_KEY}):
            yield where, f"volumeAttributes {key!r}: the driver reads only {EPHEMERAL_SIZE_KEY!r}"
        fs_type = csi.get("fsType", "ext4")
        if fs_type not in FILESYSTEMS:
            yield where, f"fsType {fs_type!r}: the driver formats {sorted(FILESYSTEMS)}"


def check_claim(obj: Obj, catalogue: Catalogue | None) -> Iterator[Problem]:
    """Access modes the driver serves; classes and sources that exist somewhere."""
    templates = [obj.get("spec") or {}] if obj.get("kind") == "PersistentVolumeClaim" else []
    for volume in (pod_spec(obj) or {}).get("volumes") or []:
        template = (volume.get("ephemeral") or {}).get("volumeClaimTemplate")
        if template:
            templates.append(template.get("spec") or {})
    for spec in templates:
        for mode in sorted(set(spec.get("accessModes") or []) - SINGLE_NODE_MODES):
            yield ref(obj), f"access mode {mode}: the driver serves single-node modes only"
        if catalogue is None:
            continue
        wanted = [
            ("StorageClass", spec.get("storageClassName")),
            ("VolumeAttributesClass", spec.get("volumeAttributesClassName")),
        ]
        source = spec.get("dataSource") or {}
        if source:
            wanted.append((str(source.get("kind")), source.get("name")))
        for kind, name in wanted:
            if name and (kind, name) not in catalogue:
                yield ref(obj), f"names {kind} {name!r}, which no manifest defines"


def check_snapshot_refs(obj: Obj, catalogue: Catalogue | None) -> Iterator[Problem]:
    spec = obj.get("spec") or {}
    wanted: list[tuple[str, object]] = []
    if obj.get("kind") == "VolumeSnapshot":
        wanted = [
            ("VolumeSnapshotClass", spec.get("volumeSnapshotClassName")),
            ("PersistentVolumeClaim", (spec.get("source") or {}).get("persistentVolumeClaimName")),
        ]
    elif obj.get("kind") == "VolumeGroupSnapshot":
        wanted = [("VolumeGroupSnapshotClass", spec.get("volumeGroupSnapshotClassName"))]
    for kind, name in wanted:
        if catalogue is not None and name and (kind, name) not in catalogue:
            yield ref(obj), f"names {kind} {name!r}, which no manifest defines"
