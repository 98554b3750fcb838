"""Every rendered object against its API schema: Kubernetes' own (kubernetes-validate,
strict: unknown fields are errors) or, for the CRDs, ours (crds.py)."""

from __future__ import annotations

from collections.abc import Iterable

import jsonschema
import kubernetes_validate.utils as kv

from tests.manifests import crds
from tests.manifests.model import Obj, group_of

# The oldest release the manifests support (VolumeAttributesClass storage.k8s.io/v1) and
# the newest that kubernetes-validate 1.37.0 ships schemas for: an API removed or not yet
# served in either fails.
KUBERNETES_VERSIONS = ("1.34", "1.37")


def validate(obj: Obj) -> list[str]:
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind must both be set"]
    if group_of(api_version) in crds.GROUPS:
        return _validate_crd(obj, kind)
    problems: list[str] = []
    for version in KUBERNETES_VERSIONS:
        problem = _validate_core(obj, version)
        if problem:
            problems.append(problem)
    return problems


def _validate_crd(obj: Obj, kind: str) -> list[str]:
    schema = crds.schema_for(kind)
    if schema is None:
        return [f"no schema for {kind} ({obj['apiVersion']}): add one to tests/manifests/crds.py"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{_path(error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]


def _validate_core(obj: Obj, version: str) -> str | None:
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as error:
        return f"Kubernetes {version}: {_path(error.path)}: {error.message}"
    except kv.SchemaNotFoundError as error:
        return f"Kubernetes {version}: {error.message}"
    return None


def _path(path: Iterable[object]) -> str:
    return ".".join(str(part) for part in path) or "(object)"
