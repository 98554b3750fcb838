"""What each CSI sidecar version accepts on its command line and needs from the API server.

Flags: from each sidecar's README ("Command line options"); a flag is listed only when a
README or a release's `--help` names it, so the table may miss a rare flag (add it, with
its source, when a manifest needs it) but does not admit one the sidecar lacks.
Rules: from each sidecar's published deploy/kubernetes/rbac.yaml for that release, with
the conditions their comments state (leader election needs leases, capacity needs
CSIStorageCapacity and the owner walk, and so on). A sidecar or version missing here is a
finding: add its row from its release's docs before deploying it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

# (apiGroup, resource, verbs); scope is "cluster" or "namespace" (the pod's namespace).
Rule = tuple[str, str, tuple[str, ...]]
READ = ("get", "list", "watch")
EVENTS = ("list", "watch", "create", "update", "patch")
LEASE_VERBS = ("get", "watch", "list", "delete", "update", "create")


@dataclass(frozen=True)
class Options:
    """What a sidecar's needs depend on: its flags and the driver it serves."""

    args: Mapping[str, str]
    driver_attach: bool
    owner_kind: str

    def flag(self, name: str, default: str) -> str:
        return self.args.get(name, default)

    def on(self, name: str, *, default: bool) -> bool:
        return self.flag(name, "true" if default else "false").lower() in ("true", "1")

    def gate(self, name: str, *, default: bool) -> bool:
        gates = dict(
            item.split("=", 1) for item in self.flag("feature-gates", "").split(",") if "=" in item
        )
        return gates.get(name, "true" if default else "false").lower() == "true"


@dataclass(frozen=True)
class Needs:
    cluster: tuple[Rule, ...] = ()
    namespace: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Sidecar:
    flags: frozenset[str]
    needs: Callable[[Options], Needs]
    # A Role or ClusterRole whose name contains this is meant for this sidecar alone.
    role_hint: str = ""


# Flags every csi-lib-utils based sidecar has (klog's included).
_KLOG = frozenset({"v", "vmodule", "logging-format", "add_dir_header", "one_output"})
_CONTROLLER = _KLOG | {
    "csi-address",
    "kubeconfig",
    "timeout",
    "http-endpoint",
    "metrics-address",
    "metrics-path",
    "leader-election",
    "leader-election-namespace",
    "leader-election-lease-duration",
    "leader-election-renew-deadline",
    "leader-election-retry-period",
    "leader-election-labels",
    "kube-api-qps",
    "kube-api-burst",
    "worker-threads",
    "retry-interval-start",
    "retry-interval-max",
    "feature-gates",
    "version",
}


def _leases(options: Options) -> tuple[Rule, ...]:
    if options.on("leader-election", default=False):
        return (("coordination.k8s.io", "leases", LEASE_VERBS),)
    return ()


def _provisioner(options: Options) -> Needs:
    cluster: list[Rule] = [
        ("", "persistentvolumes", ("get", "list", "watch", "create", "patch", "delete")),
        ("", "persistentvolumeclaims", ("get", "list", "watch", "update")),
        ("storage.k8s.io", "storageclasses", READ),
        ("storage.k8s.io", "csinodes", READ),
        ("", "nodes", READ),
        ("", "events", EVENTS),
        ("snapshot.storage.k8s.io", "volumesnapshots", ("get", "list", "watch", "update")),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", ("get", "list")),
        ("storage.k8s.io", "volumeattributesclasses", READ),
    ]
    if options.driver_attach:
        cluster.append(("storage.k8s.io", "volumeattachments", READ))
    namespace = list(_leases(options))
    if options.on("enable-capacity", default=False):
        namespace.append(
            (
                "storage.k8s.io",
                "csistoragecapacities",
                ("get", "list", "watch", "create", "update", "patch", "delete"),
            )
        )
        level = int(options.flag("capacity-ownerref-level", "1"))
        if level >= 0:
            namespace.append(("", "pods", ("get",)))
        if level >= 2:
            owner = {"DaemonSet": "daemonsets", "Deployment": "replicasets"}
            namespace.append(("apps", owner.get(options.owner_kind, "replicasets"), ("get",)))
    return Needs(tuple(cluster), tuple(namespace))


def _resizer(options: Options) -> Needs:
    cluster: list[Rule] = [
        ("", "persistentvolumes", ("get", "list", "watch", "patch")),
        ("", "persistentvolumeclaims", READ),
        ("", "persistentvolumeclaims/status", ("patch",)),
        ("", "events", EVENTS),
    ]
    if options.on("handle-volume-inuse-error", default=True):
        cluster.append(("", "pods", READ))
    if options.gate("VolumeAttributesClass", default=True):
        cluster.append(("storage.k8s.io", "volumeattributesclasses", READ))
    return Needs(tuple(cluster), _leases(options))


def _snapshotter(options: Options) -> Needs:
    cluster: list[Rule] = [
        ("", "events", EVENTS),
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", READ),
        (
            "snapshot.storage.k8s.io",
            "volumesnapshotcontents",
            ("get", "list", "watch", "update", "patch"),
        ),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", ("update", "patch")),
    ]
    # v8.6 turned the CSIVolumeGroupSnapshot gate on by default.
    if options.gate("CSIVolumeGroupSnapshot", default=True):
        cluster += [
            ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", READ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotcontents",
                ("get", "list", "watch", "update", "patch"),
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotcontents/status",
                ("update", "patch"),
            ),
        ]
    return Needs(tuple(cluster), _leases(options))


def _attacher(options: Options) -> Needs:
    cluster: tuple[Rule, ...] = (
        ("", "persistentvolumes", ("get", "list", "watch", "patch")),
        ("storage.k8s.io", "csinodes", READ),
        ("storage.k8s.io", "volumeattachments", ("get", "list", "watch", "patch")),
        ("storage.k8s.io", "volumeattachments/status", ("patch",)),
    )
    return Needs(cluster, _leases(options))


def _snapshot_metadata(_: Options) -> Needs:
    # deploy/snapshot-metadata-cluster-role.yaml of v1.1.0; a server, no leader election.
    cluster: tuple[Rule, ...] = (
        (
            "cbt.storage.k8s.io",
            "snapshotmetadataservices",
            ("get", "list", "watch", "create", "update", "patch", "delete"),
        ),
        ("authentication.k8s.io", "tokenreviews", ("create", "get")),
        ("authorization.k8s.io", "subjectaccessreviews", ("create", "get")),
        ("snapshot.storage.k8s.io", "volumesnapshots", ("get", "list")),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", ("get", "list")),
    )
    return Needs(cluster)


def _nothing(_: Options) -> Needs:
    return Needs()


_PROVISIONER_FLAGS = _CONTROLLER | {
    "master",
    "volume-name-prefix",
    "volume-name-uuid-length",
    "extra-create-metadata",
    "strict-topology",
    "immediate-topology",
    "default-fstype",
    "cloning-protection-threads",
    "enable-capacity",
    "capacity-ownerref-level",
    "capacity-threads",
    "capacity-poll-interval",
    "capacity-for-immediate-binding",
    "node-deployment",
    "node-deployment-immediate-binding",
    "node-deployment-base-delay",
    "node-deployment-max-delay",
    "controller-publish-readonly",
    "enable-pprof",
}
# csi-resizer names its worker count --workers, not --worker-threads.
_RESIZER_FLAGS = (_CONTROLLER - {"worker-threads"}) | {
    "resync-period",
    "workers",
    "handle-volume-inuse-error",
    "extra-modify-metadata",
}
_SNAPSHOTTER_FLAGS = _CONTROLLER | {
    "resync-period",
    "snapshot-name-prefix",
    "snapshot-name-uuid-length",
    "groupsnapshot-name-prefix",
    "groupsnapshot-name-uuid-length",
    "extra-create-metadata",
    "node-deployment",
}
_ATTACHER_FLAGS = _CONTROLLER | {
    "resync",
    "reconcile-sync",
    "default-fstype",
    "max-entries",
    "max-grpc-log-length",
}
_REGISTRAR_FLAGS = _KLOG | {
    "csi-address",
    "kubelet-registration-path",
    "plugin-registration-path",
    "http-endpoint",
    "health-port",
    "timeout",
    "connection-timeout",
    "enable-pprof",
    "version",
}
# cmd/csi-snapshot-metadata (pkg/sidecar/sidecar.go flag names), v1.1.0.
_SNAPSHOT_METADATA_FLAGS = _KLOG | {
    "csi-address",
    "timeout",
    "port",
    "http-endpoint",
    "metrics-path",
    "disable-metrics",
    "kube-api-qps",
    "kube-api-burst",
    "kubeconfig",
    "max-streaming-duration-min",
    "tls-cert",
    "tls-key",
    "audience",
    "version",
}
_LIVENESSPROBE_FLAGS = _KLOG | {
    "csi-address",
    "http-endpoint",
    "health-port",
    "probe-timeout",
    "version",
}

SIDECARS: dict[str, dict[str, Sidecar]] = {
    "csi-provisioner": {
        "v6.3.0": Sidecar(_PROVISIONER_FLAGS, _provisioner, "external-provisioner"),
    },
    "csi-resizer": {"v2.2.1": Sidecar(_RESIZER_FLAGS, _resizer, "external-resizer")},
    "csi-snapshotter": {
        "v8.6.0": Sidecar(_SNAPSHOTTER_FLAGS, _snapshotter, "external-snapshotter"),
    },
    "csi-attacher": {"v4.12.0": Sidecar(_ATTACHER_FLAGS, _attacher, "external-attacher")},
    "csi-node-driver-registrar": {"v2.17.0": Sidecar(_REGISTRAR_FLAGS, _nothing)},
    "livenessprobe": {"v2.19.0": Sidecar(_LIVENESSPROBE_FLAGS, _nothing)},
    "csi-snapshot-metadata": {
        "v1.1.0": Sidecar(
            _SNAPSHOT_METADATA_FLAGS, _snapshot_metadata, "external-snapshot-metadata"
        )
    },
}
SIDECAR_REGISTRY = "registry.k8s.io/sig-storage/"


def split_image(image: str) -> tuple[str, str]:
    """`registry/path/name:tag` -> (`registry/path/name`, `tag`); a digest counts as no tag."""
    name = image.split("@", 1)[0]
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, ""
    return repo, tag


def parse_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--flag=value`, `--flag value`-free command lines as the sidecars are given them.

    Returns the flags (a bare `--flag` is "true") and anything that is not a flag.
    """
    flags: dict[str, str] = {}
    stray: list[str] = []
    for arg in args:
        if not arg.startswith("-"):
            stray.append(arg)
            continue
        name, sep, value = arg.lstrip("-").partition("=")
        flags[name] = value if sep else "true"
    return flags, stray
