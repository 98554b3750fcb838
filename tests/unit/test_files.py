"""Image files on whatever filesystem holds the test directory: no root, no devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiocsi.host import files
from aiocsi.threads import WorkerPool

W = WorkerPool(4)
MIB = 1024 * 1024


async def test_create_sparse_allocates_nothing(workdir: Path) -> None:
    image = workdir / "a.img"
    await files.create_sparse(W, image, 64 * MIB)
    assert files.file_size(image) == 64 * MIB
    assert files.allocated_bytes(image) < MIB
    assert image.stat().st_mode & 0o777 == 0o600


async def test_create_sparse_preallocates_on_request(workdir: Path) -> None:
    image = workdir / "a.img"
    await files.create_sparse(W, image, 8 * MIB, preallocate=True)
    assert files.allocated_bytes(image) >= 8 * MIB


async def test_create_sparse_never_replaces_a_file(workdir: Path) -> None:
    image = workdir / "a.img"
    image.write_bytes(b"tenant data")
    with pytest.raises(FileExistsError):
        await files.create_sparse(W, image, MIB)
    assert image.read_bytes() == b"tenant data"


async def test_create_sparse_rejects_negative_size(workdir: Path) -> None:
    with pytest.raises(ValueError, match="negative"):
        await files.create_sparse(W, workdir / "a.img", -1)
    assert not (workdir / "a.img").exists()


async def test_grow_file_grows_and_never_shrinks(workdir: Path) -> None:
    image = workdir / "a.img"
    await files.create_sparse(W, image, 4 * MIB)
    await files.grow_file(W, image, 8 * MIB)
    assert files.file_size(image) == 8 * MIB
    await files.grow_file(W, image, 2 * MIB)
    assert files.file_size(image) == 8 * MIB
    await files.grow_file(W, image, 12 * MIB, preallocate=True)
    assert files.file_size(image) == 12 * MIB
    # Only the added range is reserved: the original stays sparse.
    assert 4 * MIB <= files.allocated_bytes(image) < 8 * MIB


async def test_grow_file_of_a_missing_image_fails(workdir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await files.grow_file(W, workdir / "missing.img", MIB)
    assert not (workdir / "missing.img").exists()


async def test_remove_file_is_idempotent(workdir: Path) -> None:
    image = workdir / "a.img"
    await files.create_sparse(W, image, MIB)
    await files.remove_file(W, image)
    await files.remove_file(W, image)
    await files.remove_file(W, workdir / "no-such-dir" / "a.img")
    assert not image.exists()


async def test_copy_refuses_a_smaller_size(workdir: Path) -> None:
    src = workdir / "src.img"
    await files.create_sparse(W, src, 4 * MIB)
    with pytest.raises(ValueError, match="cannot copy"):
        await files.copy_image(W, src, workdir / "dst.img", size=MIB)
    assert not (workdir / "dst.img").exists()


async def test_copy_never_replaces_a_file(workdir: Path) -> None:
    src, dst = workdir / "src.img", workdir / "dst.img"
    await files.create_sparse(W, src, MIB)
    dst.write_bytes(b"tenant data")
    with pytest.raises(FileExistsError):
        await files.copy_image(W, src, dst)
    assert dst.read_bytes() == b"tenant data"


def test_filesystem_space(workdir: Path) -> None:
    total, available = files.filesystem_space(workdir)
    st = os.statvfs(workdir)
    assert total == st.f_blocks * st.f_frsize
    assert 0 < available <= total


def test_canonical_paths_match_resolve(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to("/nowhere/at/all")
    cases = [
        tmp_path / "real",
        tmp_path / "link",
        tmp_path / "link" / "not" / "made" / "yet",
        tmp_path / "dangling",
        tmp_path / "dangling" / "below",
        tmp_path / "link" / ".." / "real",
        tmp_path / "file" / "below",
        Path("/"),
    ]
    for path in cases:
        assert files.canonical_sync(path) == path.resolve(), path
