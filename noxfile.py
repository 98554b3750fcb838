"""Developer and CI sessions: tests, lint, typecheck, protos."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, system tests included (root, loop devices, real mounts)."""
    session.run("bash", "tools/host-packages.sh", external=True)
    session.install("-e", ".[test,protos,bench]")
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
def protos(session: nox.Session) -> None:
    """Regenerate src/aiocsi/_proto from protos/ (commit the result)."""
    session.install("-e", ".[protos]")
    session.run("python", "tools/protos.py", *session.posargs)
