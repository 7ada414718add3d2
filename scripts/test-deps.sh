#!/usr/bin/env bash
# Installs what the test suite needs when it is missing, from Debian:
# ZooKeeper 3.8 (and its Java runtime; Netty for its TLS port comes with
# it), etcd-server (an external etcd for the store tests), qemu-utils
# (qemu-nbd, qemu-img, qemu-io), nbdkit, iproute2 (network namespaces for the
# VIP tests), systemd (systemd-analyze checks the unit's hardening) and
# util-linux (unshare runs taskd under the unit's restrictions), mount
# (losetup: a loop block device for the copy plan's test) and chromium
# (the web console's end-to-end tests drive it headless).
# With --bench it also installs what the copy benchmark compares against:
# nbdcopy (libnbd-bin) and rsync; with --chaos, nftables (partitions in the
# fault-injection suite).
# Safe to run repeatedly; does nothing when all is present. Under CI=true a
# missing component the tests need makes them fail, never skip, so an install
# failure here surfaces as a test failure.
set -euo pipefail

need=()
[ -f /usr/share/java/zookeeper.jar ] && [ -f /usr/share/java/netty-codec.jar ] && command -v java >/dev/null || need+=(zookeeper)
command -v etcd >/dev/null || need+=(etcd-server)
command -v qemu-nbd >/dev/null && command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || need+=(qemu-utils)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v ip >/dev/null || need+=(iproute2)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v unshare >/dev/null || need+=(util-linux)
command -v losetup >/dev/null || need+=(mount)   # a loop block device for the copy plan's test
[ -x /usr/bin/python3 ] || need+=(python3)   # the exec type's Python example
command -v chromium >/dev/null || need+=(chromium)
if [ "${1:-}" = "--chaos" ]; then
  command -v nft >/dev/null || need+=(nftables)
fi
if [ "${1:-}" = "--bench" ]; then
  command -v nbdcopy >/dev/null || need+=(libnbd-bin)
  command -v rsync >/dev/null || need+=(rsync)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "test-deps: installing ${need[*]}"
if [ "$(id -u)" -ne 0 ]; then
  sudo=sudo
  command -v sudo >/dev/null || { echo "test-deps: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
else
  sudo=
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "test-deps: installed ${need[*]}"
