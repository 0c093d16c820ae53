#!/usr/bin/env bash
# Everything ebpf-leak needs on a bare Debian 12 machine, then the build. Safe to run again: it
# installs only what is missing and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# clang/llvm: compile and strip the BPF program; bpftool: vmlinux.h and the skeleton;
# libbpf-dev: libbpf.a, linked into the addon; libelf/libdw/zlib: ELF and DWARF reading;
# libzydis-dev: the x86-64 decoder of probe placement;
# cmake/g++/make/pkg-config: the addon; valgrind: the test oracle; binutils (objcopy, strip,
# addr2line), xz-utils and dwz: the symbolizer's tests build stripped, MiniDebugInfo and dwz files;
# libjemalloc2, libtcmalloc-minimal4, libmimalloc2.0: the tests of the allocators traced without
# being named (the fixtures link them by file name, so no -dev packages).
# libbz2-dev/liblzma-dev: the static archives of what libdw decompresses with (the portable build,
# cmake/portable.cmake); debootstrap: the test that installs the packed package into a bare Debian.
# g++-aarch64-linux-gnu and the :arm64 -dev packages (multiarch, beside the amd64 ones): the
# linux-arm64 binaries, cross-compiled (cmake/aarch64-linux-gnu.cmake).
packages=(clang llvm bpftool libbpf-dev libelf-dev libdw-dev libzydis-dev zlib1g-dev libbz2-dev liblzma-dev
  pkg-config cmake make g++ binutils xz-utils dwz valgrind python3 ca-certificates libjemalloc2
  libtcmalloc-minimal4 libmimalloc2.0 debootstrap
  g++-aarch64-linux-gnu libbpf-dev:arm64 libelf-dev:arm64 libdw-dev:arm64 zlib1g-dev:arm64 libbz2-dev:arm64
  liblzma-dev:arm64)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: these Debian packages are missing: ${missing[*]}; run this script as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
npm run --silent build:arm64
