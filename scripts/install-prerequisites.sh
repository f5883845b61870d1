#!/usr/bin/env bash
# Installs what building and testing pipeline needs on a Debian machine with rustup, and
# nothing that is already there: the wasm32-wasip2 Rust target (first-party plugins are
# built for it), PostgreSQL server and client binaries, zstd, rclone, git, gnupg, age and
# what git2 builds with (a C compiler, pkg-config, OpenSSL headers), s3s-fs and moto's S3
# server. Safe to run again.
set -euo pipefail

missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v sha256sum >/dev/null || missing+=(coreutils)
{ command -v runuser || [ -x /usr/sbin/runuser ] || [ -x /sbin/runuser ]; } >/dev/null || missing+=(util-linux)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
# The WebDAV tests run the example plugin against `rclone serve webdav`.
command -v rclone >/dev/null || missing+=(rclone)
# Snapshot pipelines: git2 (libgit2 built from source, linked to the system's OpenSSL),
# and the snapshot tests' real git and gpg.
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
command -v git >/dev/null || missing+=(git)
command -v gpg >/dev/null || missing+=(gnupg)
command -v gpgconf >/dev/null || missing+=(gnupg)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
# moto's S3 server (below) comes from PyPI.
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# The encryption tests decrypt with the standard age tool (and make keys with age-keygen).
{ command -v age && command -v age-keygen; } >/dev/null || missing+=(age)
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
# The Object Lock tests run moto's S3 server, which enforces Object Lock (s3s-fs does not),
# and look at the bucket with boto3 (a dependency of moto).
if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
  python3 -m pip install --quiet 'moto[server]==5.2.1' \
    || python3 -m pip install --quiet --break-system-packages 'moto[server]==5.2.1'
fi
