"""Find the deployments and examples under manifests/ and render them to objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests.manifests.model import Obj, Target

KUSTOMIZATION = "kustomization.yaml"


class RenderError(Exception):
    """kubectl kustomize failed, or a file is not YAML objects."""


def discover(root: Path) -> list[Target]:
    """The base, every overlay, and every example directory, by what is on disk.

    A directory under manifests/ with a kustomization.yaml is a deployment; a directory
    under manifests/examples/ with YAML files is an example (rendered with kustomize when
    it has a kustomization.yaml, read file by file otherwise).
    """
    manifests = root / "manifests"
    examples = manifests / "examples"
    targets: list[Target] = []
    for kfile in sorted(manifests.rglob(KUSTOMIZATION)):
        directory = kfile.parent
        if examples in directory.parents or directory == examples:
            continue
        targets.append(Target(_name(root, directory), directory, is_example=False))
    if examples.is_dir():
        directories = sorted({p.parent for p in examples.rglob("*.yaml")})
        targets.extend(Target(_name(root, d), d, is_example=True) for d in directories)
    return targets


def _name(root: Path, directory: Path) -> str:
    return str(directory.relative_to(root))


def load(target: Target) -> list[Obj]:
    kfile = target.path / KUSTOMIZATION
    if kfile.exists():
        if _is_component(kfile):
            return _kustomize_component(target.path)
        return kustomize(target.path)
    objects: list[Obj] = []
    for path in sorted(target.path.glob("*.yaml")):
        objects.extend(parse(path.read_text(), str(path.name)))
    return objects


def _is_component(kfile: Path) -> bool:
    try:
        spec = yaml.safe_load(kfile.read_text())
    except yaml.YAMLError as exc:
        raise RenderError(f"{kfile.name}: not YAML: {exc}") from None
    return isinstance(spec, dict) and spec.get("kind") == "Component"


def _kustomize_component(component: Path) -> list[Obj]:
    """A kustomize Component cannot be built alone: build the base with it applied."""
    manifests = next(p for p in component.parents if p.name == "manifests")
    base = manifests / "base" if (manifests / "base" / KUSTOMIZATION).exists() else manifests
    with tempfile.TemporaryDirectory(prefix="aiocsi-kustomize-") as scratch:
        # kustomize takes relative paths only, from anywhere.
        wrapper = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(base, scratch)],
            "components": [os.path.relpath(component, scratch)],
        }
        (Path(scratch) / KUSTOMIZATION).write_text(yaml.safe_dump(wrapper))
        return kustomize(Path(scratch))


def kustomize(directory: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl not found on PATH (.ci/run installs it)")
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "deprecated" not in line]
        raise RenderError(f"kubectl kustomize failed: {' '.join(errors).strip()}")
    return parse(done.stdout, "kubectl kustomize output")


def parse(text: str, source: str) -> list[Obj]:
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise RenderError(f"{source}: not YAML: {exc}") from None
    objects: list[Obj] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise RenderError(f"{source}: a document is not a mapping")
        objects.append(document)
    return objects
