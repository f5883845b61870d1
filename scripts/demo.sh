#!/usr/bin/env bash
# Quick start: shows `pipeline run pipelines/nightly.toml` working end to end. Installs the
# prerequisites, builds the binary, starts a throwaway PostgreSQL cluster on 127.0.0.1 with a
# small `shop` database, backs it up, checks the backup's sha256 manifest, restores it with
# plain `zstd -dc | psql` into a second database and compares row counts. Then it stops the
# cluster and deletes every file it made (--keep leaves them in the temp dir).
#
#   bash scripts/demo.sh [--keep]
set -euo pipefail

KEEP=0
case ${1:-} in
  '') ;;
  --keep) KEEP=1 ;;
  -h | --help) echo "usage: bash scripts/demo.sh [--keep]   (--keep: leave the temp dir for inspection)"; exit 0 ;;
  *) echo "usage: bash scripts/demo.sh [--keep]" >&2; exit 2 ;;
esac

die() { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }

# Nothing from the caller's libpq environment may redirect a connection.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGPASSFILE PGDATABASE PGSERVICE PGSERVICEFILE PGOPTIONS
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$REPO/target/release/pipeline

step "1/6 prerequisites (scripts/install-prerequisites.sh)"
bash "$REPO/scripts/install-prerequisites.sh" || die "installing the prerequisites failed"
if [[ -z ${PGBIN:-} ]]; then
  PGBIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
[[ -x $PGBIN/initdb && -x $PGBIN/pg_ctl ]] || die "no PostgreSQL server binaries in $PGBIN (set PGBIN)"
export PATH="$PGBIN:$PATH" # the server's own pg_dump and psql, for the pipeline too

step "2/6 build: cargo build --release (takes a few minutes the first time)"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
(cd "$REPO" && cargo build --release) || die "cargo build --release failed"
[[ -x $BIN ]] || die "the build did not produce $BIN"

step "3/6 throwaway PostgreSQL cluster"
IS_ROOT=0
((EUID == 0)) && IS_ROOT=1
as_pg() { if ((IS_ROOT)); then runuser -u postgres -- "$@"; else "$@"; fi; }
if ((IS_ROOT)); then id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"; fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pipeline-demo.XXXXXX")
chmod 755 "$WORK" # the postgres user must reach $WORK/pg
PGROOT=$WORK/pg    # data directory, unix socket and server log
mkdir -p "$PGROOT" "$WORK/backups" "$WORK/state"
((IS_ROOT)) && chown postgres: "$PGROOT"

PG_STARTED=0
stop_cluster() {
  ((PG_STARTED)) || return 0
  as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" stop -m fast -w -t 30 >/dev/null 2>&1 ||
    as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" stop -m immediate -w -t 30 >/dev/null 2>&1
  PG_STARTED=0
}
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  if ((rc != 0)) && grep -qE 'ERROR|FATAL|PANIC' "$PGROOT/server.log" 2>/dev/null; then
    printf -- '--- errors in the server log ---\n' >&2
    grep -E 'ERROR|FATAL|PANIC' "$PGROOT/server.log" | tail -n 10 >&2
  fi
  stop_cluster
  if ((KEEP)); then
    ((rc == 0)) || echo "demo: kept $WORK" >&2
  else
    rm -rf -- "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'echo "demo: terminated" >&2; exit 143' TERM
trap 'echo "demo: hangup" >&2; exit 129' HUP

echo "initdb in $PGROOT/data"
as_pg "$PGBIN/initdb" -D "$PGROOT/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --encoding=UTF8 --locale=C.UTF-8 --no-sync --no-instructions >"$WORK/initdb.log" 2>&1 ||
  { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
printf "listen_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" "$PGROOT" >>"$PGROOT/data/postgresql.conf"

PORT=
for _ in 1 2 3 4 5; do
  p=$((20000 + RANDOM % 30000))
  [[ -z $(ss -Htln "sport = :$p" 2>/dev/null) ]] || continue
  PG_STARTED=1
  if as_pg "$PGBIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -o "-p $p" -w -t 60 start >/dev/null 2>&1; then
    PORT=$p
    break
  fi
done
[[ -n $PORT ]] || die "PostgreSQL did not start (see the server log above)"

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$PGROOT" -p "$PORT" -U postgres -d postgres "$@"; }
urlencode() {
  local s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [a-zA-Z0-9.~_-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c" && out+=$c ;;
    esac
  done
  printf '%s' "$out"
}
ROLE=shop_owner
PASSWORD="s3cr@t:/pw%$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" # URL-hostile on purpose
url_for() { printf 'postgresql://%s:%s@127.0.0.1:%s/%s' "$ROLE" "$1" "$PORT" "$2"; }
URL=$(url_for "$(urlencode "$PASSWORD")" shop)
RESTORED_URL=$(url_for "$(urlencode "$PASSWORD")" restored)
SHOWN_URL=$(url_for '***' shop)
SHOWN_RESTORED_URL=$(url_for '***' restored)
psql_admin -v pw="$PASSWORD" <<'EOF'
CREATE ROLE shop_owner LOGIN PASSWORD :'pw';
CREATE DATABASE shop OWNER shop_owner;
CREATE DATABASE restored OWNER shop_owner;
EOF
echo "PostgreSQL $(psql_admin -At -c 'SHOW server_version') on 127.0.0.1:$PORT; role $ROLE, password auth"
echo "DATABASE_URL=$SHOWN_URL"

step "4/6 sample data: schema shop (customers, orders with an enum and jsonb)"
psql -X -q -v ON_ERROR_STOP=1 --dbname="$URL" <<'EOF'
CREATE SCHEMA shop;
CREATE TYPE shop.order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled');
CREATE TABLE shop.customers (
  id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  email text NOT NULL UNIQUE,
  name text NOT NULL,
  created_at timestamptz NOT NULL
);
CREATE TABLE shop.orders (
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES shop.customers,
  status shop.order_status NOT NULL,
  total numeric(10,2) NOT NULL,
  details jsonb NOT NULL,
  created_at timestamptz NOT NULL
);
INSERT INTO shop.customers (email, name, created_at)
SELECT 'customer' || g || '@example.com', 'Customer ' || g, timestamptz '2025-01-01' + g * interval '3 hours'
FROM generate_series(1, 2000) g;
INSERT INTO shop.orders (customer_id, status, total, details, created_at)
SELECT 1 + g % 2000, (enum_range(NULL::shop.order_status))[1 + g % 5], round((5 + random() * 495)::numeric, 2),
       jsonb_build_object('items', 1 + g % 7, 'gift', g % 10 = 0, 'coupon', CASE WHEN g % 4 = 0 THEN 'SPRING' || g % 3 END),
       timestamptz '2025-01-01' + g * interval '40 minutes'
FROM generate_series(1, 8000) g;
EOF
TABLES=(shop.customers shop.orders)
for t in "${TABLES[@]}"; do echo "$t: $(psql -X -At --dbname="$URL" -c "SELECT count(*) FROM $t") rows"; done

step "5/6 back up with pipeline (working directory $WORK)"
run_pipeline() {
  show "DATABASE_URL=$SHOWN_URL BACKUP_DIR=$WORK/backups PIPELINE_STATE_DIR=$WORK/state $BIN $*"
  (cd "$WORK" && DATABASE_URL=$URL BACKUP_DIR=$WORK/backups PIPELINE_STATE_DIR=$WORK/state "$BIN" "$@")
}
run_pipeline run "$REPO/pipelines/nightly.toml" || die "pipeline run failed (exit $?)"
run_pipeline list "$REPO/pipelines/nightly.toml" || die "pipeline list failed (exit $?)"
show "ls -l $WORK/backups"
ls -l "$WORK/backups"
shopt -s nullglob
BACKUPS=("$WORK"/backups/*.sql.zst)
((${#BACKUPS[@]} == 1)) || die "expected one *.sql.zst in $WORK/backups, found ${#BACKUPS[@]}"
BACKUP=${BACKUPS[0]}
[[ -f $BACKUP.sha256 ]] || die "no manifest $BACKUP.sha256"
show "(cd $WORK/backups && sha256sum -c ${BACKUP##*/}.sha256)"
(cd "$WORK/backups" && sha256sum -c "${BACKUP##*/}.sha256") || die "the sha256 manifest does not match the backup"

step "6/6 restore with standard tools into database 'restored' and compare"
show "zstd -dc $BACKUP | psql -X -q -v ON_ERROR_STOP=1 $SHOWN_RESTORED_URL"
zstd -dc -- "$BACKUP" | psql -X -q -v ON_ERROR_STOP=1 --dbname="$RESTORED_URL" >"$WORK/restore.log" 2>&1 ||
  { tail -n 20 "$WORK/restore.log" >&2; die "restoring the backup with psql failed"; }
printf '%-16s %8s %8s\n' table shop restored
MISMATCH=0
for t in "${TABLES[@]}"; do
  a=$(psql -X -At -v ON_ERROR_STOP=1 --dbname="$URL" -c "SELECT count(*) FROM $t")
  b=$(psql -X -At -v ON_ERROR_STOP=1 --dbname="$RESTORED_URL" -c "SELECT count(*) FROM $t" 2>&1) || b="missing"
  printf '%-16s %8s %8s\n' "$t" "$a" "$b"
  [[ $a == "$b" ]] || MISMATCH=1
done
((MISMATCH == 0)) || die "row counts of the restored database differ from the source"

stop_cluster
((KEEP)) && echo "kept $WORK (the cluster is stopped; its data directory is $PGROOT/data)"
echo "demo: OK — backup written, verified and restored"
