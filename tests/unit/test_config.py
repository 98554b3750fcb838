from __future__ import annotations

from pathlib import Path

import pytest

from aiocsi.cli import build_parser, config_from_args
from aiocsi.config import (
    ConfigError,
    Mode,
    parse_endpoint,
    parse_mode,
    parse_octal_mode,
    parse_size,
)


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        ("unix:///run/csi/csi.sock", "/run/csi/csi.sock"),
        ("/tmp/x.sock", "/tmp/x.sock"),
        ("unix:///a//b/../c.sock", "/a/c.sock"),
    ],
)
def test_endpoint_accepts_unix_urls_and_absolute_paths(endpoint: str, path: str) -> None:
    assert parse_endpoint(endpoint) == Path(path)


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("tcp://127.0.0.1:10000", "only unix sockets"),
        ("unix://relative.sock", "absolute"),
        ("csi.sock", "absolute"),
        ("/" + "x" * 107, "at most 107"),
    ],
)
def test_endpoint_refusals_name_the_reason(endpoint: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_endpoint(endpoint)


def test_socket_path_of_107_bytes_is_the_longest_allowed() -> None:
    assert len(str(parse_endpoint("/" + "x" * 106))) == 107


def test_mode_and_socket_mode_parsing() -> None:
    assert parse_mode("node") is Mode.NODE
    assert Mode.ALL.serves_controller
    assert Mode.ALL.serves_node
    assert not Mode.NODE.serves_controller
    with pytest.raises(ConfigError, match="expected one of all, controller, node"):
        parse_mode("both")
    assert parse_octal_mode("0600") == 0o600
    with pytest.raises(ConfigError):
        parse_octal_mode("rw-")
    with pytest.raises(ConfigError):
        parse_octal_mode("1777")


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("64Mi", 64 << 20), ("1Gi", 1 << 30), ("10G", 10 * 10**9), ("2k", 2000)],
)
def test_sizes_parse_kubernetes_quantities(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5Gi", "-1", "5Zi", "Mi"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_flags_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSI_ENDPOINT", "unix:///tmp/env.sock")
    monkeypatch.setenv("AIOCSI_MODE", "controller")
    monkeypatch.setenv("KUBE_NODE_NAME", "node-a")
    monkeypatch.setenv("AIOCSI_ALLOWED_PATH_ROOTS", "/var/lib/kubelet:/mnt/extra")
    config = config_from_args(build_parser().parse_args(["serve"]))
    assert config.socket_path == Path("/tmp/env.sock")
    assert config.mode is Mode.CONTROLLER
    assert config.node_id == "node-a"
    assert config.allowed_path_roots == (Path("/var/lib/kubelet"), Path("/mnt/extra"))


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_NODE_NAME", "from-env")
    args = build_parser().parse_args(
        ["serve", "--node-id", "from-flag", "--socket-mode", "0600", "--enable-attach", "true"]
    )
    config = config_from_args(args)
    assert config.node_id == "from-flag"
    assert config.socket_mode == 0o600
    assert config.enable_attach is True


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-operations", "0"],
        ["--overcommit", "-1"],
        ["--shutdown-grace", "soon"],
        ["--enable-attach", "maybe"],
        ["--log-level", "loud"],
        ["--pool", "relative/pool"],
    ],
)
def test_bad_values_are_config_errors(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        config_from_args(build_parser().parse_args(["serve", *argv]))
