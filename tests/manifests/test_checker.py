"""The manifest checker reports known-bad copies of the manifests, and passes the tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.manifests import cli, render, schemas
from tests.manifests.check import check_containerfile, check_target, check_tree
from tests.manifests.model import Target
from tests.manifests.sidecars import split_image

ROOT = Path(__file__).resolve().parents[2]
BASE = "manifests/base"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    shutil.copy(ROOT / "Containerfile", tmp_path / "Containerfile")
    return tmp_path


def findings(tree: Path, name: str = BASE) -> list[str]:
    path = tree / name
    return [str(f) for f in check_target(Target(name, path, is_example="examples" in name))]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def one(found: list[str], *parts: str) -> None:
    """Exactly one finding, and it names every part."""
    assert len(found) == 1, found
    for part in parts:
        assert part in found[0], found


DS = "30-node-daemonset.yaml"
RBAC = "20-rbac.yaml"
PROVISIONER_ADDRESS = (
    "image: registry.k8s.io/sig-storage/csi-provisioner:v6.3.0\n"
    "          imagePullPolicy: IfNotPresent\n          args:\n"
    "            - --csi-address=/csi/"
)
# The snapshotter's --node-deployment is the one followed by its env block.
SNAPSHOTTER_ARGS_END = (
    "            - --node-deployment=true\n          env:\n            - name: NODE_NAME\n"
    "              valueFrom:\n                fieldRef:\n"
    "                  fieldPath: spec.nodeName\n          securityContext:"
)

# (target, file, text, replacement, what the one finding must name)
KNOWN_BAD = {
    "snapshot class API version": (
        BASE,
        "41-volumesnapshotclass.yaml",
        "/v1\n",
        "/v1beta1\n",
        ("VolumeSnapshotClass/aiocsi-loop", "apiVersion", "v1beta1"),
    ),
    "flag serve lacks": (
        BASE,
        DS,
        'args: ["serve"]',
        'args: ["serve", "--no-such=1"]',
        ("DaemonSet/aiocsi-node", "driver", "has no --no-such"),
    ),
    "env serve does not read": (
        BASE,
        DS,
        "            - name: AIOCSI_MODE\n",
        (
            '            - name: AIOCSI_TURBO\n              value: "1"\n'
            "            - name: AIOCSI_MODE\n"
        ),
        ("env AIOCSI_TURBO", "aiocsi serve"),
    ),
    "missing RBAC verb": (
        BASE,
        RBAC,
        '["get", "list", "watch", "create", "patch", "delete"]',
        '["get", "list", "watch", "patch", "delete"]',
        ("lacks create core/persistentvolumes cluster-wide", "csi-provisioner"),
    ),
    "RBAC broader than needed": (
        BASE,
        RBAC,
        '    resources: ["nodes"]\n    verbs: ["get", "list", "watch"]',
        '    resources: ["nodes"]\n    verbs: ["get", "list", "watch", "delete"]',
        ("ClusterRole/aiocsi-external-provisioner", "grants delete core/nodes"),
    ),
    "sidecar socket path differs": (
        BASE,
        DS,
        PROVISIONER_ADDRESS + "csi.sock",
        PROVISIONER_ADDRESS + "other.sock",
        ("csi-provisioner: --csi-address /csi/other.sock", "csi.sock"),
    ),
    "driver socket path differs": (
        BASE,
        DS,
        "unix:///csi/csi.sock",
        "unix:///csi/driver.sock",
        ("driver's socket /csi/driver.sock", "/plugins/loop.csi.aiocsi.dev/csi.sock"),
    ),
    "registration path differs": (
        BASE,
        DS,
        "aiocsi.dev/csi.sock\n",
        "aiocsi.dev/reg.sock\n",
        ("--kubelet-registration-path", "reg.sock"),
    ),
    "sidecar flag the version lacks": (
        BASE,
        DS,
        SNAPSHOTTER_ARGS_END,
        SNAPSHOTTER_ARGS_END.replace("true\n", "true\n            - --turbo=on\n", 1),
        ("csi-snapshotter v8.6.0 has no --turbo",),
    ),
    "driver name differs": (
        BASE,
        "40-storageclass.yaml",
        "provisioner: loop.csi.aiocsi.dev",
        "provisioner: loop.aiocsi.dev",
        ("StorageClass/aiocsi-loop", "provisioner is 'loop.aiocsi.dev'"),
    ),
    "group snapshot class field": (
        "manifests/examples/group-snapshot",
        "group-snapshot.yaml",
        "deletionPolicy: Delete",
        "deletionPolicy: Keep",
        ("VolumeGroupSnapshotClass/aiocsi-loop", "deletionPolicy"),
    ),
    "StorageClass parameter the driver lacks": (
        BASE,
        "40-storageclass.yaml",
        'preallocate: "false"',
        'preallocate: "false"\n  thin: "true"',
        ("StorageClass/aiocsi-loop", "unknown key 'thin'"),
    ),
    "mount option not allowed on the filesystem": (
        "manifests/examples/xfs",
        "storageclass.yaml",
        "  - noatime\n",
        "  - noatime\n  - data=ordered\n",
        ("StorageClass/aiocsi-loop-xfs", "'data=ordered' is not allowed on xfs"),
    ),
    "inline volume attribute the driver lacks": (
        "manifests/examples/inline-ephemeral",
        "pod.yaml",
        "          size: 256Mi\n",
        "          size: 256Mi\n          color: blue\n",
        ("volume cache", "volumeAttributes 'color'"),
    ),
    "access mode the driver lacks": (
        "manifests/examples/block",
        "pvc-pod.yaml",
        'accessModes: ["ReadWriteOnce"]',
        'accessModes: ["ReadWriteMany"]',
        ("PersistentVolumeClaim/aiocsi-example-block", "ReadWriteMany"),
    ),
    "snapshot-metadata sidecar flag it lacks": (
        "manifests/snapshot-metadata",
        "daemonset.yaml",
        "--port=50051",
        "--grpc-port=50051",
        ("csi-snapshot-metadata v1.1.0 has no --grpc-port",),
    ),
    "snapshot-metadata sidecar without TokenReview": (
        "manifests/snapshot-metadata",
        "rbac.yaml",
        'resources: ["tokenreviews"]\n    verbs: ["create", "get"]',
        'resources: ["tokenreviews"]\n    verbs: ["get"]',
        ("lacks create authentication.k8s.io/tokenreviews", "csi-snapshot-metadata"),
    ),
    "SnapshotMetadataService named for another driver": (
        "manifests/snapshot-metadata",
        "snapshotmetadataservice.yaml",
        "name: loop.csi.aiocsi.dev",
        "name: hostpath.csi.k8s.io",
        ("SnapshotMetadataService/hostpath.csi.k8s.io", "metadata.name"),
    ),
    "kustomization names a missing file": (
        "manifests/attach",
        "kustomization.yaml",
        "rbac-attacher.yaml",
        "rbac-missing.yaml",
        ("kubectl kustomize failed",),
    ),
}


@pytest.mark.parametrize("case", list(KNOWN_BAD))
def test_known_bad_copy(tree: Path, case: str) -> None:
    target, name, old, new, parts = KNOWN_BAD[case]
    edit(tree / target / name, old, new)
    one(findings(tree, target), *parts)


def test_tree_passes() -> None:
    found = [str(f) for f in check_tree(ROOT)]
    if "--http-endpoint" in cli.help_of("serve").flags:
        assert found == []
    else:
        # The metrics overlay turns on a flag that `aiocsi serve` does not have yet: that,
        # and only that, is reported until it lands.
        one(found, "manifests/metrics", "AIOCSI_HTTP_ENDPOINT")


def test_names_are_looked_up_across_examples(tree: Path) -> None:
    edit(
        tree / "manifests/examples/clone/clone.yaml",
        "name: aiocsi-example-data",
        "name: aiocsi-example-dat",
    )
    found = [str(f) for f in check_tree(tree) if f.target == "manifests/examples/clone"]
    one(found, "PersistentVolumeClaim 'aiocsi-example-dat', which no manifest defines")


def test_copy_of_the_base_passes(tree: Path) -> None:
    assert findings(tree) == []


SCHEMA_BREAKS = {
    "removed API version": (
        "apiVersion: storage.k8s.io/v1\n",
        "apiVersion: storage.k8s.io/v1beta1\n",
        "v1beta1",
    ),
    "unknown field": (
        "  podInfoOnMount: true\n",
        "  podInfoOnMount: true\n  mountInfo: 1\n",
        "mountInfo",
    ),
}


@pytest.mark.parametrize("case", list(SCHEMA_BREAKS))
def test_core_schema_break(tree: Path, case: str) -> None:
    old, new, named = SCHEMA_BREAKS[case]
    edit(tree / BASE / "10-csidriver.yaml", old, new)
    found = findings(tree)
    assert len(found) == 2, found  # once per Kubernetes version checked
    assert all("CSIDriver/loop.csi.aiocsi.dev" in f and named in f for f in found), found


def test_rbac_wildcard(tree: Path) -> None:
    edit(tree / BASE / RBAC, 'resources: ["storageclasses",', 'resources: ["*",')
    assert any("wildcard" in f for f in findings(tree))


def test_rbac_lease_granted_to_the_wrong_sidecar(tree: Path) -> None:
    edit(
        tree / BASE / RBAC,
        "  # --enable-capacity",
        '  - apiGroups: ["coordination.k8s.io"]\n    resources: ["leases"]\n'
        '    verbs: ["get", "watch", "list", "delete", "update", "create"]\n  # --enable-capacity',
    )
    found = findings(tree)
    assert found, "a lease for a provisioner without leader election passed"
    assert all("Role/aiocsi-external-provisioner-cfg" in f and "leases" in f for f in found)


def test_sidecar_version_without_a_table(tree: Path) -> None:
    edit(tree / BASE / DS, "livenessprobe:v2.19.0", "livenessprobe:v9.9.9")
    found = findings(tree)
    assert any("livenessprobe:v9.9.9: no flag and RBAC table" in f for f in found), found


def test_topology_key_differs(tree: Path) -> None:
    name = "manifests/examples/xfs"
    edit(
        tree / name / "storageclass.yaml",
        "reclaimPolicy: Delete\n",
        "reclaimPolicy: Delete\nallowedTopologies:\n  - matchLabelExpressions:\n"
        "      - key: topology.aiocsi.dev/host\n        values: [node-1]\n",
    )
    found = findings(tree, name)
    assert len(found) == 2, found  # the stray key, and a key the driver does not report
    assert all("topology.aiocsi.dev/host" in f for f in found), found


def test_attach_on_one_side_only(tree: Path) -> None:
    edit(tree / BASE / DS, 'value: "false"\n', 'value: "true"\n')
    found = findings(tree)
    assert any("attachRequired is False" in f for f in found), found
    assert any("csi-attacher is missing" in f for f in found), found
    assert any("lacks get storage.k8s.io/volumeattachments" in f for f in found), found


def test_bad_snapshot_example(tree: Path) -> None:
    name = "manifests/examples/snapshot-restore"
    edit(tree / name / "snapshot.yaml", "persistentVolumeClaimName:", "persistentVolumeClaim:")
    found = findings(tree, name)
    assert found, "a VolumeSnapshot with an unknown source field passed"
    assert all("VolumeSnapshot/aiocsi-example-snap" in f for f in found), found


def test_new_overlays_and_examples_are_found(tree: Path) -> None:
    shutil.copytree(tree / "manifests/attach", tree / "manifests/another-overlay")
    shutil.copytree(tree / "manifests/examples/ext4", tree / "manifests/examples/another")
    names = {t.name for t in render.discover(tree)}
    assert {"manifests/another-overlay", "manifests/examples/another"} <= names


def test_containerfile(tree: Path) -> None:
    assert check_containerfile(tree / "Containerfile") == []
    edit(tree / "Containerfile", "/wheels/aiocsi-*.whl", "aiocsi")
    found = [str(f) for f in check_containerfile(tree / "Containerfile")]
    one(found, "DL3013")


def test_parse_help_and_images() -> None:
    text = "usage: x [--a-b A] [--c C]\n  --a-b A  thing [env\n     AIOCSI_A_B; default 1]\n"
    text += "  --c C  [env KUBE_NODE_NAME, then NODE_ID; default: x]\n"
    parsed = cli.parse_help("x", text)
    assert parsed.flags == {"--a-b", "--c"}
    assert parsed.env == {"AIOCSI_A_B", "KUBE_NODE_NAME", "NODE_ID"}
    assert split_image("registry.k8s.io/sig-storage/livenessprobe:v2.19.0") == (
        "registry.k8s.io/sig-storage/livenessprobe",
        "v2.19.0",
    )
    assert split_image("localhost:5000/aiocsi@sha256:abc") == ("localhost:5000/aiocsi", "")


def _content(kind: str, api_version: str, spec: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": "c"}, "spec": spec}


CRD_OBJECTS: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    "snapshot content": (
        _content(
            "VolumeSnapshotContent",
            "snapshot.storage.k8s.io/v1",
            {
                "deletionPolicy": "Retain",
                "driver": "loop.csi.aiocsi.dev",
                "source": {"snapshotHandle": "snap-1"},
                "volumeSnapshotRef": {"name": "s", "namespace": "default"},
            },
        ),
        {"source": {"snapshotHandle": "snap-1", "volumeHandle": "vol-1"}},  # both: oneOf
    ),
    "group snapshot content": (
        _content(
            "VolumeGroupSnapshotContent",
            "groupsnapshot.storage.k8s.io/v1",
            {
                "deletionPolicy": "Delete",
                "driver": "loop.csi.aiocsi.dev",
                "source": {"volumeHandles": ["vol-1", "vol-2"]},
                "volumeGroupSnapshotRef": {"name": "g", "namespace": "default"},
            },
        ),
        {"driver": 7},
    ),
    "snapshot metadata service": (
        _content(
            "SnapshotMetadataService",
            "cbt.storage.k8s.io/v1beta1",
            {"address": "svc.ns:6443", "caCert": "Q0E=", "audience": "backup"},
        ),
        {"audience": ""},
    ),
    "pod monitor": (
        _content(
            "PodMonitor",
            "monitoring.coreos.com/v1",
            {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "aiocsi"}},
                "podMetricsEndpoints": [{"port": "driver-metrics", "interval": "30s"}],
            },
        ),
        {"podMetricsEndpoints": [{"port": "driver-metrics", "every": "30s"}]},
    ),
}


@pytest.mark.parametrize("case", list(CRD_OBJECTS))
def test_crd_schemas(case: str) -> None:
    good, breakage = CRD_OBJECTS[case]
    assert schemas.validate(good) == []
    bad = dict(good)
    spec = good["spec"]
    assert isinstance(spec, dict)
    bad["spec"] = spec | breakage
    assert schemas.validate(bad), f"a broken {case} passed"


def test_a_component_is_checked_over_the_base(tree: Path) -> None:
    component = tree / "manifests/a-component"
    component.mkdir()
    (component / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
        "patchesStrategicMerge:\n  - patch.yaml\n"
    )
    # An init container running an aiocsi command with a flag that command lacks.
    (component / "patch.yaml").write_text(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: aiocsi-node\n"
        "  namespace: aiocsi\nspec:\n  template:\n    spec:\n      initContainers:\n"
        "        - name: setup\n          image: ghcr.io/aiocsi/aiocsi:0.1.0\n"
        '          args: ["bench", "probe", "--count=1", "--no-such=1"]\n'
    )
    found = findings(tree, "manifests/a-component")
    one(found, "DaemonSet/aiocsi-node", "container setup", "`aiocsi bench probe` has no --no-such")
