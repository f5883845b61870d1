#!/usr/bin/env bash
# files benchmark: `pipeline run pipelines/files.toml` against the shell pipeline an
# operator would write instead,
#
#   tar -cf - -C DIR . | zstd -3 -T0 -q > file
#
# on a generated tree (text and binary files of mixed sizes, directories, links).
# Prints wall times (median of --repeat runs), the throughput ratio (target >= 0.95), the
# size ratio and the pipeline's peak RSS (target < 64 MiB), then restores the pipeline's
# backup with `pipeline restore` and compares the trees. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bench/files.sh [--mib N] [--repeat N] [--strict]

  --mib N      approximate size of the generated tree in MiB (default 256)
  --repeat N   timed runs of each command; the median is reported (default 3)
  --strict     exit 1 if any target is missed (default: report only)

environment:
  PIPELINE_BIN  pipeline binary (default <repo>/target/release/pipeline; built with
                `cargo build --release` if missing)
  TMPDIR        where the tree and outputs live (default /tmp)
USAGE
}

die() { printf 'files.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

MIB=256
REPEAT=3
STRICT=0
while (($#)); do
  case $1 in
    --mib) MIB=${2:-}; shift 2 || die "--mib needs a value" ;;
    --mib=*) MIB=${1#*=}; shift ;;
    --repeat) REPEAT=${2:-}; shift 2 || die "--repeat needs a value" ;;
    --repeat=*) REPEAT=${1#*=}; shift ;;
    --strict) STRICT=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $MIB =~ ^[0-9]+$ ]] && ((MIB >= 1)) || die "--mib must be an integer >= 1 (got '$MIB')"
[[ $REPEAT =~ ^[0-9]+$ ]] && ((REPEAT >= 1)) || die "--repeat must be an integer >= 1 (got '$REPEAT')"

unset LC_ALL
export LC_NUMERIC=C
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
TIME_BIN=/usr/bin/time
FILES=$REPO/pipelines/files.toml
for tool in tar zstd python3; do command -v "$tool" >/dev/null || die "$tool not found"; done
[[ -x $TIME_BIN ]] || die "$TIME_BIN (GNU time) not found: apt-get install time"
[[ -f $FILES ]] || die "$FILES not found"

if [[ -n ${PIPELINE_BIN:-} ]]; then
  [[ -x $PIPELINE_BIN ]] || die "PIPELINE_BIN=$PIPELINE_BIN is not an executable file"
else
  PIPELINE_BIN=$REPO/target/release/pipeline
  if [[ ! -x $PIPELINE_BIN ]]; then
    say "building $PIPELINE_BIN with 'cargo build --release'"
    (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
  fi
fi
"$PIPELINE_BIN" plugins 2>/dev/null | grep -q '^files ' ||
  die "$PIPELINE_BIN has no built-in files plugin (stale binary? rebuild it)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pipeline-bench-files.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
TREE=$WORK/tree
OUT=$WORK/out
STATE=$WORK/state
CACHE=$WORK/cache
mkdir -p "$OUT" "$STATE" "$CACHE"

# ---------------------------------------------------------------- the tree
say "generating a ~${MIB} MiB tree in $TREE"
python3 - "$TREE" "$MIB" <<'PY'
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
random.seed(14)
words = [w.encode() for w in "the of and a to in is you that it he was for on are as with his they at be this have from or one had by word but not what all were we when your can said there use an each which she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part".split()]
budget = mib * 1024 * 1024
n = 0
while budget > 0:
    d = os.path.join(root, f"d{n // 200:03d}", f"s{n % 7}")
    os.makedirs(d, exist_ok=True)
    kind = n % 10
    if kind < 6:    # small text: configs, sources
        size = random.randint(200, 40_000)
    elif kind < 9:  # medium text: logs, documents
        size = random.randint(100_000, 2_000_000)
    else:           # binary: already compressed media
        size = random.randint(200_000, 4_000_000)
    size = min(size, budget)
    path = os.path.join(d, f"f{n:06d}" + (".bin" if kind == 9 else ".txt"))
    with open(path, "wb") as f:
        if kind == 9:
            f.write(os.urandom(size))
        else:
            out = bytearray()
            while len(out) < size:
                out += b" ".join(random.choices(words, k=12)) + b"\n"
            f.write(out[:size])
    os.chmod(path, 0o600 if n % 5 == 0 else 0o644)
    if n % 50 == 0:
        os.symlink(os.path.basename(path), path + ".link")
    budget -= size
    n += 1
print(n, file=sys.stderr)
PY
TREE_BYTES=$(du -sb "$TREE" | cut -f1)
TREE_FILES=$(find "$TREE" -type f | wc -l)
say "tree: $TREE_FILES files, $((TREE_BYTES / 1048576)) MiB; $(nproc) cores"

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

run_shell() {
  rm -f "$OUT/shell.tar.zst"
  local t0=$EPOCHREALTIME
  tar -cf - -C "$TREE" . | zstd -3 -T0 -q > "$OUT/shell.tar.zst"
  printf '%.3f\n' "$(echo "$EPOCHREALTIME - $t0" | bc)"
}

# The same, made durable as the pipeline makes its backup (fsync before it counts):
# what the one-liner costs once it is safe against a crash right after it.
run_shell_synced() {
  rm -f "$OUT/shell.tar.zst"
  local t0=$EPOCHREALTIME
  tar -cf - -C "$TREE" . | zstd -3 -T0 -q > "$OUT/shell.tar.zst" && sync "$OUT/shell.tar.zst"
  printf '%.3f\n' "$(echo "$EPOCHREALTIME - $t0" | bc)"
}

# The same work as the pipeline: durable, and with the SHA-256 of the backup beside it
# (OpenSSL's, which uses the CPU's SHA instructions as the pipeline does; coreutils'
# sha256sum here does not and is ~5x slower).
run_shell_same_work() {
  rm -f "$OUT/shell.tar.zst" "$OUT/shell.tar.zst.sha256"
  local t0=$EPOCHREALTIME
  tar -cf - -C "$TREE" . | zstd -3 -T0 -q | tee "$OUT/shell.tar.zst" |
    openssl dgst -sha256 -r > "$OUT/shell.tar.zst.sha256" &&
    sync "$OUT/shell.tar.zst" "$OUT/shell.tar.zst.sha256"
  printf '%.3f\n' "$(echo "$EPOCHREALTIME - $t0" | bc)"
}

run_pipeline() {
  rm -rf "$OUT/backups" "$STATE"/*
  local t0=$EPOCHREALTIME
  FILES_DIR=$TREE BACKUP_DIR=$OUT/backups PIPELINE_STATE_DIR=$STATE PIPELINE_CACHE_DIR=$CACHE \
    "$TIME_BIN" -f '%M' -o "$OUT/rss" "$PIPELINE_BIN" -q run "$FILES" >/dev/null 2>"$OUT/log" ||
    { cat "$OUT/log" >&2; die "pipeline run failed"; }
  printf '%.3f\n' "$(echo "$EPOCHREALTIME - $t0" | bc)"
  cat "$OUT/rss" >> "$OUT/rss-all"
}

command -v bc >/dev/null || die "bc not found: apt-get install bc"
command -v openssl >/dev/null || die "openssl not found: apt-get install openssl"
# Each timed command starts with nothing left to write back: otherwise a run pays for the
# previous one's dirty pages (the bare one-liner leaves 150 MB of them).
timed() { sync; "$@"; }
# Warm-up (page cache; the components compiled into the cache), untimed.
run_shell >/dev/null
run_pipeline >/dev/null
: > "$OUT/rss-all"
SHELL_T=() SYNCED_T=() SUMMED_T=() PIPE_T=()
for ((i = 0; i < REPEAT; i++)); do
  if ((i % 2)); then
    PIPE_T+=("$(timed run_pipeline)"); SUMMED_T+=("$(timed run_shell_same_work)")
    SYNCED_T+=("$(timed run_shell_synced)"); SHELL_T+=("$(timed run_shell)")
  else
    SHELL_T+=("$(timed run_shell)"); SYNCED_T+=("$(timed run_shell_synced)")
    SUMMED_T+=("$(timed run_shell_same_work)"); PIPE_T+=("$(timed run_pipeline)")
  fi
  say "run $((i + 1)): shell ${SHELL_T[-1]} s, shell+sync ${SYNCED_T[-1]} s, shell+sha256+sync ${SUMMED_T[-1]} s, pipeline ${PIPE_T[-1]} s"
done
SHELL_MED=$(printf '%s\n' "${SHELL_T[@]}" | median)
PIPE_MED=$(printf '%s\n' "${PIPE_T[@]}" | median)
SYNCED_MED=$(printf '%s\n' "${SYNCED_T[@]}" | median)
SUMMED_MED=$(printf '%s\n' "${SUMMED_T[@]}" | median)
SYNCED_RATIO=$(echo "scale=3; $SYNCED_MED / $PIPE_MED" | bc)
SUMMED_RATIO=$(echo "scale=3; $SUMMED_MED / $PIPE_MED" | bc)
RSS_KB=$(sort -n "$OUT/rss-all" | tail -1)
SHELL_SIZE=$(stat -c %s "$OUT/shell.tar.zst")
BACKUP=$(find "$OUT/backups" -name 'files-*.tar.zst' | head -1)
PIPE_SIZE=$(stat -c %s "$BACKUP")
RATIO=$(echo "scale=3; $SHELL_MED / $PIPE_MED" | bc)
SIZE_RATIO=$(echo "scale=3; $PIPE_SIZE / $SHELL_SIZE" | bc)
RSS_MIB=$(echo "scale=1; $RSS_KB / 1024" | bc)

# ---------------------------------------------------------------- restore and compare
t0=$EPOCHREALTIME
FILES_DIR=$TREE BACKUP_DIR=$OUT/backups PIPELINE_STATE_DIR=$STATE PIPELINE_CACHE_DIR=$CACHE \
  "$PIPELINE_BIN" -q restore "$FILES" --to "$OUT/restored" >/dev/null 2>"$OUT/log" ||
  { cat "$OUT/log" >&2; die "pipeline restore failed"; }
RESTORE_T=$(printf '%.3f' "$(echo "$EPOCHREALTIME - $t0" | bc)")
listing() { (cd "$1" && find . -printf '%p %y %m %Ts %l\n' | sort); }
if diff <(listing "$TREE") <(listing "$OUT/restored") >/dev/null && diff -r "$TREE" "$OUT/restored" >/dev/null; then
  SAME=yes
else
  SAME=NO
fi

printf '\n%-44s %s\n' "tree" "$TREE_FILES files, $((TREE_BYTES / 1048576)) MiB ($(nproc) cores)"
printf '%-44s %s s\n' "tar -cf - | zstd -3 -T0 (median of $REPEAT)" "$SHELL_MED"
printf '%-44s %s s\n' "the same && sync FILE (median of $REPEAT)" "$SYNCED_MED"
printf '%-44s %s s\n' "the same | tee FILE | openssl sha256 && sync" "$SUMMED_MED"
printf '%-44s %s s\n' "pipeline run files (median of $REPEAT)" "$PIPE_MED"
printf '%-44s %s   (target >= 0.95)\n' "throughput, shell time / pipeline time" "$RATIO"
printf '%-44s %s   (the pipeline fsyncs too)\n' "throughput, shell+sync time / pipeline time" "$SYNCED_RATIO"
printf '%-44s %s   (the same work as the pipeline)\n' "throughput, shell+sha256+sync / pipeline" "$SUMMED_RATIO"
printf '%-44s %s\n' "runs (s): shell" "${SHELL_T[*]}"
printf '%-44s %s\n' "runs (s): shell+sync" "${SYNCED_T[*]}"
printf '%-44s %s\n' "runs (s): shell+sha256+sync" "${SUMMED_T[*]}"
printf '%-44s %s\n' "runs (s): pipeline" "${PIPE_T[*]}"
printf '%-44s %s   (%s / %s bytes)\n' "size, pipeline / shell" "$SIZE_RATIO" "$PIPE_SIZE" "$SHELL_SIZE"
printf '%-44s %s MiB   (target < 64 MiB)\n' "pipeline peak RSS" "$RSS_MIB"
printf '%-44s %s s, trees equal: %s\n' "pipeline restore" "$RESTORE_T" "$SAME"

MISSED=0
(($(echo "$RATIO < 0.95" | bc))) && MISSED=1
(($(echo "$RSS_MIB >= 64" | bc))) && MISSED=1
[[ $SAME == yes ]] || MISSED=1
if ((MISSED)); then
  say "a target was missed"
  ((STRICT)) && exit 1
fi
exit 0
