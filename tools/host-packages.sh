#!/usr/bin/env bash
# Install the host tools aiocsi drives (blkid, mkfs.*, e2fsck, resize tools), and those the
# tests and the bench's raw ceiling run (losetup, mount, umount), when any is missing. Idempotent: does nothing when all are present. Needs root and apt-get.
set -euo pipefail

declare -A package_of=(
  [losetup]=mount [mount]=mount [umount]=mount [blkid]=util-linux
  [mkfs.ext4]=e2fsprogs [e2fsck]=e2fsprogs [resize2fs]=e2fsprogs
  [mkfs.xfs]=xfsprogs [xfs_growfs]=xfsprogs
  [mkfs.btrfs]=btrfs-progs [btrfs]=btrfs-progs
)
missing=()
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing host packages: ${missing[*]} (install them as root)" >&2
  exit 1
fi
mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing host packages: ${unique[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${unique[@]}" >/dev/null
