"""The sidecars' RBAC covers what each needs (sidecars.py) and nothing broader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tests.manifests.agreement import Driver, Problem
from tests.manifests.model import Obj, containers, pod_spec, ref
from tests.manifests.sidecars import (
    SIDECAR_REGISTRY,
    SIDECARS,
    Needs,
    Options,
    Sidecar,
    parse_args,
    split_image,
)

CLUSTER = "cluster"
# (scope, apiGroup, resource, verb): scope is CLUSTER or a namespace.
Perm = tuple[str, str, str, str]
Needed = dict[Perm, set[str]]


@dataclass(frozen=True)
class Grant:
    perm: Perm
    role: str  # e.g. "ClusterRole/aiocsi-external-provisioner"


def _perms(scope: str, needs: Needs, namespace: str) -> set[Perm]:
    out: set[Perm] = set()
    for rules, where in ((needs.cluster, scope), (needs.namespace, namespace)):
        for group, resource, verbs in rules:
            out.update((where, group, resource, verb) for verb in verbs)
    return out


def _sidecars(spec: Obj) -> Iterator[tuple[str, Sidecar, dict[str, str]]]:
    for container in containers(spec):
        repo, tag = split_image(str(container.get("image", "")))
        sidecar = SIDECARS.get(repo.removeprefix(SIDECAR_REGISTRY), {}).get(tag)
        if repo.startswith(SIDECAR_REGISTRY) and sidecar is not None:
            flags, _ = parse_args([str(a) for a in container.get("args") or []])
            yield str(container.get("name")), sidecar, flags


def _bound_roles(objects: list[Obj], account: str, namespace: str) -> Iterator[tuple[str, Obj]]:
    """(scope, role object) for every role bound to the ServiceAccount."""
    roles = {
        (o.get("kind"), (o.get("metadata") or {}).get("namespace"), o["metadata"].get("name")): o
        for o in objects
        if o.get("kind") in {"Role", "ClusterRole"}
    }
    for binding in objects:
        kind = binding.get("kind")
        if kind not in {"RoleBinding", "ClusterRoleBinding"}:
            continue
        subjects = binding.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == account
            and s.get("namespace", namespace) == namespace
            for s in subjects
        ):
            continue
        role_ref = binding.get("roleRef") or {}
        binding_ns = (binding.get("metadata") or {}).get("namespace")
        scope = CLUSTER if kind == "ClusterRoleBinding" else str(binding_ns)
        role_ns = None if role_ref.get("kind") == "ClusterRole" else binding_ns
        role = roles.get((role_ref.get("kind"), role_ns, role_ref.get("name")))
        if role is None:
            yield scope, {"kind": role_ref.get("kind"), "metadata": {"name": role_ref.get("name")}}
        else:
            yield scope, role


def _grants(objects: list[Obj], account: str, namespace: str) -> Iterator[Grant | Problem]:
    for scope, role in _bound_roles(objects, account, namespace):
        if "rules" not in role and role.get("apiVersion") is None:
            yield ref(role), "is bound to the node ServiceAccount but is not in the manifests"
            continue
        for rule in role.get("rules") or []:
            groups = rule.get("apiGroups") or []
            resources = rule.get("resources") or []
            verbs = rule.get("verbs") or []
            if "*" in groups or "*" in resources or "*" in verbs:
                yield ref(role), f"wildcard rule {rule}: broader than any sidecar needs"
            for group in groups:
                for resource in resources:
                    for verb in verbs:
                        yield Grant((scope, group, resource, verb), ref(role))


def _show(perm: Perm) -> str:
    scope, group, resource, verb = perm
    where = "cluster-wide" if scope == CLUSTER else f"in namespace {scope}"
    return f"{verb} {group or 'core'}/{resource} {where}"


def _needed(obj: Obj, spec: Obj, driver: Driver | None) -> tuple[Needed, dict[str, set[Perm]]]:
    """What the pod's sidecars need, by permission and by role hint."""
    namespace = str((obj.get("metadata") or {}).get("namespace", "default"))
    attach = driver.attach if driver else False
    needed: Needed = {}
    by_hint: dict[str, set[Perm]] = {}
    for name, sidecar, flags in _sidecars(spec):
        options = Options(flags, driver_attach=attach, owner_kind=str(obj.get("kind")))
        perms = _perms(CLUSTER, sidecar.needs(options), namespace)
        for perm in perms:
            needed.setdefault(perm, set()).add(name)
        if sidecar.role_hint:
            by_hint[sidecar.role_hint] = perms
    return needed, by_hint


def check(obj: Obj, objects: list[Obj], driver: Driver | None) -> Iterator[Problem]:
    spec = pod_spec(obj)
    if spec is None or not any(_sidecars(spec)):
        return
    namespace = str((obj.get("metadata") or {}).get("namespace", "default"))
    account = str(spec.get("serviceAccountName", "default"))
    needed, by_hint = _needed(obj, spec, driver)
    granted: Needed = {}
    for item in _grants(objects, account, namespace):
        if isinstance(item, Grant):
            granted.setdefault(item.perm, set()).add(item.role)
        else:
            yield item
    for perm in sorted(set(needed) - set(granted)):
        if (CLUSTER, *perm[1:]) not in granted:
            users = ", ".join(sorted(needed[perm]))
            yield ref(obj), f"ServiceAccount {account} lacks {_show(perm)} ({users} needs it)"
    for perm in sorted(set(granted) - set(needed)):
        yield (
            ", ".join(sorted(granted[perm])),
            f"grants {_show(perm)}, which no sidecar in {ref(obj)} needs",
        )
    for perm, granting in sorted(granted.items()):
        for role in sorted(granting):
            hint = next((h for h in by_hint if h in role), None)
            if hint is not None and perm in needed and perm not in by_hint[hint]:
                yield role, f"grants {_show(perm)}, which {hint} does not need (another role's)"
