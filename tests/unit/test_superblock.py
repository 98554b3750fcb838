"""Superblock parsing and the grow predictions, on superblocks built byte by byte.

tests/system/test_host.py checks the same predictions against real mke2fs, resize2fs,
xfs_growfs and btrfs on loop devices.
"""

from __future__ import annotations

import struct

import pytest

from aiocsi.host import superblock

MIB = 1024 * 1024
PAGE = 4096


def ext4_superblock(
    *,
    blocks: int,
    log_block_size: int = 2,
    first_data_block: int = 0,
    blocks_per_group: int = 32768,
    inodes_per_group: int = 8192,
    inode_size: int = 256,
    reserved_gdt: int = 127,
    desc_size: int = 64,
    incompat: int = 0x80,  # 64bit
    ro_compat: int = 0x1,  # sparse_super
    compat: int = 0,
    rev_level: int = 1,
    backup_bgs: tuple[int, int] = (0, 0),
) -> bytes:
    raw = bytearray(1024)
    struct.pack_into("<I", raw, 0x04, blocks & 0xFFFFFFFF)
    struct.pack_into("<I", raw, 0x14, first_data_block)
    struct.pack_into("<I", raw, 0x18, log_block_size)
    struct.pack_into("<I", raw, 0x20, blocks_per_group)
    struct.pack_into("<I", raw, 0x28, inodes_per_group)
    struct.pack_into("<H", raw, 0x38, 0xEF53)
    struct.pack_into("<I", raw, 0x4C, rev_level)
    struct.pack_into("<H", raw, 0x58, inode_size)
    struct.pack_into("<III", raw, 0x5C, compat, incompat, ro_compat)
    struct.pack_into("<H", raw, 0xCE, reserved_gdt)
    struct.pack_into("<H", raw, 0xFE, desc_size)
    struct.pack_into("<I", raw, 0x150, blocks >> 32)
    struct.pack_into("<II", raw, 0x24C, *backup_bgs)
    return bytes(raw)


def test_parse_ext4_64bit() -> None:
    geo = superblock.parse_ext4(ext4_superblock(blocks=(5 << 32) + 7))
    assert geo.blocks == (5 << 32) + 7
    assert geo.block_size == 4096
    assert geo.inode_blocks_per_group == 8192 * 256 // 4096
    assert geo.descs_per_block == 4096 // 64
    assert (geo.sparse_super, geo.sparse_super2) == (True, False)


def test_parse_ext4_without_64bit_and_revision_0() -> None:
    raw = ext4_superblock(blocks=(5 << 32) + 7, incompat=0, rev_level=0, log_block_size=0)
    geo = superblock.parse_ext4(raw)
    assert geo.blocks == 7, "the high word only counts with the 64bit feature"
    assert geo.block_size == 1024
    assert geo.descs_per_block == 1024 // 32
    assert geo.inode_blocks_per_group == 8192 * 128 // 1024


def test_parse_ext4_refuses_another_magic() -> None:
    with pytest.raises(ValueError, match="not an ext2/3/4 superblock"):
        superblock.parse_ext4(bytes(1024))


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (0, True),
        (1, True),
        (2, False),
        (3, True),
        (5, True),
        (7, True),
        (8, False),
        (9, True),
        (15, False),
        (25, True),
        (27, True),
        (49, True),
        (50, False),
        (63, False),
    ],
)
def test_sparse_super_backups(group: int, expected: bool) -> None:
    geo = superblock.parse_ext4(ext4_superblock(blocks=1))
    assert geo.has_backup(group, group + 1) is expected


def test_every_group_has_a_backup_without_sparse_super() -> None:
    geo = superblock.parse_ext4(ext4_superblock(blocks=1, ro_compat=0))
    assert all(geo.has_backup(g, g + 1) for g in range(2, 40))


def test_sparse_super2_backups_are_listed() -> None:
    geo = superblock.parse_ext4(ext4_superblock(blocks=1, compat=0x200, backup_bgs=(1, 0)))
    assert geo.has_backup(1, 2)
    assert not geo.has_backup(8, 9)


# 4 KiB blocks, 32768 blocks (128 MiB) per group, 512 inode-table blocks per group: a new
# last group without a superblock backup needs 2 + 512 + 50 blocks to be kept.
@pytest.mark.parametrize(
    ("blocks", "device_bytes", "after"),
    [
        (262144, 1024 * MIB, 262144),  # as large as the device
        (262144, 1026 * MIB, 262144),  # 512 blocks into group 8: dropped
        (262144, 1027 * MIB, 262912),  # 768 blocks: kept
        (262144, 1024 * MIB + 1000, 262144),  # less than a block
        (262144 + 100, 1030 * MIB, 263680),  # a partial last group grows by any amount
        (262144, 1280 * MIB, 327680),  # whole groups
    ],
)
def test_ext4_blocks_after_grow(blocks: int, device_bytes: int, after: int) -> None:
    geo = superblock.parse_ext4(ext4_superblock(blocks=blocks))
    assert superblock.ext4_blocks_after_grow(geo, device_bytes, PAGE) == after


def test_ext4_group_with_a_backup_needs_more_room() -> None:
    # Group 9 holds a backup: 1 + 1 descriptor block + 127 reserved blocks more overhead.
    nine_groups = 9 * 32768
    geo = superblock.parse_ext4(ext4_superblock(blocks=nine_groups))
    without_backup_room = (nine_groups + 600) * 4096
    assert superblock.ext4_blocks_after_grow(geo, without_backup_room, PAGE) == nine_groups
    enough = (nine_groups + 2 + 512 + 1 + 1 + 127 + 50) * 4096
    assert superblock.ext4_blocks_after_grow(geo, enough, PAGE) > nine_groups


def test_ext4_device_size_is_rounded_down_to_pages() -> None:
    # 1 KiB blocks, first data block 1, 8192 blocks per group, the last group half full:
    # any growth is kept, but only in whole pages of four blocks.
    geo = superblock.parse_ext4(
        ext4_superblock(
            blocks=12288,
            log_block_size=0,
            first_data_block=1,
            blocks_per_group=8192,
            inodes_per_group=2048,
        )
    )
    assert superblock.ext4_blocks_after_grow(geo, (12288 + 3) * 1024, PAGE) == 12288
    assert superblock.ext4_blocks_after_grow(geo, (12288 + 4) * 1024, PAGE) == 12292


def xfs_superblock(*, block_size: int = 4096, data_blocks: int, ag_blocks: int) -> bytes:
    raw = bytearray(512)
    raw[:4] = b"XFSB"
    struct.pack_into(">IQ", raw, 4, block_size, data_blocks)
    struct.pack_into(">I", raw, 84, ag_blocks)
    return bytes(raw)


@pytest.mark.parametrize(
    ("device_blocks", "expected"),
    [(76800, False), (76800 + 63, False), (76800 + 64, True), (80000, True)],
)
def test_xfs_can_grow(device_blocks: int, expected: bool) -> None:
    # 4 allocation groups of 19200 blocks; a new one under 64 blocks is left unused.
    raw = xfs_superblock(data_blocks=76800, ag_blocks=19200)
    assert superblock.can_grow("xfs", raw, device_blocks * 4096, PAGE) is expected


def test_xfs_partial_last_group_grows() -> None:
    raw = xfs_superblock(data_blocks=76800 + 100, ag_blocks=19200)
    assert superblock.xfs_can_grow(raw, (76800 + 110) * 4096)


def btrfs_superblock(*, sector_size: int = 4096, device_total: int) -> bytes:
    raw = bytearray(4096)
    raw[0x40:0x48] = b"_BHRfS_M"
    struct.pack_into("<I", raw, 0x90, sector_size)
    struct.pack_into("<QQ", raw, 0xC9, 1, device_total)
    return bytes(raw)


@pytest.mark.parametrize(
    ("device_bytes", "expected"),
    [(256 * MIB, False), (256 * MIB + 4095, False), (256 * MIB + 4096, True)],
)
def test_btrfs_can_grow_by_whole_sectors(device_bytes: int, expected: bool) -> None:
    raw = btrfs_superblock(device_total=256 * MIB)
    assert superblock.can_grow("btrfs", raw, device_bytes, PAGE) is expected


@pytest.mark.parametrize("fs_type", ["xfs", "btrfs"])
def test_other_magics_are_refused(fs_type: str) -> None:
    with pytest.raises(ValueError, match=f"not an? {fs_type} superblock"):
        superblock.can_grow(fs_type, bytes(4096), MIB, PAGE)


def test_unsupported_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        superblock.can_grow("vfat", bytes(4096), MIB, PAGE)
