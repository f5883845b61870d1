#!/usr/bin/env bash
# Times snapshot runs of N entities (default 1,000) against a throwaway PostgreSQL cluster
# and a fresh git repository:
#   1. first run: N creates, one commit each (unsigned, then signed with a throwaway gpg key)
#   2. a run with no change (reads every latest snapshot back, commits nothing)
#   3. a run after 17 entities changed (7 updates of data, 10 renames; N = 1000)
#   4. the first run again with batch = true (one commit for all N)
#
#   bash bench/snapshots.sh [--entities N]
#
# Uses target/release/pipeline (built if missing) or $PIPELINE_BIN.
set -euo pipefail

N=1000
while (($#)); do
  case $1 in
    --entities) N=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "snapshots.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
die() { printf 'snapshots.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
for tool in "$PGBIN/initdb" "$PGBIN/pg_ctl" psql git gpg; do
  command -v "$tool" >/dev/null || die "$tool missing (run scripts/install-prerequisites.sh --tests)"
done
PIPELINE_BIN=${PIPELINE_BIN:-$REPO/target/release/pipeline}
if [[ ! -x $PIPELINE_BIN ]]; then
  say "building $PIPELINE_BIN"
  (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
fi

as_pg() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }
WORK=$(mktemp -d /tmp/snapbench.XXXXXX)
chmod 755 "$WORK"
PGROOT=$WORK/pg
mkdir -p "$PGROOT"
((EUID == 0)) && chown postgres: "$PGROOT"
export GNUPGHOME=$WORK/g
mkdir -m 700 "$GNUPGHOME"
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" stop -m fast -w >/dev/null 2>&1 || true
  gpgconf --kill gpg-agent 2>/dev/null || true
  rm -rf -- "$WORK"
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$PGROOT/data" -U postgres --auth=trust --no-sync >/dev/null
PORT=$((20000 + RANDOM % 30000))
as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/log" -w \
  -o "-p $PORT -k $PGROOT -c listen_addresses=127.0.0.1" start >/dev/null
export DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/postgres"
psql -X -q "$DATABASE_URL" <<SQL
CREATE TABLE roles (id int PRIMARY KEY, name text NOT NULL, permissions jsonb NOT NULL,
                    updated_at timestamptz DEFAULT now(), updated_by text);
INSERT INTO roles (id, name, permissions, updated_by)
SELECT i, 'Role ' || i,
       jsonb_build_object('read', true, 'write', i % 3 = 0, 'scopes',
                          (SELECT jsonb_agg('scope-' || j) FROM generate_series(1, 5 + i % 10) j)),
       'seed@example.com'
FROM generate_series(1, $N) i;
SQL
gpg --batch --pinentry-mode loopback --passphrase '' \
  --quick-gen-key 'Bench <bench@test.invalid>' ed25519 sign never 2>/dev/null
KEY=$(gpg --with-colons --list-secret-keys | awk -F: '/^fpr/ {print $10; exit}')

new_repo() {
  rm -rf "$WORK/repo"
  git init -q -b main "$WORK/repo"
  export GIT_SNAPSHOT_REPO=$WORK/repo
}
export GIT_SNAPSHOTS_ENABLED=true PIPELINE_STATE_DIR=$WORK/state PIPELINE_CACHE_DIR=$WORK/cache
FILE=$REPO/pipelines/snapshots.toml

timed() { # label, command...
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; die "$label failed"; }
  t1=$(date +%s.%N)
  local commits
  commits=$(git -C "$WORK/repo" rev-list --count HEAD 2>/dev/null || echo 0)
  printf '%-44s %7.2f s   commits in repo: %s\n' "$label" "$(echo "$t1 - $t0" | bc)" "$commits"
}

"$PIPELINE_BIN" plugins >/dev/null # compile and cache the components once
echo "snapshot runs of $N entities ($(nproc) cores)"
new_repo
timed "first run, one commit each, unsigned" "$PIPELINE_BIN" run "$FILE"
timed "second run, nothing changed" "$PIPELINE_BIN" run "$FILE"
psql -X -q "$DATABASE_URL" -c "UPDATE roles SET permissions = permissions || '{\"write\": true}', updated_by = 'bench' WHERE id % 100 = 0 AND NOT (permissions->>'write')::bool"
psql -X -q "$DATABASE_URL" -c "UPDATE roles SET name = name || ' (renamed)' WHERE id % 100 = 1"
timed "run after 17 of them changed" "$PIPELINE_BIN" run "$FILE"
new_repo
GIT_SIGN_COMMITS=true GIT_SIGNING_KEY=$KEY timed "first run, one signed commit each" "$PIPELINE_BIN" run "$FILE"
git -C "$WORK/repo" verify-commit HEAD 2>/dev/null || die "the last commit does not verify"
new_repo
sed 's/^branch = .*/&\nbatch = true/' "$FILE" >"$WORK/batch.toml"
GIT_SIGN_COMMITS=true GIT_SIGNING_KEY=$KEY timed "first run, batch = true (one signed commit)" "$PIPELINE_BIN" run "$WORK/batch.toml"
