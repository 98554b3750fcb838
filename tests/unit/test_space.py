"""The budget formula, kernel-log parsing and disk-full detection (no root needed)."""

from __future__ import annotations

import errno
from pathlib import Path

from aiocsi.engine.budget import PoolBudget, PoolSpace, out_of_space
from aiocsi.engine.host_errors import is_io_error, is_no_space
from aiocsi.errors import CommandFailed
from aiocsi.host import fserrors
from aiocsi.host.syscalls import SystemCallFailed
from aiocsi.state.store import OverBudget

MiB = 1024 * 1024


def test_offer_is_free_space_less_what_sparse_images_may_still_take() -> None:
    space = PoolSpace(
        total=100 * MiB, free=60 * MiB, provisioned=50 * MiB, allocated=10 * MiB, foreign=30 * MiB
    )
    assert space.unallocated == 40 * MiB
    assert space.offer(1.0) == 20 * MiB
    assert space.offer(2.0) == 80 * MiB
    assert space.offer(2.0, preallocated=True) == 60 * MiB
    # A full pool offers nothing, whatever the overcommit.
    full = PoolSpace(
        total=100 * MiB, free=0, provisioned=50 * MiB, allocated=50 * MiB, foreign=50 * MiB
    )
    assert full.offer(10.0) == 0
    # More allocated than provisioned (preallocation metadata) is no credit.
    over = PoolSpace(total=100 * MiB, free=MiB, provisioned=10, allocated=20, foreign=0)
    assert over.unallocated == 0
    assert over.offer(1.0) == MiB


def test_the_store_check_is_the_offer(tmp_path: Path) -> None:
    """`provisioned + wanted <= overcommit x free + allocated` (the store's check) is
    `wanted <= offered`, and a refusal says the numbers."""
    budget = PoolBudget(tmp_path, 2.0, allocated=10 * MiB)
    value = budget()
    assert budget.free > 0
    assert value == int(budget.free * 2.0) + 10 * MiB
    provisioned = 50 * MiB
    offered = budget.offer(provisioned)
    assert provisioned + offered <= value < provisioned + offered + 2
    refused = budget.exhausted("a volume 'v'", OverBudget(provisioned, offered + MiB, value))
    message = str(refused)
    assert str(tmp_path) in message
    assert str(offered + MiB) in message
    assert f"{offered} bytes are left" in message
    assert f"{budget.free} bytes free" in message
    assert budget.too_big_to_preallocate("x", budget.free) is None
    assert budget.too_big_to_preallocate("x", budget.free + 1) is not None


def test_only_space_errors_are_exhaustion(tmp_path: Path) -> None:
    full = out_of_space("creating volume 'v'", tmp_path, OSError(errno.ENOSPC, "full"))
    assert full is not None
    assert str(tmp_path) in str(full)
    assert "ENOSPC" in str(full)
    quota = out_of_space("x", tmp_path, OSError(errno.EDQUOT, "quota"))
    assert quota is not None
    assert out_of_space("x", tmp_path, OSError(errno.EIO, "io")) is None


def test_parse_record() -> None:
    parsed = fserrors.parse_record(
        b"3,2084,13315976645,-;critical space allocation error, "
        b"dev loop2, sector 1\n SUBSYSTEM=block\n"
    )
    assert parsed == fserrors.KernelRecord(
        level=3, facility=0, text="critical space allocation error, dev loop2, sector 1"
    )
    assert fserrors.parse_record(b"garbage") is None


def test_kernel_log_counts_errors_per_device_since_attach() -> None:
    log = fserrors.KernelLog("/nonexistent")
    records = [
        b"3,1,1,-;critical space allocation error, dev loop2, sector 8 op 0x1:(WRITE)",
        b"0,2,2,-;EXT4-fs (loop2): failed to convert unwritten extents -- potential data loss!",
        b"4,3,3,-;EXT4-fs warning (device loop2): ext4_end_bio:368: I/O error 3",  # warning
        b"6,4,4,-;EXT4-fs (loop20): mounted filesystem",  # info, and another device
        b"3,5,5,-;operation not supported error, dev loop3, sector 1 op 0x9:(WRITE_ZEROES)",
        b"11,6,6,-;loop3 error written by a user process",  # facility 1: not the kernel
    ]
    for record in records:
        log.take(record)
    found = log.errors_of("/dev/loop2")
    assert found is not None
    assert found.count == 2
    assert found.no_space
    assert "potential data loss" in found.last
    assert log.errors_of("/dev/loop20") is None
    assert log.errors_of("/dev/loop3") is None
    log.take(b"6,7,7,-;loop2: detected capacity change from 0 to 2048")
    assert log.errors_of("/dev/loop2") is None
    # Without /dev/kmsg there is nothing to read, and that is said.
    log.drain()
    assert log.unavailable is not None


def test_disk_full_is_recognised_from_every_host_failure() -> None:
    assert is_no_space(OSError(errno.ENOSPC, "full"))
    assert is_no_space(OSError(errno.EDQUOT, "quota"))
    assert not is_no_space(OSError(errno.EIO, "io"))
    assert is_no_space(SystemCallFailed("write", "/x", errno.ENOSPC))
    failed = CommandFailed(["mkfs.ext4"], 1, "mkfs.ext4: No space left on device while ...")
    assert is_no_space(failed)
    io = CommandFailed(["mkfs.ext4"], 1, "mkfs.ext4: Input/output error while writing")
    assert not is_no_space(io)
    assert is_io_error(io)
