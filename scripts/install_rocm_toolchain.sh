#!/usr/bin/env bash
# Installs what compiles csrc/hip for gfx942 on a machine without ROCm (Debian 12/13, CI) and
# builds the device-library folder workaround from shared/rocm-notes.md. Idempotent.
# Usage: bash scripts/install_rocm_toolchain.sh [DEVICE_LIB_DIR]   (default: $HOME/.cache/amd-llama4/rocm-device-libs)
# Prints the device-library folder on its last line; scripts/compile_hip.sh finds it by itself.
set -euo pipefail

PKGS=(clang-19 lld-19 llvm-19 clang-tools-19 libamdhip64-dev rocm-device-libs)
DEVLIB="${1:-${AMD_LLAMA4_DEVICE_LIBS:-${HOME:-/root}/.cache/amd-llama4/rocm-device-libs}}"
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# Debian's ROCm 5.2 device libraries stop at gfx940: a folder of links to all of them plus a
# generated oclc_isa_version_942.bc lets clang-19 --offload-arch=gfx942 link its device code.
SRC="$(dirname "$(dpkg -L rocm-device-libs | grep '/ockl\.bc$' | head -1)")"
mkdir -p "$DEVLIB"
for f in "$SRC"/*.bc; do
  ln -sf "$f" "$DEVLIB/$(basename "$f")"
done
if [ ! -s "$DEVLIB/oclc_isa_version_942.bc" ] || [ -L "$DEVLIB/oclc_isa_version_942.bc" ]; then
  tmp="$(mktemp -d)"
  cat >"$tmp/isa942.ll" <<'LL'
target datalayout = "e-p:64:64-p1:64:64-p2:32:32-p3:32:32-p4:64:64-p5:32:32-p6:32:32-p7:160:256:256:32-p8:128:128-p9:192:256:256:32-i64:64-v16:16-v24:32-v32:32-v48:64-v96:128-v192:256-v256:256-v512:512-v1024:1024-v2048:2048-n32:64-S32-A5-G1-ni:7:8:9"
target triple = "amdgcn-amd-amdhsa"
@__oclc_ISA_version = linkonce_odr protected local_unnamed_addr addrspace(4) constant i32 9402, align 4
LL
  llvm-as-19 "$tmp/isa942.ll" -o "$DEVLIB/oclc_isa_version_942.bc"
  rm -rf "$tmp"
fi
echo "$DEVLIB"
