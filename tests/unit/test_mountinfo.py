"""mountinfo parsing on captured text: optional fields, octal escapes, bind roots, ro."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aiocsi.host.mount import MountEntry, parse_mountinfo, read_mounts

# Captured-style lines: optional fields (none, one, two), a kubelet volume path with a space,
# a read-only bind of a subdirectory (its root is not "/"), every character the kernel
# escapes (space, tab, newline, backslash), and a raw non-ASCII name.
SAMPLE = r"""22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard,errors=remount-ro
105 27 7:3 / /var/lib/kubelet/pods/p1/my\040vol rw,noatime shared:50 master:2 - ext4 /dev/loop3 rw
106 27 254:0 /srv/pool/data /mnt/ro-bind ro,relatime - ext4 /dev/vda rw,discard
107 27 0:45 / /mnt/tab\011nl\012bs\134end rw - tmpfs my\040src rw,size=1024k
108 27 0:46 / /mnt/café rw,relatime propagate_from:1 unbindable - tmpfs none ro
"""


def _by_point(entries: list[MountEntry]) -> dict[str, MountEntry]:
    return {entry.mount_point: entry for entry in entries}


def test_parses_every_line_in_order() -> None:
    entries = parse_mountinfo(SAMPLE)
    assert [entry.mount_id for entry in entries] == [22, 27, 105, 106, 107, 108]


def test_fields_around_optional_fields() -> None:
    entry = _by_point(parse_mountinfo(SAMPLE))["/var/lib/kubelet/pods/p1/my vol"]
    assert entry == MountEntry(
        mount_id=105,
        parent_id=27,
        major_minor="7:3",
        root="/",
        mount_point="/var/lib/kubelet/pods/p1/my vol",
        options=frozenset({"rw", "noatime"}),
        fs_type="ext4",
        source="/dev/loop3",
        super_options=frozenset({"rw"}),
    )


def test_bind_mount_keeps_its_root_and_is_read_only() -> None:
    entry = _by_point(parse_mountinfo(SAMPLE))["/mnt/ro-bind"]
    assert entry.root == "/srv/pool/data"
    assert entry.read_only
    assert "rw" in entry.super_options


def test_octal_escapes_in_mount_point_and_source() -> None:
    entry = parse_mountinfo(SAMPLE)[4]
    assert entry.mount_point == "/mnt/tab\tnl\nbs\\end"
    assert entry.source == "my src"
    assert entry.super_options == frozenset({"rw", "size=1024k"})


def test_read_only_is_the_per_mount_flag() -> None:
    # Superblock "ro" with a per-mount "rw": the mount itself is not the read-only one.
    entries = _by_point(parse_mountinfo(SAMPLE))
    assert not entries["/mnt/café"].read_only
    assert not entries["/"].read_only


def test_non_ascii_escape_round_trips_to_bytes() -> None:
    line = "9 1 0:1 / /mnt/\\377x rw - tmpfs none rw"
    (entry,) = parse_mountinfo(line)
    assert entry.mount_point.encode(errors="surrogateescape") == b"/mnt/\xffx"


def _kernel_escape(text: str) -> str:
    return "".join(f"\\{ord(ch):03o}" if ch in " \t\n\\" else ch for ch in text)


@given(
    point=st.text(st.characters(exclude_categories=["Cs"]), min_size=1),
    optional=st.lists(st.sampled_from(["shared:1", "master:7", "unbindable"]), max_size=3),
)
def test_any_escaped_mount_point_round_trips(point: str, optional: list[str]) -> None:
    line = " ".join(["1", "0", "8:1", "/", _kernel_escape(point), "rw", *optional, "-", "xfs"])
    (entry,) = parse_mountinfo(f"{line} /dev/sda1 rw\n")
    assert entry.mount_point == point
    assert entry.fs_type == "xfs"


def test_reads_this_process_mounts() -> None:
    entries = read_mounts()
    assert "/" in {entry.mount_point for entry in entries}
    assert all(entry.fs_type for entry in entries)


def test_lines_that_may_show_a_use_of_a_loop_device() -> None:
    from aiocsi.host.sysfs import mountinfo_line_of_use  # noqa: PLC0415 - the helper under test

    binds = [
        "120 27 0:5 /loop3 /var/lib/kubelet/t/blk rw,nosuid - devtmpfs udev rw",
        "121 27 0:5 /loop7 /var/lib/kubelet/t/other rw,nosuid - devtmpfs udev rw",
    ]
    lines = [*SAMPLE.splitlines(), *binds]
    used = [line for line in lines if mountinfo_line_of_use(line, {"/dev/loop3"})]
    # The mount of loop3 (not of loop33, not a path merely containing it) and the bind of
    # a node named loop3; which device a node really is, a stat tells later.
    assert [line.split()[0] for line in used] == ["105", "120"]
    assert not [line for line in lines if mountinfo_line_of_use(line, {"/dev/loop33"})]
