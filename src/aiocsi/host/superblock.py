"""How far a filesystem can grow on its device, read from the on-disk superblock.

Reading a few hundred bytes in a thread costs microseconds where `dumpe2fs -h` or
`xfs_db` would cost a process. Each `*_can_grow` answers "would the grow tool add space?"
with the tool's own rounding, so a filesystem that is as large as it can get is never
grown over and over (mke2fs and resize2fs leave a too-small last block group unused).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

# Where each superblock starts on the device, and how many bytes of it to read.
LOCATION: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"ext4": (1024, 1024), "xfs": (0, 512), "btrfs": (64 * 1024, 4096)}
)

_EXT4_MAGIC = 0xEF53
_EXT4_COMPAT_SPARSE_SUPER2 = 0x200
_EXT4_INCOMPAT_64BIT = 0x80
_EXT4_RO_COMPAT_SPARSE_SUPER = 0x1
_EXT4_OLD_INODE_SIZE = 128  # revision 0 filesystems
_EXT4_OLD_DESC_SIZE = 32  # without the 64bit feature
# resize2fs drops a new last group that cannot hold its metadata plus this many blocks.
_EXT4_MIN_GROUP_SLACK = 50
_SPARSE_SUPER2_BACKUPS = 2
# Groups 0 and 1 always hold a superblock backup; with sparse_super, so do powers of these.
_SPARSE_SUPER_BASES = (3, 5, 7)

_XFS_MAGIC = b"XFSB"
# xfs_growfs leaves a new last allocation group unused below this many blocks.
_XFS_MIN_AG_BLOCKS = 64

_BTRFS_MAGIC = b"_BHRfS_M"
_BTRFS_DEV_ITEM = 0xC9


def _u16(raw: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", raw, offset)[0])


def _u32(raw: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", raw, offset)[0])


def _u64(raw: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", raw, offset)[0])


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Ext4Geometry:
    """The fields of an ext2/3/4 superblock that decide how resize2fs grows it."""

    block_size: int
    blocks: int
    first_data_block: int
    blocks_per_group: int
    inode_blocks_per_group: int
    descs_per_block: int
    reserved_gdt_blocks: int
    sparse_super: bool
    sparse_super2: bool
    backup_groups: tuple[int, int]

    def has_backup(self, group: int, groups: int) -> bool:
        """Whether `group`, the last of `groups`, carries a superblock backup (resize2fs's view)."""
        if self.sparse_super2:
            # Up to two backups; resize2fs looks at the first while there are two groups.
            first_or_second = 0 if groups == _SPARSE_SUPER2_BACKUPS else 1
            return self.backup_groups[first_or_second] != 0
        if group <= 1 or not self.sparse_super:
            return True
        return group % 2 == 1 and any(_is_power_of(group, b) for b in _SPARSE_SUPER_BASES)


def _is_power_of(value: int, base: int) -> bool:
    while value % base == 0:
        value //= base
    return value == 1


def parse_ext4(raw: bytes) -> Ext4Geometry:
    """Parse the 1024-byte superblock found at byte 1024 of an ext2/3/4 device."""
    if _u16(raw, 0x38) != _EXT4_MAGIC:
        raise ValueError("not an ext2/3/4 superblock")
    compat, incompat, ro_compat = _u32(raw, 0x5C), _u32(raw, 0x60), _u32(raw, 0x64)
    block_size = 1024 << _u32(raw, 0x18)
    blocks = _u32(raw, 0x04)
    desc_size = _EXT4_OLD_DESC_SIZE
    if incompat & _EXT4_INCOMPAT_64BIT:
        blocks |= _u32(raw, 0x150) << 32
        desc_size = _u16(raw, 0xFE) or _EXT4_OLD_DESC_SIZE
    inode_size = _u16(raw, 0x58) if _u32(raw, 0x4C) else _EXT4_OLD_INODE_SIZE
    return Ext4Geometry(
        block_size=block_size,
        blocks=blocks,
        first_data_block=_u32(raw, 0x14),
        blocks_per_group=_u32(raw, 0x20),
        inode_blocks_per_group=_ceil_div(_u32(raw, 0x28) * inode_size, block_size),
        descs_per_block=block_size // desc_size,
        reserved_gdt_blocks=_u16(raw, 0xCE),
        sparse_super=bool(ro_compat & _EXT4_RO_COMPAT_SPARSE_SUPER),
        sparse_super2=bool(compat & _EXT4_COMPAT_SPARSE_SUPER2),
        backup_groups=(_u32(raw, 0x24C), _u32(raw, 0x250)),
    )


def ext4_blocks_after_grow(geo: Ext4Geometry, device_bytes: int, page_size: int) -> int:
    """The block count resize2fs would give the filesystem on a device of `device_bytes`.

    Mirrors resize2fs 1.47 (main.c and adjust_fs_info): the device size rounded down to
    whole pages, then a last group too small for its own metadata dropped.
    """
    new = device_bytes // geo.block_size
    if page_size > geo.block_size:
        new -= new % (page_size // geo.block_size)
    while new > geo.first_data_block:
        span = new - geo.first_data_block
        groups = _ceil_div(span, geo.blocks_per_group)
        rem = span % geo.blocks_per_group
        if not rem:
            return new
        overhead = 2 + geo.inode_blocks_per_group
        if geo.has_backup(groups - 1, groups):
            desc_blocks = _ceil_div(groups, geo.descs_per_block)
            overhead += 1 + desc_blocks + geo.reserved_gdt_blocks
        if groups == 1:
            # resize2fs refuses ("too small") rather than dropping the only group.
            return new if rem >= overhead else geo.blocks
        if rem >= overhead + _EXT4_MIN_GROUP_SLACK:
            return new
        new -= rem
    return geo.blocks


def ext4_can_grow(raw: bytes, device_bytes: int, page_size: int) -> bool:
    geo = parse_ext4(raw)
    return ext4_blocks_after_grow(geo, device_bytes, page_size) > geo.blocks


def xfs_can_grow(raw: bytes, device_bytes: int) -> bool:
    """Whether xfs_growfs would add blocks; xfs keeps its superblock big-endian."""
    if raw[:4] != _XFS_MAGIC:
        raise ValueError("not an xfs superblock")
    block_size, data_blocks = struct.unpack_from(">IQ", raw, 4)
    (ag_blocks,) = struct.unpack_from(">I", raw, 84)
    new = device_bytes // block_size
    tail = new % ag_blocks
    if tail and tail < _XFS_MIN_AG_BLOCKS:
        new -= tail
    return bool(new > data_blocks)


def btrfs_can_grow(raw: bytes, device_bytes: int) -> bool:
    """Whether `btrfs filesystem resize max` would grow this device of the filesystem."""
    if raw[0x40:0x48] != _BTRFS_MAGIC:
        raise ValueError("not a btrfs superblock")
    sector_size = _u32(raw, 0x90)
    # The superblock's own device item: the size this device contributes.
    device_total = _u64(raw, _BTRFS_DEV_ITEM + 8)
    return device_bytes // sector_size * sector_size > device_total


def can_grow(fs_type: str, raw: bytes, device_bytes: int, page_size: int) -> bool:
    """Whether growing the filesystem whose superblock is `raw` would add space.

    `raw` holds the bytes read at `LOCATION[fs_type]`; `page_size` is the system's.
    """
    match fs_type:
        case "ext4":
            return ext4_can_grow(raw, device_bytes, page_size)
        case "xfs":
            return xfs_can_grow(raw, device_bytes)
        case "btrfs":
            return btrfs_can_grow(raw, device_bytes)
        case _:
            raise ValueError(f"unsupported filesystem type {fs_type!r}")


def size_bytes(fs_type: str, raw: bytes) -> int:
    """The bytes of its device the filesystem whose superblock is `raw` spans."""
    match fs_type:
        case "ext4":
            geo = parse_ext4(raw)
            return geo.blocks * geo.block_size
        case "xfs":
            if raw[:4] != _XFS_MAGIC:
                raise ValueError("not an xfs superblock")
            block_size, data_blocks = struct.unpack_from(">IQ", raw, 4)
            return int(block_size * data_blocks)
        case "btrfs":
            if raw[0x40:0x48] != _BTRFS_MAGIC:
                raise ValueError("not a btrfs superblock")
            return _u64(raw, _BTRFS_DEV_ITEM + 8)
        case _:
            raise ValueError(f"unsupported filesystem type {fs_type!r}")
