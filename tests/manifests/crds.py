"""JSON schemas of our own for the objects that are not in the core Kubernetes schemas.

Written from the fields the CRDs define (kubernetes-csi/external-snapshotter
client/config/crd, v8.6: snapshot.storage.k8s.io/v1; groupsnapshot.storage.k8s.io v1beta2
and v1) and the Prometheus Operator API reference (monitoring.coreos.com/v1). They cover
what a manifest may set: spec and the top-level fields, with unknown fields refused; status
is written by controllers and refused here.
"""

from __future__ import annotations

from tests.manifests.model import Obj

_STRING: Obj = {"type": "string"}
_NAME: Obj = {"type": "string", "minLength": 1}
_STRING_MAP: Obj = {"type": "object", "additionalProperties": {"type": "string"}}
_DELETION_POLICY: Obj = {"enum": ["Delete", "Retain"]}
_LABEL_SELECTOR: Obj = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": _STRING,
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": _STRING},
                },
            },
        },
    },
}
_OBJECT_REF: Obj = {
    "type": "object",
    "additionalProperties": False,
    "properties": dict.fromkeys(
        ("apiVersion", "kind", "name", "namespace", "uid", "resourceVersion"), _STRING
    )
    | {"fieldPath": _STRING},
}
_METADATA: Obj = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": _STRING},
    },
    "additionalProperties": False,
}


def _object(api_versions: list[str], kind: str, body: Obj, required: list[str]) -> Obj:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", *required],
        "properties": {
            "apiVersion": {"enum": api_versions},
            "kind": {"const": kind},
            "metadata": _METADATA,
            **body,
        },
    }


def _one_of(*keys: str) -> list[Obj]:
    return [{"required": [key]} for key in keys]


_SNAPSHOT = ["snapshot.storage.k8s.io/v1"]
_GROUP = ["groupsnapshot.storage.k8s.io/v1beta2", "groupsnapshot.storage.k8s.io/v1"]

_CLASS_BODY: Obj = {
    "driver": _NAME,
    "deletionPolicy": _DELETION_POLICY,
    "parameters": _STRING_MAP,
}

_SCHEMAS: dict[str, Obj] = {
    "VolumeSnapshotClass": _object(
        _SNAPSHOT, "VolumeSnapshotClass", _CLASS_BODY, ["driver", "deletionPolicy"]
    ),
    "VolumeSnapshot": _object(
        _SNAPSHOT,
        "VolumeSnapshot",
        {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["source"],
                "properties": {
                    "volumeSnapshotClassName": _NAME,
                    "source": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "persistentVolumeClaimName": _NAME,
                            "volumeSnapshotContentName": _NAME,
                        },
                        "oneOf": _one_of("persistentVolumeClaimName", "volumeSnapshotContentName"),
                    },
                },
            }
        },
        ["spec"],
    ),
    "VolumeSnapshotContent": _object(
        _SNAPSHOT,
        "VolumeSnapshotContent",
        {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["deletionPolicy", "driver", "source", "volumeSnapshotRef"],
                "properties": {
                    "deletionPolicy": _DELETION_POLICY,
                    "driver": _NAME,
                    "volumeSnapshotClassName": _NAME,
                    "sourceVolumeMode": {"enum": ["Filesystem", "Block"]},
                    "volumeSnapshotRef": _OBJECT_REF,
                    "source": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"volumeHandle": _NAME, "snapshotHandle": _NAME},
                        "oneOf": _one_of("volumeHandle", "snapshotHandle"),
                    },
                },
            }
        },
        ["spec"],
    ),
    "VolumeGroupSnapshotClass": _object(
        _GROUP, "VolumeGroupSnapshotClass", _CLASS_BODY, ["driver", "deletionPolicy"]
    ),
    "VolumeGroupSnapshot": _object(
        _GROUP,
        "VolumeGroupSnapshot",
        {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["source"],
                "properties": {
                    "volumeGroupSnapshotClassName": _NAME,
                    "source": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "selector": _LABEL_SELECTOR,
                            "volumeGroupSnapshotContentName": _NAME,
                        },
                        "oneOf": _one_of("selector", "volumeGroupSnapshotContentName"),
                    },
                },
            }
        },
        ["spec"],
    ),
    "VolumeGroupSnapshotContent": _object(
        _GROUP,
        "VolumeGroupSnapshotContent",
        {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["deletionPolicy", "driver", "source", "volumeGroupSnapshotRef"],
                "properties": {
                    "deletionPolicy": _DELETION_POLICY,
                    "driver": _NAME,
                    "volumeGroupSnapshotClassName": _NAME,
                    "volumeGroupSnapshotRef": _OBJECT_REF,
                    "source": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "volumeHandles": {"type": "array", "items": _NAME},
                            "groupSnapshotHandles": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["volumeGroupSnapshotHandle", "volumeSnapshotHandles"],
                                "properties": {
                                    "volumeGroupSnapshotHandle": _NAME,
                                    "volumeSnapshotHandles": {"type": "array", "items": _NAME},
                                },
                            },
                        },
                        "oneOf": _one_of("volumeHandles", "groupSnapshotHandles"),
                    },
                },
            }
        },
        ["spec"],
    ),
}

# Prometheus Operator: the fields of a scrape endpoint and of the monitor's spec.
_ENDPOINT_KEYS = (
    "port",
    "targetPort",
    "portNumber",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "trackTimestampsStaleness",
    "relabelings",
    "metricRelabelings",
    "tlsConfig",
    "bearerTokenSecret",
    "authorization",
    "basicAuth",
    "oauth2",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
    "proxyUrl",
)
_DURATION: Obj = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
    r"(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_MONITOR_SPEC_KEYS = (
    "jobLabel",
    "targetLabels",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "labelNameLengthLimit",
    "labelValueLengthLimit",
    "keepDroppedTargets",
    "scrapeProtocols",
    "scrapeClass",
    "bodySizeLimit",
)


def _monitor(kind: str, endpoints_key: str) -> Obj:
    endpoint: Obj = {
        "type": "object",
        "additionalProperties": False,
        "properties": {key: {} for key in _ENDPOINT_KEYS}
        | {"path": {"type": "string", "pattern": "^/"}, "interval": _DURATION},
        "anyOf": [
            {"required": ["port"]},
            {"required": ["targetPort"]},
            {"required": ["portNumber"]},
        ],
    }
    spec: Obj = {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector"],
        "properties": {key: {} for key in _MONITOR_SPEC_KEYS}
        | {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": _STRING},
                },
            },
            "attachMetadata": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"node": {"type": "boolean"}},
            },
            endpoints_key: {"type": "array", "minItems": 1, "items": endpoint},
        },
    }
    return _object(["monitoring.coreos.com/v1"], kind, {"spec": spec}, ["spec"])


_SCHEMAS["ServiceMonitor"] = _monitor("ServiceMonitor", "endpoints")
_SCHEMAS["PodMonitor"] = _monitor("PodMonitor", "podMetricsEndpoints")

# kubernetes-csi/external-snapshot-metadata v1.1.0,
# client/config/crd/cbt.storage.k8s.io_snapshotmetadataservices.yaml: cluster-scoped, every
# spec field required and non-empty.
_SCHEMAS["SnapshotMetadataService"] = _object(
    ["cbt.storage.k8s.io/v1beta1"],
    "SnapshotMetadataService",
    {
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["address", "caCert", "audience"],
            "properties": {
                "address": _NAME,
                "caCert": {"type": "string", "minLength": 1, "contentEncoding": "base64"},
                "audience": _NAME,
            },
        }
    },
    ["spec"],
)

GROUPS = {
    "cbt.storage.k8s.io",
    "snapshot.storage.k8s.io",
    "groupsnapshot.storage.k8s.io",
    "monitoring.coreos.com",
}


def schema_for(kind: str) -> Obj | None:
    return _SCHEMAS.get(kind)
