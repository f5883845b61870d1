#!/usr/bin/env bash
# Installs what building and testing pipeline needs on a Debian machine with rustup, and
# nothing that is already there: the wasm32-wasip2 Rust target (first-party plugins are
# built for it), PostgreSQL server and client binaries, zstd. Safe to run again.
set -euo pipefail

missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v sha256sum >/dev/null || missing+=(coreutils)
{ command -v runuser || [ -x /usr/sbin/runuser ] || [ -x /sbin/runuser ]; } >/dev/null || missing+=(util-linux)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
if ((${#missing[@]})); then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
# The S3 tests run against s3s-fs, an S3-compatible server that checks SigV4 signatures.
command -v s3s-fs >/dev/null || cargo install s3s-fs --version 0.14.1 --features binary --locked
