#!/usr/bin/env bash
# Installs what building and testing Meridian needs on a Debian machine,
# and nothing that is already there. Safe to run again.
#   - libclang-dev: bindgen for RocksDB's bindings (librocksdb-sys)
#   - protobuf-compiler: protoc for raft-rs's protos (raft-proto)
#   - etcd-client: etcdctl, for the etcd compatibility tests
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# libclang itself (libclang.so*, libclang-NN.so*), not libclang-cpp, which
# other packages pull in and bindgen cannot use.
if ! compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
  && ! compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null \
  && ! ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so'; then
  missing+=(libclang-dev)
fi
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v make >/dev/null 2>&1 || missing+=(make)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp" >/dev/null 2>&1 || echo "setup: could not add $comp" >&2
  fi
done
echo "setup: ok"
