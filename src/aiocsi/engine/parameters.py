"""StorageClass and VolumeAttributesClass parameters: the documented keys and their types.

docs/parameters.md describes each key; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiocsi.errors import InvalidArgument

# Keys the CO itself adds (external-provisioner's --extra-create-metadata, for example).
CO_PREFIX = "csi.storage.k8s.io/"
PREALLOCATE = "preallocate"
BOOLEAN_VALUES = {"true": "true", "false": "false"}

# key -> allowed values (normalised form)
VOLUME_PARAMETERS: Mapping[str, Mapping[str, str]] = {PREALLOCATE: BOOLEAN_VALUES}
MUTABLE_PARAMETERS: Mapping[str, Mapping[str, str]] = {PREALLOCATE: BOOLEAN_VALUES}
SNAPSHOT_PARAMETERS: Mapping[str, Mapping[str, str]] = {}


def normalise(
    given: Mapping[str, str], known: Mapping[str, Mapping[str, str]], what: str
) -> dict[str, str]:
    """Check keys and values; drop the CO's own metadata keys; return the canonical form."""
    result: dict[str, str] = {}
    for key, value in given.items():
        if key.startswith(CO_PREFIX):
            continue
        allowed = known.get(key)
        if allowed is None:
            expected = ", ".join(sorted(known)) or "none"
            raise InvalidArgument(f"{what}: unknown key {key!r} (supported: {expected})")
        canonical = allowed.get(value.strip().lower())
        if canonical is None:
            choices = ", ".join(sorted(allowed))
            raise InvalidArgument(f"{what}: {key}={value!r} is not one of {choices}")
        result[key] = canonical
    return result


def preallocate(parameters: Mapping[str, str], mutable: Mapping[str, str] | None = None) -> bool:
    """Whether a volume's blocks are reserved: a VolumeAttributesClass value (`mutable`)
    overrides the StorageClass one, so that ControllerModifyVolume can turn it off again.
    """
    if mutable is not None and PREALLOCATE in mutable:
        return mutable[PREALLOCATE] == "true"
    return parameters.get(PREALLOCATE) == "true"
