#!/usr/bin/env bash
# Builds the pipeline container image from the repository's Containerfile on a machine that
# cannot pull base images (no registry, no Docker engine), with Debian's own tools:
#
#   1. mmdebstrap makes a minimal Debian bookworm root file system from Debian's archive
#      (minbase; like debian:bookworm-slim, dpkg leaves out manuals, documentation but the
#      copyright files, and translations, also for the packages installed later) and buildah
#      imports it as the base image (localhost/pipeline-base:bookworm; reused when it
#      exists already);
#   2. `buildah bud --target runtime` runs the Containerfile's `runtime` stage on that base
#      (apt-get installs the PostgreSQL client tools etc., the user, volumes, entrypoint);
#   3. the binary built outside the image (default target/release/pipeline: `cargo build
#      --release` first) is copied in, the result committed as localhost/pipeline:TAG, and
#      `pipeline --version` is run inside it as the image's user.
#
# With a registry at hand, `podman build -f Containerfile .` (or docker) builds the same
# image from source through the Containerfile's `build` stage instead.
#
#   deploy/build-image.sh [--binary PATH] [--pg-major N] [--tag TAG] [--extra "PKG ..."]
#                         [--oci-archive FILE]
#
# Needs root (or a user namespace buildah can use), buildah and mmdebstrap
# (apt-get install buildah mmdebstrap), and Debian's archive. Runs buildah with the vfs
# storage driver and chroot isolation, which work without overlayfs or a container runtime.
# Safe to run again: the base is reused, the image tags are replaced, and the working
# containers and temporary files are removed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=target/release/pipeline
pg_major=15
tag=""
extra=""
oci_archive=""
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }
say() { printf '\n==> %s\n' "$*"; }

while (($#)); do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --pg-major) pg_major=${2:?--pg-major needs a number}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --extra) extra=${2?--extra needs a list}; shift 2 ;;
    --oci-archive) oci_archive=${2:?--oci-archive needs a file}; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done
[[ $pg_major =~ ^[0-9]+$ ]] || die "--pg-major must be a number, got \`$pg_major\`"

for tool in buildah mmdebstrap; do
  command -v "$tool" >/dev/null || die "\`$tool\` is not installed: apt-get install buildah mmdebstrap"
done
[ -f "$binary" ] && [ -x "$binary" ] \
  || die "no executable pipeline binary at \`$binary\`: run \`cargo build --release\` first, or pass --binary PATH"
version_line=$("$binary" --version) || die "\`$binary --version\` failed: is it a pipeline binary for this machine?"
version=${version_line##* }
[ -n "$tag" ] || tag=$version
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

buildah=(buildah --storage-driver vfs)
base_image=localhost/pipeline-base:$suite
runtime_image=localhost/pipeline-runtime:pg$pg_major
image=localhost/pipeline:$tag

work=$(mktemp -d "${TMPDIR:-/tmp}/pipeline-image.XXXXXX")
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do "${buildah[@]}" rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if "${buildah[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
  say "base $base_image exists: reusing it (buildah --storage-driver vfs rmi $base_image to remake it)"
else
  say "making a minimal Debian $suite root file system with mmdebstrap ($mirror)"
  mmdebstrap --quiet --variant=minbase --mode=root --include=ca-certificates \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt "$1"/var/log/dpkg.log' \
    "$suite" "$work/rootfs.tar" "$mirror" \
    || die "mmdebstrap could not make the $suite root file system (is $mirror reachable?)"
  say "importing it as $base_image"
  ctr=$("${buildah[@]}" from --name pipeline-base-work scratch)
  containers+=("$ctr")
  "${buildah[@]}" add "$ctr" "$work/rootfs.tar" / >/dev/null
  "${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash --label "org.opencontainers.image.description=Debian $suite minbase (mmdebstrap)" "$ctr"
  "${buildah[@]}" commit --quiet --rm "$ctr" "$base_image" >/dev/null
  containers=()
  rm -f "$work/rootfs.tar"
fi

say "building the Containerfile's runtime stage (PG_MAJOR=$pg_major${extra:+, EXTRA_PACKAGES=$extra})"
# The runtime stage copies nothing from the build context: an empty one spares sending the
# repository (and target/) to buildah.
mkdir "$work/context"
"${buildah[@]}" bud --isolation chroot --pull=never --layers=false \
  --target runtime -f Containerfile -t "$runtime_image" \
  --build-arg BASE="$base_image" --build-arg PG_MAJOR="$pg_major" \
  --build-arg EXTRA_PACKAGES="$extra" --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" \
  "$work/context" || die "buildah bud failed (above: which step)"

say "adding $binary ($version_line) as /usr/local/bin/pipeline"
ctr=$("${buildah[@]}" from --pull=never --name pipeline-image-work "$runtime_image")
containers+=("$ctr")
"${buildah[@]}" copy --chown 0:0 --chmod 0755 "$ctr" "$binary" /usr/local/bin/pipeline >/dev/null
"${buildah[@]}" config --label org.opencontainers.image.version="$version" \
  --label org.opencontainers.image.revision="$revision" "$ctr"
inside=$("${buildah[@]}" run --isolation chroot "$ctr" -- pipeline --version) \
  || die "\`pipeline --version\` failed inside the image"
user=$("${buildah[@]}" run --isolation chroot "$ctr" -- id -u)
pg_dump_version=$("${buildah[@]}" run --isolation chroot "$ctr" -- pg_dump --version)
[ "$user" = 10001 ] || die "the image runs as uid $user, not 10001"
"${buildah[@]}" commit --quiet --rm "$ctr" "$image" >/dev/null
containers=()

if [ -n "$oci_archive" ]; then
  say "writing $oci_archive (skopeo copy oci-archive:$oci_archive docker://REGISTRY/pipeline:$tag to publish)"
  rm -f "$oci_archive"
  "${buildah[@]}" push --quiet "$image" "oci-archive:$oci_archive:pipeline:$tag"
fi

size=$("${buildah[@]}" images --format '{{.Size}}' "$image" | head -n 1)
say "built $image ($size)"
echo "inside: $inside (uid $user); $pg_dump_version"
