"""The manifest checker reports known-bad copies of the manifests, and passes the tree."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.manifests import cli, render
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


def test_tree_passes() -> None:
    found = [str(f) for f in check_tree(ROOT)]
    if "--http-endpoint" in cli.help_of("serve").flags:
        assert found == []
    else:
        # The metrics overlay turns on a flag that `aiocsi serve` does not have yet: that,
        # and only that, is reported until it lands.
        one(found, "manifests/metrics", "AIOCSI_HTTP_ENDPOINT")


def test_copy_of_the_base_passes(tree: Path) -> None:
    assert findings(tree) == []


def test_wrong_api_version(tree: Path) -> None:
    edit(
        tree / BASE / "10-csidriver.yaml",
        "apiVersion: storage.k8s.io/v1\n",
        "apiVersion: storage.k8s.io/v1beta1\n",
    )
    found = findings(tree)
    assert found, "a removed API version passed"
    assert all("CSIDriver/loop.csi.aiocsi.dev" in f and "v1beta1" in f for f in found), found


def test_wrong_api_version_of_a_snapshot_class(tree: Path) -> None:
    edit(tree / BASE / "41-volumesnapshotclass.yaml", "/v1\n", "/v1beta1\n")
    one(findings(tree), "VolumeSnapshotClass/aiocsi-loop", "apiVersion", "v1beta1")


def test_unknown_field_in_a_core_object(tree: Path) -> None:
    edit(
        tree / BASE / "10-csidriver.yaml",
        "  podInfoOnMount: true\n",
        "  podInfoOnMount: true\n  mountInfo: 1\n",
    )
    found = findings(tree)
    assert len(found) == 2, found  # once per Kubernetes version checked
    assert all("mountInfo" in f for f in found), found


def test_flag_serve_lacks(tree: Path) -> None:
    edit(
        tree / BASE / "30-node-daemonset.yaml", 'args: ["serve"]', 'args: ["serve", "--no-such=1"]'
    )
    one(findings(tree), "DaemonSet/aiocsi-node", "driver", "has no --no-such")


def test_env_serve_does_not_read(tree: Path) -> None:
    edit(
        tree / BASE / "30-node-daemonset.yaml",
        "            - name: AIOCSI_MODE\n",
        "            - name: AIOCSI_TURBO\n"
        '              value: "1"\n'
        "            - name: AIOCSI_MODE\n",
    )
    one(findings(tree), "env AIOCSI_TURBO", "aiocsi serve")


def test_missing_rbac_verb(tree: Path) -> None:
    edit(
        tree / BASE / "20-rbac.yaml",
        '["get", "list", "watch", "create", "patch", "delete"]',
        '["get", "list", "watch", "patch", "delete"]',
    )
    one(findings(tree), "lacks create core/persistentvolumes cluster-wide", "csi-provisioner")


def test_rbac_broader_than_needed(tree: Path) -> None:
    edit(
        tree / BASE / "20-rbac.yaml",
        '    resources: ["nodes"]\n    verbs: ["get", "list", "watch"]',
        '    resources: ["nodes"]\n    verbs: ["get", "list", "watch", "delete"]',
    )
    one(findings(tree), "ClusterRole/aiocsi-external-provisioner", "grants delete core/nodes")


def test_rbac_wildcard(tree: Path) -> None:
    edit(tree / BASE / "20-rbac.yaml", 'resources: ["storageclasses",', 'resources: ["*",')
    assert any("wildcard" in f for f in findings(tree))


def test_rbac_lease_granted_to_the_wrong_sidecar(tree: Path) -> None:
    edit(
        tree / BASE / "20-rbac.yaml",
        "  # --enable-capacity",
        '  - apiGroups: ["coordination.k8s.io"]\n    resources: ["leases"]\n'
        '    verbs: ["get", "watch", "list", "delete", "update", "create"]\n  # --enable-capacity',
    )
    found = findings(tree)
    assert found, "a lease for a provisioner without leader election passed"
    assert all("Role/aiocsi-external-provisioner-cfg" in f and "leases" in f for f in found)


def test_sidecar_socket_path_differs(tree: Path) -> None:
    edit(
        tree / BASE / "30-node-daemonset.yaml",
        "image: registry.k8s.io/sig-storage/csi-provisioner:v6.3.0\n"
        "          imagePullPolicy: IfNotPresent\n          args:\n"
        "            - --csi-address=/csi/csi.sock",
        "image: registry.k8s.io/sig-storage/csi-provisioner:v6.3.0\n"
        "          imagePullPolicy: IfNotPresent\n          args:\n"
        "            - --csi-address=/csi/other.sock",
    )
    one(findings(tree), "csi-provisioner: --csi-address /csi/other.sock", "csi.sock")


def test_driver_socket_path_differs(tree: Path) -> None:
    edit(tree / BASE / "30-node-daemonset.yaml", "unix:///csi/csi.sock", "unix:///csi/driver.sock")
    found = findings(tree)
    one(
        found,
        "driver's socket /csi/driver.sock",
        "/var/lib/kubelet/plugins/loop.csi.aiocsi.dev/csi.sock",
    )


def test_registration_path_differs(tree: Path) -> None:
    edit(tree / BASE / "30-node-daemonset.yaml", "aiocsi.dev/csi.sock\n", "aiocsi.dev/reg.sock\n")
    one(findings(tree), "--kubelet-registration-path", "reg.sock")


def test_unknown_sidecar_flag_and_version(tree: Path) -> None:
    daemonset = tree / BASE / "30-node-daemonset.yaml"
    # The snapshotter's --node-deployment is the one followed by its env block.
    edit(
        daemonset,
        "            - --node-deployment=true\n          env:\n            - name: NODE_NAME\n"
        "              valueFrom:\n                fieldRef:\n"
        "                  fieldPath: spec.nodeName\n          securityContext:",
        "            - --node-deployment=true\n            - --turbo=on\n          env:\n"
        "            - name: NODE_NAME\n              valueFrom:\n                fieldRef:\n"
        "                  fieldPath: spec.nodeName\n          securityContext:",
    )
    one(findings(tree), "csi-snapshotter v8.6.0 has no --turbo")
    edit(daemonset, "livenessprobe:v2.19.0", "livenessprobe:v9.9.9")
    found = findings(tree)
    assert any("livenessprobe:v9.9.9: no flag and RBAC table" in f for f in found), found


def test_driver_name_differs(tree: Path) -> None:
    edit(
        tree / BASE / "40-storageclass.yaml",
        "provisioner: loop.csi.aiocsi.dev",
        "provisioner: loop.aiocsi.dev",
    )
    one(findings(tree), "StorageClass/aiocsi-loop", "provisioner is 'loop.aiocsi.dev'")


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
    edit(tree / BASE / "30-node-daemonset.yaml", 'value: "false"\n', 'value: "true"\n')
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


def test_bad_group_snapshot_example(tree: Path) -> None:
    name = "manifests/examples/group-snapshot"
    edit(tree / name / "group-snapshot.yaml", "deletionPolicy: Delete", "deletionPolicy: Keep")
    one(findings(tree, name), "VolumeGroupSnapshotClass/aiocsi-loop", "deletionPolicy")


def test_broken_kustomization(tree: Path) -> None:
    edit(tree / "manifests/attach/kustomization.yaml", "rbac-attacher.yaml", "rbac-missing.yaml")
    one(findings(tree, "manifests/attach"), "kubectl kustomize failed")


def test_new_overlays_and_examples_are_found(tree: Path) -> None:
    shutil.copytree(tree / "manifests/attach", tree / "manifests/flexvolume")
    shutil.copytree(tree / "manifests/examples/ext4", tree / "manifests/examples/pre-provisioned")
    names = {t.name for t in render.discover(tree)}
    assert {"manifests/flexvolume", "manifests/examples/pre-provisioned"} <= names


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
