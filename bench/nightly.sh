#!/usr/bin/env bash
# Nightly benchmark: `pipeline run pipelines/nightly.toml` against the shell
# pipeline an operator would write instead,
#
#   pg_dump --format=plain --clean --if-exists --no-owner --no-acl --dbname="$URL" | zstd -3 -T0 -q > file
#
# on the same throwaway PostgreSQL cluster filled with ~2M rows of SaaS-like data.
# Prints wall times (median of --repeat runs), throughput and size ratios, the
# pipeline's peak RSS and the restore time of its output, each with its target.
# With --s3 it then also times `pipeline run pipelines/nightly-s3.toml` (local + S3 sinks)
# against a local s3s-fs server. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/nightly.sh [--rows N] [--repeat N] [--shell-only] [--s3] [--age] [--cluster] [--strict]

  --rows N      rows to generate across all tables (default 2000000)
  --repeat N    timed runs of each command; the median is reported (default 3)
  --shell-only  time only the shell pipeline (pg_dump | zstd) and its restore;
                no pipeline binary is needed or built
  --s3          after the other measurements, also time `pipeline run
                pipelines/nightly-s3.toml` (local + S3 sinks) against an s3s-fs
                server on 127.0.0.1, and check that the stored object is
                byte-identical to the local copy (needs s3s-fs on PATH)
  --age         after the other measurements, also time `pipeline run
                pipelines/encrypted.toml` (zstd then age, to a key made with
                age-keygen) against `pg_dump | zstd -3 -T0 | age -r KEY`, check
                that both outputs decrypt with `age -d`, and measure the age
                component's own throughput (needs age and age-keygen on PATH)
  --cluster     after the other measurements, also time `pipeline run
                pipelines/cluster.toml` (scope = "cluster": pg_dumpall, zstd)
                against `pg_dumpall | zstd -3 -T0` (the role is made a
                superuser for it, as pg_dumpall needs)
  --strict      exit 1 if any target is missed (default: report only)

environment:
  PIPELINE_BIN  pipeline binary (default <repo>/target/release/pipeline; if that
                is missing it is built with `cargo build --release`)
  PGBIN         PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
  TMPDIR        where the throwaway cluster and outputs live (default /tmp);
                must be reachable by the postgres user
EOF
}

die() { printf 'nightly.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- options
ROWS=2000000
REPEAT=3
SHELL_ONLY=0
S3=0
AGE=0
CLUSTER=0
STRICT=0
while (($#)); do
  case $1 in
    --rows) ROWS=${2:-}; shift 2 || die "--rows needs a value" ;;
    --rows=*) ROWS=${1#*=}; shift ;;
    --repeat) REPEAT=${2:-}; shift 2 || die "--repeat needs a value" ;;
    --repeat=*) REPEAT=${1#*=}; shift ;;
    --shell-only) SHELL_ONLY=1; shift ;;
    --s3) S3=1; shift ;;
    --age) AGE=1; shift ;;
    --cluster) CLUSTER=1; shift ;;
    --strict) STRICT=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
if ! [[ $ROWS =~ ^[0-9]+$ ]] || ((ROWS < 100)); then die "--rows must be an integer >= 100 (got '$ROWS')"; fi
if ! [[ $REPEAT =~ ^[0-9]+$ ]] || ((REPEAT < 1)); then die "--repeat must be an integer >= 1 (got '$REPEAT')"; fi
((S3 && SHELL_ONLY)) && die "--s3 needs the pipeline binary: it cannot be combined with --shell-only"
((AGE && SHELL_ONLY)) && die "--age needs the pipeline binary: it cannot be combined with --shell-only"
((CLUSTER && SHELL_ONLY)) && die "--cluster needs the pipeline binary: it cannot be combined with --shell-only"

# Decimal points from $EPOCHREALTIME and printf must be '.'.
unset LC_ALL
export LC_NUMERIC=C
# Nothing from the caller's libpq environment may redirect or alter a connection.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGPASSWORD PGPASSFILE PGDATABASE PGSERVICE \
  PGSERVICEFILE PGOPTIONS PGSSLMODE PGCLIENTENCODING PGCONNECT_TIMEOUT PGTZ

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
TIME_BIN=/usr/bin/time
NIGHTLY=$REPO/pipelines/nightly.toml
NIGHTLY_S3=$REPO/pipelines/nightly-s3.toml
ENCRYPTED=$REPO/pipelines/encrypted.toml

# Both sides must run the very same pg_dump (not Debian's pg_wrapper), so PGBIN
# goes first on the PATH that the shell pipeline and the pipeline binary see.
export PATH="$PGBIN:$PATH"

for tool in initdb pg_ctl postgres pg_dump psql; do
  [[ -x $PGBIN/$tool ]] || die "$PGBIN/$tool not found (set PGBIN)"
done
command -v zstd >/dev/null || die "zstd not found"
[[ -x $TIME_BIN ]] || die "$TIME_BIN (GNU time) not found"
if ((AGE)); then
  for tool in age age-keygen; do
    command -v "$tool" >/dev/null || die "$tool not found (needed by --age): apt-get install age"
  done
  [[ -f $ENCRYPTED ]] || die "$ENCRYPTED not found (needed by --age)"
fi
if ((S3)); then
  command -v s3s-fs >/dev/null ||
    die "s3s-fs not found on PATH (needed by --s3): cargo install s3s-fs --version 0.14.1 --features binary --locked"
  [[ -f $NIGHTLY_S3 ]] || die "$NIGHTLY_S3 not found (needed by --s3)"
fi

# ---------------------------------------------------------------- pipeline binary
if ((!SHELL_ONLY)); then
  [[ -f $NIGHTLY ]] || die "$NIGHTLY not found (use --shell-only to time the shell pipeline alone)"
  if [[ -n ${PIPELINE_BIN:-} ]]; then
    [[ -x $PIPELINE_BIN ]] || die "PIPELINE_BIN=$PIPELINE_BIN is not an executable file"
  else
    PIPELINE_BIN=$REPO/target/release/pipeline
    if [[ ! -x $PIPELINE_BIN ]]; then
      say "pipeline binary $PIPELINE_BIN missing: building it with 'cargo build --release' in $REPO"
      command -v cargo >/dev/null || die "cargo not found"
      (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
      [[ -x $PIPELINE_BIN ]] || die "cargo build --release did not produce $PIPELINE_BIN"
    fi
  fi
  # Fail now rather than after generating the data.
  if ((AGE)) && ! "$PIPELINE_BIN" plugins 2>/dev/null | grep -q '^age '; then
    die "$PIPELINE_BIN has no built-in age plugin (stale binary? rebuild it with 'cargo build --release')"
  fi
  if ((S3)) && ! "$PIPELINE_BIN" plugins 2>/dev/null | grep -q '^s3 '; then
    die "$PIPELINE_BIN has no built-in s3 plugin (stale binary? rebuild it with 'cargo build --release')"
  fi
fi

# ---------------------------------------------------------------- throwaway cluster
IS_ROOT=0
((EUID == 0)) && IS_ROOT=1
if ((IS_ROOT)); then
  id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the cluster"
fi
as_pg() {
  if ((IS_ROOT)); then runuser -u postgres -- "$@"; else "$@"; fi
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pipeline-bench.XXXXXX")
chmod 755 "$WORK"
PGROOT=$WORK/pg          # owned by the cluster's user; also holds the unix socket
PGDATA_DIR=$PGROOT/data
OUT=$WORK/out            # outputs of timed runs; emptied before each run
LOGS=$WORK/logs
mkdir -p "$PGROOT" "$OUT" "$LOGS"
((IS_ROOT)) && chown postgres: "$PGROOT"

PG_STARTED=0
S3_PID=''                # the s3s-fs server of --s3, once started
S3_ROOT=$WORK/s3         # its root directory: the bucket is a subdirectory
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  local pids
  mapfile -t pids < <(jobs -pr)
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
  if [[ -n $S3_PID ]]; then
    kill "$S3_PID" 2>/dev/null
    wait "$S3_PID" 2>/dev/null
    rm -rf -- "$S3_ROOT"
  fi
  if ((PG_STARTED)); then
    if ! as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m fast -w -t 30 >/dev/null 2>&1; then
      as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" stop -m immediate -w -t 30 >/dev/null 2>&1
    fi
    # Last resort: the postmaster's own pid, never a name.
    if [[ -f $PGDATA_DIR/postmaster.pid ]]; then
      local pm
      pm=$(head -n1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null)
      [[ $pm =~ ^[0-9]+$ ]] && kill -KILL "$pm" 2>/dev/null
    fi
  fi
  if ((rc != 0)) && [[ -f $PGROOT/server.log ]]; then
    printf '\n--- last lines of the server log ---\n' >&2
    tail -n 15 "$PGROOT/server.log" >&2
  fi
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

port_free() {
  if command -v ss >/dev/null; then
    [[ -z $(ss -Htln "sport = :$1" 2>/dev/null) ]]
  else
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 1; fi
  fi
}
pick_port() {
  local p _
  for _ in {1..100}; do
    p=$((20000 + RANDOM % 30000))
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  return 1
}

say "work dir $WORK"
PG_OS_USER=$(id -un)
((IS_ROOT)) && PG_OS_USER=postgres
say "initdb as $PG_OS_USER"
as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  --encoding=UTF8 --locale=C.UTF-8 --no-sync --no-instructions >"$LOGS/initdb.log" 2>&1 ||
  { cat "$LOGS/initdb.log" >&2; die "initdb failed"; }
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# nightly.sh: defaults otherwise (fsync, WAL and checkpoints as in production)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGROOT'
shared_buffers = 256MB
EOF

PORT=
PG_STARTED=1
for _ in 1 2 3 4 5; do
  PORT=$(pick_port) || die "no free TCP port found"
  if as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGROOT/server.log" -o "-p $PORT" -w -t 60 start >/dev/null 2>&1; then
    break
  fi
  PORT=
  say "server did not start on a port just found free; retrying"
done
[[ -n $PORT ]] || die "PostgreSQL did not start (see server log above)"

psql_admin() {
  psql -X -q -v ON_ERROR_STOP=1 -h "$PGROOT" -p "$PORT" -U postgres -d postgres "$@"
}

DB=shop
ROLE=shop_owner
PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
url_for() { printf 'postgresql://%s:%s@127.0.0.1:%s/%s' "$ROLE" "$PASSWORD" "$PORT" "$1"; }
URL=$(url_for "$DB")
psql_admin <<EOF
CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
CREATE DATABASE $DB OWNER $ROLE;
EOF
PG_VERSION=$(psql_admin -At -c 'SHOW server_version')
say "PostgreSQL $PG_VERSION on 127.0.0.1:$PORT, database $DB owned by $ROLE (password auth)"

# ---------------------------------------------------------------- data
# Rows are split users 5%, orders 20%, order_items 45%, events 30%.
N_USERS=$((ROWS * 5 / 100)); ((N_USERS >= 1)) || N_USERS=1
N_ORDERS=$((ROWS * 20 / 100))
N_ITEMS=$((ROWS * 45 / 100))
N_EVENTS=$((ROWS - N_USERS - N_ORDERS - N_ITEMS))

# Vocabularies: text is drawn from these with a skew towards the first words,
# so it compresses like real prose and logs, neither like noise nor like a constant.
WORDS='the to and a of for in is on your with this that it be we you are from at as
not have new can will by please order project account team report update
when all more one about if an our use data time out my was there which user
payment invoice shipping delivery customer support request email settings page
dashboard export import sync error failed success review approved pending cancel
refund billing plan upgrade trial subscription workspace member invite access
permission token session login logout password reset verify code link file
upload download api key webhook event retry timeout limit quota storage backup
restore schedule daily weekly monthly meeting call note task deadline priority
high low medium issue bug feature release version deploy build test staging
production server client mobile desktop browser app integration slack github
calendar contact address phone city country region currency price discount
tax total amount card bank transfer receipt thanks hello team question answer
issue resolved open closed assigned comment mention notification alert warning
critical info debug metric chart filter search sort column row table view list
board sprint goal quarter revenue growth churn active inactive archived deleted'
FIRST_NAMES='James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth
David Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Lisa
Matthew Nancy Anthony Betty Mark Sandra Donald Ashley Steven Emily Paul Donna Andrew
Michelle Joshua Carol Kevin Amanda Brian Melissa George Deborah Timothy Stephanie
Ahmed Fatima Wei Mei Hiroshi Yuki Carlos Sofia Lukas Emma Noah Olivia Liam Ava
Mateo Lucia Ivan Anna Pierre Camille Raj Priya Kwame Amara Lars Ingrid'
LAST_NAMES='Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez
Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee
Perez Thompson White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen
King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera
Campbell Mitchell Carter Roberts Muller Schmidt Schneider Fischer Weber Dubois Laurent
Rossi Russo Tanaka Suzuki Sato Kim Park Chen Wang Li Singh Patel Kowalski Novak Silva'
DOMAINS='gmail.com gmail.com gmail.com outlook.com yahoo.com icloud.com hotmail.com
proton.me acme.io example.com globex.com initech.com umbrella.co hooli.com'
ADJECTIVES='Classic Premium Compact Wireless Organic Portable Smart Ergonomic Deluxe
Eco Ultra Mini Pro Vintage Modern Rustic Sleek Heavy-Duty Lightweight Waterproof'
NOUNS='Backpack Bottle Chair Desk Lamp Mug Notebook Headphones Keyboard Mouse Monitor
Speaker Charger Cable Jacket Sneakers Watch Wallet Blanket Pillow Tent Kettle Blender
Pan Knife Shelf Planter Candle Towel Umbrella'
USER_AGENTS='Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36|Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15|Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0|Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148|okhttp/4.12.0|python-requests/2.31.0|curl/8.5.0'

NL=$'\n'

# SQL expression: MIN..MAX words from vocabulary array `w` (length `nw`), skewed to common words.
words_expr() {
  local min=$1 max=$2 i parts=()
  for ((i = 0; i < max; i++)); do parts+=("w[1 + floor(nw * random() ^ 2)::int]"); done
  local IFS=,
  printf "array_to_string((ARRAY[%s])[1:%d + floor(random() * %d)::int], ' ')" "${parts[*]}" "$min" "$((max - min + 1))"
}

SCHEMA_SQL="
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded');
CREATE TABLE users (
  id bigint GENERATED BY DEFAULT AS IDENTITY,
  email text NOT NULL,
  name text NOT NULL,
  created_at timestamptz NOT NULL,
  last_login_at timestamptz,
  settings jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE orders (
  id bigint GENERATED BY DEFAULT AS IDENTITY,
  user_id bigint NOT NULL,
  status order_status NOT NULL DEFAULT 'pending',
  currency char(3) NOT NULL,
  subtotal numeric(12,2) NOT NULL,
  tax numeric(12,2) NOT NULL,
  total numeric(12,2) NOT NULL,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  shipped_at timestamptz,
  note text
);
CREATE TABLE order_items (
  id bigint GENERATED BY DEFAULT AS IDENTITY,
  order_id bigint NOT NULL,
  product_id integer NOT NULL,
  sku text NOT NULL,
  product_name text NOT NULL,
  quantity integer NOT NULL,
  unit_price numeric(10,2) NOT NULL,
  discount numeric(10,2) NOT NULL DEFAULT 0
);
CREATE TABLE events (
  id bigint GENERATED BY DEFAULT AS IDENTITY,
  user_id bigint,
  occurred_at timestamptz NOT NULL,
  kind text NOT NULL,
  payload jsonb NOT NULL,
  message text
);
"

# Rows [lo, hi] of each table for loader $1 of $2: each loader fills a slice of every
# table, so all cores work and the result does not depend on the number of loaders.
slice() { # total job jobs -> "lo hi"
  local n=$1 j=$2 k=$3
  echo $((n * j / k + 1)) $((n * (j + 1) / k))
}
load_sql() { # job jobs
  local j=$1 k=$2 ulo uhi olo ohi ilo ihi elo ehi
  read -r ulo uhi < <(slice "$N_USERS" "$j" "$k")
  read -r olo ohi < <(slice "$N_ORDERS" "$j" "$k")
  read -r ilo ihi < <(slice "$N_ITEMS" "$j" "$k")
  read -r elo ehi < <(slice "$N_EVENTS" "$j" "$k")
  local V="(SELECT string_to_array(:'words', ' ') AS w, cardinality(string_to_array(:'words', ' ')) AS nw,
      string_to_array(:'first', ' ') AS fnames, string_to_array(:'last', ' ') AS lnames,
      string_to_array(:'domains', ' ') AS doms, string_to_array(:'adjectives', ' ') AS adjs,
      string_to_array(:'nouns', ' ') AS nouns, string_to_array(:'agents', '|') AS agents) v"
  cat <<EOF
\\set words '${WORDS//$NL/ }'
\\set first '${FIRST_NAMES//$NL/ }'
\\set last '${LAST_NAMES//$NL/ }'
\\set domains '${DOMAINS//$NL/ }'
\\set adjectives '${ADJECTIVES//$NL/ }'
\\set nouns '${NOUNS//$NL/ }'
\\set agents '$USER_AGENTS'
SET synchronous_commit = off;
SELECT setseed(0.$((1000 + j * 7919 % 9000))) \\g /dev/null

INSERT INTO users (id, email, name, created_at, last_login_at, settings)
SELECT g,
       lower(fn) || CASE WHEN r < 0.5 THEN '.' ELSE '_' END || lower(ln) || g || '@' || dom,
       fn || ' ' || ln,
       created,
       CASE WHEN r < 0.85 THEN created + random() * (timestamptz '2025-06-01' - created) END,
       jsonb_build_object(
         'theme', (ARRAY['light', 'dark', 'system'])[1 + floor(random() * 3)::int],
         'locale', (ARRAY['en-US', 'en-GB', 'de-DE', 'fr-FR', 'es-ES', 'pt-BR', 'ja-JP', 'nl-NL'])[1 + floor(8 * random() ^ 2)::int],
         'timezone', (ARRAY['UTC', 'America/New_York', 'Europe/Berlin', 'America/Los_Angeles', 'Europe/London', 'Asia/Tokyo', 'Europe/Paris', 'Australia/Sydney'])[1 + floor(8 * random() ^ 2)::int],
         'notifications', jsonb_build_object('email', random() < 0.8, 'sms', random() < 0.15,
                                             'digest', (ARRAY['daily', 'weekly', 'never'])[1 + floor(random() * 3)::int]),
         'onboarding_completed', random() < 0.7,
         'beta_features', CASE WHEN random() < 0.1 THEN jsonb_build_array('new-editor', 'ai-summary') ELSE '[]'::jsonb END)
FROM (SELECT g, random() AS r,
             fnames[1 + floor(cardinality(fnames) * random())::int] AS fn,
             lnames[1 + floor(cardinality(lnames) * random())::int] AS ln,
             doms[1 + floor(cardinality(doms) * random())::int] AS dom,
             timestamptz '2019-01-01 00:00:00+00' + (g::float8 / $N_USERS) * interval '2250 days' + random() * interval '1 day' AS created
      FROM generate_series($ulo, $uhi) g, $V) s;

INSERT INTO orders (id, user_id, status, currency, subtotal, tax, total, created_at, updated_at, shipped_at, note)
SELECT g, user_id, status::order_status, currency, subtotal, round(subtotal * 0.19, 2), subtotal + round(subtotal * 0.19, 2),
       created, created + random() * interval '9 days',
       CASE WHEN status IN ('shipped', 'delivered') THEN created + interval '1 day' + random() * interval '3 days' END,
       note
FROM (SELECT g,
             1 + floor(random() * $N_USERS)::bigint AS user_id,
             CASE WHEN r < 0.05 THEN 'pending' WHEN r < 0.15 THEN 'paid' WHEN r < 0.25 THEN 'shipped'
                  WHEN r < 0.90 THEN 'delivered' WHEN r < 0.97 THEN 'cancelled' ELSE 'refunded' END AS status,
             (ARRAY['USD', 'EUR', 'GBP', 'JPY', 'CAD'])[1 + floor(5 * random() ^ 2)::int] AS currency,
             round((5 + 495 * random() ^ 2)::numeric, 2) AS subtotal,
             timestamptz '2021-01-01 00:00:00+00' + (g::float8 / $N_ORDERS) * interval '1600 days' + random() * interval '1 hour' AS created,
             CASE WHEN random() < 0.2 THEN $(words_expr 3 12) END AS note
      FROM (SELECT g, random() AS r FROM generate_series($olo, $ohi) g) gs, $V) s;

INSERT INTO order_items (id, order_id, product_id, sku, product_name, quantity, unit_price, discount)
SELECT g, order_id, p, 'SKU-' || lpad(p::text, 6, '0'),
       adjs[1 + p % cardinality(adjs)] || ' ' || nouns[1 + (p / cardinality(adjs)) % cardinality(nouns)],
       1 + floor(8 * random() ^ 4)::int, price,
       CASE WHEN random() < 0.15 THEN round(price * 0.1, 2) ELSE 0 END
FROM (SELECT g, 1 + floor(random() * $N_ORDERS)::bigint AS order_id, p,
             round(((p * 7919) % 49900 + 99) / 100.0, 2) AS price
      FROM (SELECT g, 1 + floor(5000 * random() ^ 2)::int AS p FROM generate_series($ilo, $ihi) g) gs) s, $V;

INSERT INTO events (id, user_id, occurred_at, kind, payload, message)
SELECT g,
       CASE WHEN random() < 0.9 THEN 1 + floor(random() * $N_USERS)::bigint END,
       timestamptz '2025-01-01 00:00:00+00' + (g::float8 / $N_EVENTS) * interval '180 days' + random() * interval '1 minute',
       kind,
       jsonb_build_object(
         'path', '/' || (ARRAY['app', 'api/v1', 'api/v2', 'settings', 'billing', 'projects', 'reports'])[1 + floor(7 * random() ^ 2)::int]
                 || '/' || w[1 + floor(nw * random() ^ 2)::int] || CASE WHEN random() < 0.5 THEN '/' || floor(random() * 100000)::int ELSE '' END,
         'method', (ARRAY['GET', 'GET', 'GET', 'POST', 'PUT', 'PATCH', 'DELETE'])[1 + floor(7 * random())::int],
         'status', (ARRAY[200, 200, 200, 200, 201, 204, 302, 400, 401, 403, 404, 500])[1 + floor(12 * random() ^ 2)::int],
         'duration_ms', round((1 + 1500 * random() ^ 4)::numeric, 1),
         'ip', '198.51.100.' || floor(random() * 256)::int,
         'user_agent', agents[1 + floor(cardinality(agents) * random() ^ 2)::int],
         'request_id', md5('req' || g)::uuid,
         'session', left(md5('session' || (g / 23)), 16)),
       CASE WHEN random() < 0.8 THEN $(words_expr 4 16) END
FROM (SELECT g, (ARRAY['page_view', 'api_call', 'login', 'search', 'export', 'invite_sent', 'settings_changed',
                       'payment_failed', 'logout', 'webhook_delivered'])[1 + floor(10 * random() ^ 2)::int] AS kind
      FROM generate_series($elo, $ehi) g) gs, $V;
EOF
}

FINISH_SQL="
ALTER TABLE users ADD PRIMARY KEY (id);
ALTER TABLE orders ADD PRIMARY KEY (id);
ALTER TABLE order_items ADD PRIMARY KEY (id);
ALTER TABLE events ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE order_items ADD FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE;
ALTER TABLE events ADD FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE SET NULL;
CREATE INDEX orders_user_id_idx ON orders (user_id);
CREATE INDEX orders_status_created_idx ON orders (status, created_at);
CREATE INDEX order_items_order_id_idx ON order_items (order_id);
CREATE INDEX events_user_occurred_idx ON events (user_id, occurred_at);
CREATE INDEX events_kind_idx ON events (kind);
CREATE VIEW order_totals AS
  SELECT o.user_id, count(*) AS orders, sum(o.total) AS revenue FROM orders o
  WHERE o.status NOT IN ('cancelled', 'refunded') GROUP BY o.user_id;
SELECT setval(pg_get_serial_sequence('users', 'id'), $N_USERS) \\g /dev/null
SELECT setval(pg_get_serial_sequence('orders', 'id'), $N_ORDERS) \\g /dev/null
SELECT setval(pg_get_serial_sequence('order_items', 'id'), $N_ITEMS) \\g /dev/null
SELECT setval(pg_get_serial_sequence('events', 'id'), $N_EVENTS) \\g /dev/null
VACUUM (FREEZE, ANALYZE) users, orders, order_items, events;
"

LOADERS=$(nproc)
((LOADERS > 4)) && LOADERS=4
psql_app() { psql -X -q -v ON_ERROR_STOP=1 --dbname="$URL" "$@"; }

say "generating $ROWS rows (users $N_USERS, orders $N_ORDERS, order_items $N_ITEMS, events $N_EVENTS) with $LOADERS loaders"
GEN_T0=$EPOCHREALTIME
psql_app <<<"$SCHEMA_SQL"
LOAD_PIDS=()
for ((j = 0; j < LOADERS; j++)); do
  load_sql "$j" "$LOADERS" >"$LOGS/load$j.sql"
  psql_app -f "$LOGS/load$j.sql" >"$LOGS/load$j.log" 2>&1 &
  LOAD_PIDS+=("$!")
done
for j in "${!LOAD_PIDS[@]}"; do
  wait "${LOAD_PIDS[$j]}" || { cat "$LOGS/load$j.log" >&2; die "data load $j failed"; }
done
GEN_T1=$EPOCHREALTIME
psql_app <<<"$FINISH_SQL" >"$LOGS/finish.log" 2>&1 || { cat "$LOGS/finish.log" >&2; die "constraints/indexes failed"; }
psql_admin -c CHECKPOINT
GEN_T2=$EPOCHREALTIME

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
GEN_LOAD_S=$(secs "$GEN_T0" "$GEN_T1")
GEN_TOTAL_S=$(secs "$GEN_T0" "$GEN_T2")
DB_SIZE=$(psql_app -At -c 'SELECT pg_database_size(current_database())')
say "data generated in ${GEN_TOTAL_S}s (inserts ${GEN_LOAD_S}s, keys/indexes/vacuum/checkpoint $(secs "$GEN_T1" "$GEN_T2")s)"

# ---------------------------------------------------------------- helpers
human() {
  awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u, " "); i = 1
    while (b >= 1024 && i < 5) { b /= 1024; i++ }
    if (i == 1) printf "%d B", b; else printf "%.1f %s", b, u[i] }'
}
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR % 2) printf "%.3f", a[(NR + 1) / 2]; else printf "%.3f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
fsize() { stat -c %s -- "$1"; }
# verdict VALUE OP LIMIT -> PASS/MISS
verdict() {
  if awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { exit !((op == ">=" && v >= l) || (op == "<=" && v <= l) || (op == "<" && v < l)) }'; then
    echo PASS
  else
    echo MISS
  fi
}

DUMP_FLAGS=(--format=plain --clean --if-exists --no-owner --no-acl)
SHELL_OUT=$OUT/shell.sql.zst
PIPE_BACKUP_DIR=$OUT/backups
PIPE_STATE_DIR=$OUT/state
PIPE_CACHE_DIR=$WORK/pipeline-cache   # kept across runs: holds compiled components

# run_shell -> sets RUN_S (wall seconds) and RUN_KB (GNU time %M: peak RSS of the largest
# process in the tree, here pg_dump or zstd)
run_shell() {
  rm -rf -- "${OUT:?}"/*
  local t0 t1
  t0=$EPOCHREALTIME
  # shellcheck disable=SC2016 # expanded by the inner bash
  "$TIME_BIN" -f '%e %M' -o "$LOGS/time.shell" bash -c \
    'set -o pipefail; pg_dump "${@:3}" --dbname="$1" | zstd -3 -T0 -q > "$2"' \
    _ "$URL" "$SHELL_OUT" "${DUMP_FLAGS[@]}" 2>"$LOGS/shell.err" ||
    { cat "$LOGS/shell.err" >&2; die "shell pipeline failed"; }
  t1=$EPOCHREALTIME
  RUN_S=$(secs "$t0" "$t1")
  RUN_KB=$(tail -n1 "$LOGS/time.shell" | awk '{ print $2 }')
}

# run_pipeline -> sets RUN_S, RUN_KB (GNU time %M: the pipeline process, or a child such as
# pg_dump if that one is larger) and PIPE_OUT
run_pipeline() {
  rm -rf -- "${OUT:?}"/*
  mkdir -p "$PIPE_BACKUP_DIR" "$PIPE_STATE_DIR" "$PIPE_CACHE_DIR"
  local t0 t1 rc=0
  t0=$EPOCHREALTIME
  (cd "$REPO" && DATABASE_URL=$URL BACKUP_DIR=$PIPE_BACKUP_DIR BACKUP_RETENTION_DAYS=30 \
    PIPELINE_STATE_DIR=$PIPE_STATE_DIR PIPELINE_CACHE_DIR=$PIPE_CACHE_DIR \
    "$TIME_BIN" -f '%e %M' -o "$LOGS/time.pipeline" "$PIPELINE_BIN" run "$NIGHTLY") \
    >"$LOGS/pipeline.log" 2>&1 || rc=$?
  t1=$EPOCHREALTIME
  if ((rc != 0)); then
    tail -n 30 "$LOGS/pipeline.log" >&2
    die "pipeline run failed (exit $rc)"
  fi
  RUN_S=$(secs "$t0" "$t1")
  RUN_KB=$(tail -n1 "$LOGS/time.pipeline" | awk '{ print $2 }')
  PIPE_OUT=$(backup_in "$PIPE_BACKUP_DIR")
  [[ -n $PIPE_OUT ]] || die "pipeline run left no file in BACKUP_DIR ($PIPE_BACKUP_DIR)"
}

# backup_in DIR -> the dump: the largest *.zst under DIR, else the largest file (or nothing)
backup_in() {
  local f
  f=$(find "$1" -type f -name '*.zst' ! -name '*.partial' -printf '%s\t%p\n' | sort -n | tail -n1 | cut -f2-)
  [[ -n $f ]] || f=$(find "$1" -type f ! -name '*.partial' -printf '%s\t%p\n' | sort -n | tail -n1 | cut -f2-)
  printf '%s' "$f"
}

# ---------------------------------------------------------------- plain dump size (also warms the server's caches)
say "measuring the plain (uncompressed) dump size"
PLAIN_SIZE=$(pg_dump "${DUMP_FLAGS[@]}" --dbname="$URL" | wc -c)

if ((!SHELL_ONLY)); then
  say "warm-up: one untimed pipeline run (the first run compiles the WebAssembly components into PIPELINE_CACHE_DIR)"
  run_pipeline
  say "warm-up run took ${RUN_S}s"
fi

# ---------------------------------------------------------------- timed runs
# One after the other on the same server, never concurrently; with both sides the
# order alternates between repetitions so neither always runs on the other's heels.
SHELL_TIMES=() SHELL_KBS=() PIPE_TIMES=() PIPE_KBS=()
SHELL_SIZE='' PIPE_SIZE='' PIPE_PLAIN_SIZE='' PIPE_OUT_NAME=''
for ((i = 1; i <= REPEAT; i++)); do
  order=(shell)
  if ((!SHELL_ONLY)); then
    if ((i % 2)); then order=(shell pipeline); else order=(pipeline shell); fi
  fi
  for side in "${order[@]}"; do
    if [[ $side == shell ]]; then
      run_shell
      SHELL_TIMES+=("$RUN_S") SHELL_KBS+=("$RUN_KB")
      mv -- "$SHELL_OUT" "$WORK/last-shell.zst"   # out of OUT, after the clock stopped
      SHELL_SIZE=$(fsize "$WORK/last-shell.zst")
      say "run $i/$REPEAT shell:    ${RUN_S}s, $(human "$SHELL_SIZE")"
    else
      run_pipeline
      PIPE_TIMES+=("$RUN_S") PIPE_KBS+=("$RUN_KB")
      PIPE_OUT_NAME=${PIPE_OUT#"$PIPE_BACKUP_DIR"/}
      mv -- "$PIPE_OUT" "$WORK/last-pipeline.zst"
      PIPE_SIZE=$(fsize "$WORK/last-pipeline.zst")
      say "run $i/$REPEAT pipeline: ${RUN_S}s, $(human "$PIPE_SIZE"), peak RSS $(human $((RUN_KB * 1024)))"
    fi
  done
done

# The restore reads the pipeline's output, or in --shell-only mode the shell's.
if ((SHELL_ONLY)); then
  RESTORE_SRC=$WORK/last-shell.zst
  RESTORE_WHAT="shell output (--shell-only)"
else
  RESTORE_SRC=$WORK/last-pipeline.zst
  RESTORE_WHAT="pipeline output"
  zstd -tq -- "$RESTORE_SRC" 2>"$LOGS/zstd-t.err" ||
    { cat "$LOGS/zstd-t.err" >&2; die "pipeline output $PIPE_OUT_NAME is not valid zstd"; }
  PIPE_PLAIN_SIZE=$(zstd -dcq -- "$RESTORE_SRC" | wc -c)
fi

# ---------------------------------------------------------------- restore
RESTORE_TIMES=()
COUNT_SQL="SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM orders) || ' ' ||
  (SELECT count(*) FROM order_items) || ' ' || (SELECT count(*) FROM events)"
SRC_COUNTS=$(psql_app -At -c "$COUNT_SQL")
for ((i = 1; i <= REPEAT; i++)); do
  ((i == 1)) || psql_admin -c "DROP DATABASE restored"
  psql_admin -c "CREATE DATABASE restored OWNER $ROLE"
  psql_admin -c CHECKPOINT   # each restore starts with no dirty buffers left by the previous one
  RURL=$(url_for restored)
  t0=$EPOCHREALTIME
  bash -c 'set -o pipefail; zstd -dc -- "$1" | psql -X -q -v ON_ERROR_STOP=1 --dbname="$2"' \
    _ "$RESTORE_SRC" "$RURL" >"$LOGS/restore.log" 2>&1 ||
    { tail -n 20 "$LOGS/restore.log" >&2; die "restore of the $RESTORE_WHAT failed"; }
  t1=$EPOCHREALTIME
  RESTORE_TIMES+=("$(secs "$t0" "$t1")")
  say "restore $i/$REPEAT of the $RESTORE_WHAT: ${RESTORE_TIMES[-1]}s"
done
RESTORED_COUNTS=$(psql -X -At -v ON_ERROR_STOP=1 --dbname="$RURL" -c "$COUNT_SQL")
[[ $RESTORED_COUNTS == "$SRC_COUNTS" ]] ||
  die "restored row counts ($RESTORED_COUNTS) differ from the source ($SRC_COUNTS)"

# ---------------------------------------------------------------- pipeline restore
# The same backup through `pipeline restore` (checksum checked while streaming, native zstd
# decode, psql in one transaction), from a backup directory holding it and its manifest.
PRESTORE_TIMES=()
if ((!SHELL_ONLY)); then
  RDIR=$WORK/restore-backups
  rm -rf -- "$RDIR"
  mkdir -p -- "$RDIR"
  cp -- "$RESTORE_SRC" "$RDIR/$PIPE_OUT_NAME"
  (cd "$RDIR" && sha256sum -- "$PIPE_OUT_NAME" >"$PIPE_OUT_NAME.sha256")
  for ((i = 1; i <= REPEAT; i++)); do
    psql_admin -c "DROP DATABASE IF EXISTS restored"
    psql_admin -c "CREATE DATABASE restored OWNER $ROLE"
    psql_admin -c CHECKPOINT
    RURL=$(url_for restored)
    t0=$EPOCHREALTIME
    (cd "$REPO" && DATABASE_URL=$URL BACKUP_DIR=$RDIR PIPELINE_STATE_DIR=$PIPE_STATE_DIR \
      PIPELINE_CACHE_DIR=$PIPE_CACHE_DIR "$PIPELINE_BIN" restore "$NIGHTLY" --to "$RURL") \
      >"$LOGS/pipeline-restore.log" 2>&1 ||
      { tail -n 20 "$LOGS/pipeline-restore.log" >&2; die "pipeline restore failed"; }
    t1=$EPOCHREALTIME
    PRESTORE_TIMES+=("$(secs "$t0" "$t1")")
    say "pipeline restore $i/$REPEAT: ${PRESTORE_TIMES[-1]}s"
  done
  RESTORED_COUNTS=$(psql -X -At -v ON_ERROR_STOP=1 --dbname="$RURL" -c "$COUNT_SQL")
  [[ $RESTORED_COUNTS == "$SRC_COUNTS" ]] ||
    die "pipeline restore: row counts ($RESTORED_COUNTS) differ from the source ($SRC_COUNTS)"
fi

# ---------------------------------------------------------------- local + S3 (--s3)
# `pipeline run pipelines/nightly-s3.toml`: one dump feeding the local sink and the s3 sink,
# the latter uploading to an s3s-fs server (SigV4-checking, filesystem-backed) on this machine.
S3_TIMES=() S3_KBS=()
S3_SIZE='' S3_KEY='' S3_VERSION='' S3_PORT=''
if ((S3)); then
  S3_BUCKET=bench-backups
  S3_PREFIX=nightly/
  S3_ACCESS=AKIAPIPELINEBENCH
  S3_SECRET=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
  S3_BUCKET_DIR=$S3_ROOT/$S3_BUCKET
  S3_VERSION=$(s3s-fs --version 2>/dev/null | head -n1)

  # The restores left a database and dirty buffers behind: neither may weigh on these runs.
  psql_admin -c "DROP DATABASE IF EXISTS restored"
  psql_admin -c CHECKPOINT

  tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  mkdir -p -- "$S3_BUCKET_DIR"
  for _ in 1 2 3 4 5; do
    S3_PORT=$(pick_port) || die "no free TCP port found for s3s-fs"
    s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS" --secret-key "$S3_SECRET" \
      "$S3_ROOT" >"$LOGS/s3s-fs.log" 2>&1 &
    S3_PID=$!
    for ((k = 0; k < 200; k++)); do   # up to 10 s
      kill -0 "$S3_PID" 2>/dev/null || break
      tcp_open "$S3_PORT" && break
      sleep 0.05
    done
    # Listening, and still alive: not some other process that took the port meanwhile.
    if tcp_open "$S3_PORT" && sleep 0.2 && kill -0 "$S3_PID" 2>/dev/null; then break; fi
    kill "$S3_PID" 2>/dev/null || true
    wait "$S3_PID" 2>/dev/null || true
    S3_PID='' S3_PORT=''
    say "s3s-fs did not start on a port just found free; retrying"
  done
  [[ -n $S3_PID ]] || { tail -n 20 "$LOGS/s3s-fs.log" >&2; die "s3s-fs did not start"; }
  S3_ENDPOINT=http://127.0.0.1:$S3_PORT
  say "${S3_VERSION:-s3s-fs} on $S3_ENDPOINT (pid $S3_PID), bucket $S3_BUCKET in $S3_ROOT"

  # Every object of the bucket, and whatever the server keeps beside them in its root
  # (object metadata, multipart uploads): hidden files of the root.
  clear_bucket() {
    find "$S3_BUCKET_DIR" -mindepth 1 -delete
    find "$S3_ROOT" -mindepth 1 -maxdepth 1 -type f -name '.*' -delete
  }

  # run_pipeline_s3 -> sets RUN_S, RUN_KB (GNU time %M, as for run_pipeline), PIPE_OUT (the
  # local copy) and S3_OBJ (the object in the bucket, as a file of the server's root)
  run_pipeline_s3() {
    rm -rf -- "${OUT:?}"/*
    clear_bucket
    mkdir -p "$PIPE_BACKUP_DIR" "$PIPE_STATE_DIR" "$PIPE_CACHE_DIR"
    local t0 t1 rc=0
    t0=$EPOCHREALTIME
    (cd "$REPO" && DATABASE_URL=$URL BACKUP_DIR=$PIPE_BACKUP_DIR BACKUP_RETENTION_DAYS=30 \
      PIPELINE_STATE_DIR=$PIPE_STATE_DIR PIPELINE_CACHE_DIR=$PIPE_CACHE_DIR \
      S3_BUCKET=$S3_BUCKET S3_REGION=us-east-1 S3_ACCESS_KEY=$S3_ACCESS S3_SECRET_KEY=$S3_SECRET \
      S3_ENDPOINT=$S3_ENDPOINT S3_PREFIX=$S3_PREFIX \
      "$TIME_BIN" -f '%e %M' -o "$LOGS/time.pipeline-s3" "$PIPELINE_BIN" run "$NIGHTLY_S3") \
      >"$LOGS/pipeline-s3.log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
      tail -n 30 "$LOGS/pipeline-s3.log" >&2
      die "pipeline run $NIGHTLY_S3 failed (exit $rc)"
    fi
    RUN_S=$(secs "$t0" "$t1")
    RUN_KB=$(tail -n1 "$LOGS/time.pipeline-s3" | awk '{ print $2 }')
    PIPE_OUT=$(backup_in "$PIPE_BACKUP_DIR")
    [[ -n $PIPE_OUT ]] || die "local+S3 run left no file in BACKUP_DIR ($PIPE_BACKUP_DIR)"
    S3_KEY=$S3_PREFIX${PIPE_OUT#"$PIPE_BACKUP_DIR"/}
    S3_OBJ=$S3_BUCKET_DIR/$S3_KEY
  }

  # verify_s3 WHAT: the object must exist and be byte-identical to the local copy (and so
  # must the manifest beside it, if the local sink wrote one).
  verify_s3() {
    if [[ ! -f $S3_OBJ ]]; then
      printf 'objects in s3://%s:\n' "$S3_BUCKET" >&2
      (cd "$S3_BUCKET_DIR" && find . -type f -printf '  %P (%s bytes)\n') >&2
      die "$1: no object s3://$S3_BUCKET/$S3_KEY for the local backup $PIPE_OUT"
    fi
    cmp -- "$PIPE_OUT" "$S3_OBJ" >&2 ||
      die "$1: s3://$S3_BUCKET/$S3_KEY ($(fsize "$S3_OBJ") bytes) differs from the local backup ($(fsize "$PIPE_OUT") bytes)"
    if [[ -f $PIPE_OUT.sha256 ]]; then
      cmp -- "$PIPE_OUT.sha256" "$S3_OBJ.sha256" >&2 ||
        die "$1: s3://$S3_BUCKET/$S3_KEY.sha256 differs from (or lacks) the local manifest"
    fi
  }

  say "local+S3 warm-up: one untimed run of $NIGHTLY_S3 (compiles the s3 component)"
  run_pipeline_s3
  verify_s3 "local+S3 warm-up"
  say "local+S3 warm-up run took ${RUN_S}s"
  for ((i = 1; i <= REPEAT; i++)); do
    run_pipeline_s3
    S3_TIMES+=("$RUN_S") S3_KBS+=("$RUN_KB")
    verify_s3 "local+S3 run $i/$REPEAT"   # after the clock stopped
    S3_SIZE=$(fsize "$S3_OBJ")
    say "run $i/$REPEAT local+S3: ${RUN_S}s, $(human "$S3_SIZE") in S3 (identical to the local copy), peak RSS $(human $((RUN_KB * 1024)))"
  done
fi

# ---------------------------------------------------------------- encrypted (--age)
# `pipeline run pipelines/encrypted.toml` (zstd, then the age component) against the shell
# pipeline with the standard age tool, `pg_dump | zstd -3 -T0 | age -r KEY`, alternating as
# above; then the age component alone (`transform-throughput`: N MiB through encode and
# back through decode, no pg_dump, no disk) beside the age CLI on the same bytes.
AGE_SHELL_TIMES=() AGE_SHELL_KBS=() AGE_PIPE_TIMES=() AGE_PIPE_KBS=()
AGE_SHELL_SIZE='' AGE_PIPE_SIZE='' AGE_ENC_LINE='' AGE_DEC_LINE='' AGE_CLI_MBS='' AGE_MIB=''
if ((AGE)); then
  AGE_DIR=$WORK/age
  mkdir -p -- "$AGE_DIR"
  age-keygen -o "$AGE_DIR/key.txt" 2>/dev/null
  AGE_RECIPIENT=$(age-keygen -y "$AGE_DIR/key.txt")
  printf '# bench key\n%s\n' "$AGE_RECIPIENT" >"$AGE_DIR/recipients.txt"
  AGE_SHELL_OUT=$OUT/shell.sql.zst.age
  psql_admin -c "DROP DATABASE IF EXISTS restored"
  psql_admin -c CHECKPOINT

  run_shell_age() {
    rm -rf -- "${OUT:?}"/*
    local t0 t1
    t0=$EPOCHREALTIME
    # shellcheck disable=SC2016 # expanded by the inner bash
    "$TIME_BIN" -f '%e %M' -o "$LOGS/time.shell-age" bash -c \
      'set -o pipefail; pg_dump "${@:4}" --dbname="$1" | zstd -3 -T0 -q | age -r "$3" > "$2"' \
      _ "$URL" "$AGE_SHELL_OUT" "$AGE_RECIPIENT" "${DUMP_FLAGS[@]}" 2>"$LOGS/shell-age.err" ||
      { cat "$LOGS/shell-age.err" >&2; die "shell pipeline with age failed"; }
    t1=$EPOCHREALTIME
    RUN_S=$(secs "$t0" "$t1")
    RUN_KB=$(tail -n1 "$LOGS/time.shell-age" | awk '{ print $2 }')
  }
  run_pipeline_age() {
    rm -rf -- "${OUT:?}"/*
    mkdir -p "$PIPE_BACKUP_DIR" "$PIPE_STATE_DIR" "$PIPE_CACHE_DIR"
    local t0 t1 rc=0
    t0=$EPOCHREALTIME
    (cd "$REPO" && DATABASE_URL=$URL BACKUP_DIR=$PIPE_BACKUP_DIR BACKUP_RETENTION_DAYS=30 \
      AGE_RECIPIENTS_FILE=$AGE_DIR/recipients.txt \
      PIPELINE_STATE_DIR=$PIPE_STATE_DIR PIPELINE_CACHE_DIR=$PIPE_CACHE_DIR \
      "$TIME_BIN" -f '%e %M' -o "$LOGS/time.pipeline-age" "$PIPELINE_BIN" run "$ENCRYPTED") \
      >"$LOGS/pipeline-age.log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
      tail -n 30 "$LOGS/pipeline-age.log" >&2
      die "pipeline run $ENCRYPTED failed (exit $rc)"
    fi
    RUN_S=$(secs "$t0" "$t1")
    RUN_KB=$(tail -n1 "$LOGS/time.pipeline-age" | awk '{ print $2 }')
    PIPE_OUT=$(find "$PIPE_BACKUP_DIR" -type f -name '*.sql.zst.age' | head -n1)
    [[ -n $PIPE_OUT ]] || die "encrypted run left no *.sql.zst.age in BACKUP_DIR ($PIPE_BACKUP_DIR)"
  }
  # check_age_output FILE WHAT: decrypts with the age CLI to the plain dump's size.
  check_age_output() {
    local n
    n=$(age -d -i "$AGE_DIR/key.txt" -- "$1" | zstd -dcq | wc -c) ||
      die "$2: $1 does not decrypt with age -d | zstd -d"
    ((n == PLAIN_SIZE)) || die "$2: decrypts to $n bytes, the plain dump is $PLAIN_SIZE"
  }

  say "encrypted warm-up: one untimed run of $ENCRYPTED (compiles the age component)"
  run_pipeline_age
  say "encrypted warm-up run took ${RUN_S}s"
  for ((i = 1; i <= REPEAT; i++)); do
    if ((i % 2)); then order=(shell pipeline); else order=(pipeline shell); fi
    for side in "${order[@]}"; do
      if [[ $side == shell ]]; then
        run_shell_age
        AGE_SHELL_TIMES+=("$RUN_S") AGE_SHELL_KBS+=("$RUN_KB")
        mv -- "$AGE_SHELL_OUT" "$WORK/last-shell.age"
        AGE_SHELL_SIZE=$(fsize "$WORK/last-shell.age")
        say "run $i/$REPEAT shell+age:    ${RUN_S}s, $(human "$AGE_SHELL_SIZE")"
      else
        run_pipeline_age
        AGE_PIPE_TIMES+=("$RUN_S") AGE_PIPE_KBS+=("$RUN_KB")
        mv -- "$PIPE_OUT" "$WORK/last-pipeline.age"
        AGE_PIPE_SIZE=$(fsize "$WORK/last-pipeline.age")
        say "run $i/$REPEAT pipeline+age: ${RUN_S}s, $(human "$AGE_PIPE_SIZE"), peak RSS $(human $((RUN_KB * 1024)))"
      fi
    done
  done
  check_age_output "$WORK/last-shell.age" "shell+age"
  check_age_output "$WORK/last-pipeline.age" "pipeline+age"
  say "both encrypted outputs decrypt with age -d -i key.txt | zstd -d to the plain dump's size"

  # The component alone. Its input is the pipeline's own zstd output (what it encrypts in
  # a run), repeated to AGE_MIB MiB; the age CLI encrypts the same bytes for reference.
  AGE_MIB=$(((PLAIN_SIZE / 4 + 1048575) / 1048576))
  ((AGE_MIB < 64)) && AGE_MIB=64
  AGE_SAMPLE=$RESTORE_SRC
  THROUGHPUT_BIN=${THROUGHPUT_BIN:-$REPO/target/release/examples/transform-throughput}
  if [[ ! -x $THROUGHPUT_BIN ]]; then
    say "building $THROUGHPUT_BIN (cargo build --release --example transform-throughput)"
    (cd "$REPO" && cargo build --release --example transform-throughput) >&2 ||
      die "cargo build --release --example transform-throughput failed"
  fi
  say "age component alone: $AGE_MIB MiB of zstd output through encode and decode"
  THROUGHPUT_OUT=$( (cd "$REPO" && AGE_RECIPIENTS_FILE=$AGE_DIR/recipients.txt DATABASE_URL=$URL \
    AGE_IDENTITY="$(cat "$AGE_DIR/key.txt")" \
    PIPELINE_STATE_DIR=$PIPE_STATE_DIR PIPELINE_CACHE_DIR=$PIPE_CACHE_DIR \
    "$THROUGHPUT_BIN" "$ENCRYPTED" age "$AGE_MIB" "$AGE_SAMPLE") 2>"$LOGS/throughput.err") ||
    { cat "$LOGS/throughput.err" >&2; die "transform-throughput failed"; }
  AGE_ENC_LINE=$(grep '^encode:' <<<"$THROUGHPUT_OUT")
  AGE_DEC_LINE=$(grep '^decode:' <<<"$THROUGHPUT_OUT")
  # The same number of bytes through the age CLI (Go, assembly ChaCha20-Poly1305).
  : >"$WORK/age-sample.bin"
  while (($(fsize "$WORK/age-sample.bin") < AGE_MIB * 1048576)); do
    cat -- "$AGE_SAMPLE" >>"$WORK/age-sample.bin"
  done
  truncate -s $((AGE_MIB * 1048576)) -- "$WORK/age-sample.bin"
  t0=$EPOCHREALTIME
  age -r "$AGE_RECIPIENT" <"$WORK/age-sample.bin" >/dev/null
  t1=$EPOCHREALTIME
  AGE_CLI_MBS=$(awk -v n=$((AGE_MIB * 1048576)) -v s="$(secs "$t0" "$t1")" 'BEGIN { printf "%.1f", n / 1e6 / s }')
  rm -f -- "$WORK/age-sample.bin"
fi

# ---------------------------------------------------------------- whole cluster (--cluster)
# `pipeline run pipelines/cluster.toml` (pg_dumpall through the postgres source, zstd)
# against `pg_dumpall | zstd -3 -T0`, alternating as above. pg_dumpall reads every role's
# attributes, so the role becomes a superuser for these runs (the last ones of the script).
CL_SHELL_TIMES=() CL_SHELL_KBS=() CL_PIPE_TIMES=() CL_PIPE_KBS=() CL_SHELL_SIZE='' CL_PIPE_SIZE=''
if ((CLUSTER)); then
  CLUSTER_FILE=$REPO/pipelines/cluster.toml
  [[ -f $CLUSTER_FILE ]] || die "$CLUSTER_FILE not found (needed by --cluster)"
  psql_admin -c "DROP DATABASE IF EXISTS restored"
  psql_admin -c "ALTER ROLE $ROLE SUPERUSER"
  psql_admin -c CHECKPOINT
  CL_URL=$(url_for postgres)
  # pg_dumpall runs pg_dump once per database and does not hand it the URL's password:
  # the one-liner needs PGPASSWORD (the postgres source sets it the same way).
  CL_URL_NOPW="postgresql://$ROLE@127.0.0.1:$PORT/postgres"
  CL_SHELL_OUT=$OUT/shell-cluster.sql.zst
  run_shell_cluster() {
    rm -rf -- "${OUT:?}"/*
    local t0 t1
    t0=$EPOCHREALTIME
    # shellcheck disable=SC2016 # expanded by the inner bash
    "$TIME_BIN" -f '%e %M' -o "$LOGS/time.shell-cluster" bash -c \
      'set -o pipefail; PGPASSWORD=$3 pg_dumpall --dbname="$1" | zstd -3 -T0 -q > "$2"' \
      _ "$CL_URL_NOPW" "$CL_SHELL_OUT" "$PASSWORD" 2>"$LOGS/shell-cluster.err" ||
      { cat "$LOGS/shell-cluster.err" >&2; die "pg_dumpall | zstd failed"; }
    t1=$EPOCHREALTIME
    RUN_S=$(secs "$t0" "$t1")
    RUN_KB=$(tail -n1 "$LOGS/time.shell-cluster" | awk '{ print $2 }')
  }
  run_pipeline_cluster() {
    rm -rf -- "${OUT:?}"/*
    mkdir -p "$PIPE_BACKUP_DIR" "$PIPE_STATE_DIR" "$PIPE_CACHE_DIR"
    local t0 t1 rc=0
    t0=$EPOCHREALTIME
    (cd "$REPO" && CLUSTER_URL=$CL_URL BACKUP_DIR=$PIPE_BACKUP_DIR BACKUP_RETENTION_DAYS=30 \
      PIPELINE_STATE_DIR=$PIPE_STATE_DIR PIPELINE_CACHE_DIR=$PIPE_CACHE_DIR \
      "$TIME_BIN" -f '%e %M' -o "$LOGS/time.pipeline-cluster" "$PIPELINE_BIN" run "$CLUSTER_FILE") \
      >"$LOGS/pipeline-cluster.log" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    if ((rc != 0)); then
      tail -n 30 "$LOGS/pipeline-cluster.log" >&2
      die "pipeline run $CLUSTER_FILE failed (exit $rc)"
    fi
    RUN_S=$(secs "$t0" "$t1")
    RUN_KB=$(tail -n1 "$LOGS/time.pipeline-cluster" | awk '{ print $2 }')
    PIPE_OUT=$(backup_in "$PIPE_BACKUP_DIR")
    [[ -n $PIPE_OUT ]] || die "cluster run left no backup in BACKUP_DIR ($PIPE_BACKUP_DIR)"
  }
  say "cluster warm-up: one untimed run of $CLUSTER_FILE"
  run_pipeline_cluster
  for ((i = 1; i <= REPEAT; i++)); do
    if ((i % 2)); then order=(shell pipeline); else order=(pipeline shell); fi
    for side in "${order[@]}"; do
      if [[ $side == shell ]]; then
        run_shell_cluster
        CL_SHELL_TIMES+=("$RUN_S") CL_SHELL_KBS+=("$RUN_KB")
        CL_SHELL_SIZE=$(fsize "$CL_SHELL_OUT")
        say "run $i/$REPEAT pg_dumpall|zstd: ${RUN_S}s, $(human "$CL_SHELL_SIZE")"
      else
        run_pipeline_cluster
        CL_PIPE_TIMES+=("$RUN_S") CL_PIPE_KBS+=("$RUN_KB")
        CL_PIPE_SIZE=$(fsize "$PIPE_OUT")
        say "run $i/$REPEAT cluster.toml:    ${RUN_S}s, $(human "$CL_PIPE_SIZE"), peak RSS $(human $((RUN_KB * 1024)))"
      fi
    done
  done
fi

# ---------------------------------------------------------------- report
SHELL_MED=$(median "${SHELL_TIMES[@]}")
SHELL_KB=$(printf '%s\n' "${SHELL_KBS[@]}" | sort -n | tail -n1)
RESTORE_MED=$(median "${RESTORE_TIMES[@]}")
CPU=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_KB=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no commit")
[[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && GIT_REV+=" (dirty)"
RSS_LIMIT_KB=$((64 * 1024))

row() { printf '%-30s %-18s %-18s %-10s %s\n' "$@"; }
runs() { local IFS=' '; echo "$*"; }

echo
echo "== pipeline nightly benchmark =="
echo "machine:   $(nproc) CPUs (nproc), ${CPU:-unknown CPU}, $(human $((MEM_KB * 1024))) RAM, $(uname -sr)"
echo "postgres:  $PG_VERSION, shared_buffers=256MB, otherwise defaults; $(zstd -V | sed 's/^\*\** *//; s/ *\*\**$//')"
echo "repo:      $REPO @ $GIT_REV"
if ((SHELL_ONLY)); then
  echo "pipeline:  not run (--shell-only)"
else
  echo "pipeline:  $PIPELINE_BIN (modified $(date -r "$PIPELINE_BIN" '+%F %T')), $NIGHTLY"
  echo "           warmed once before timing (first run compiles the WebAssembly components)"
fi
if ((S3)); then
  echo "s3:        ${S3_VERSION:-s3s-fs} on 127.0.0.1 (this machine, files in \$TMPDIR), bucket $S3_BUCKET, prefix $S3_PREFIX"
  echo "           $NIGHTLY_S3, warmed once, timed after the restores; bucket emptied before each run"
fi
echo "data:      $ROWS rows (users $N_USERS, orders $N_ORDERS, order_items $N_ITEMS, events $N_EVENTS), generated in ${GEN_TOTAL_S}s"
echo "           pg_database_size $(human "$DB_SIZE"), plain dump $(human "$PLAIN_SIZE") ($PLAIN_SIZE bytes)"
echo "timing:    median of $REPEAT run(s), one command at a time, outputs removed before each run"
echo
row "" "shell" "pipeline" "target" "result"
row "" "pg_dump | zstd -3" "run nightly.toml" "" ""
if ((SHELL_ONLY)); then
  NA="n/a (--shell-only)"
  row "wall time (s)" "$SHELL_MED" "-" "" ""
  row "throughput shell/pipeline" "" "-" ">= 0.95" "$NA"
  row "output size" "$(human "$SHELL_SIZE")" "-" "" ""
  row "size pipeline/shell" "" "-" "<= 1.05" "$NA"
  row "peak RSS" "$(human $((SHELL_KB * 1024)))" "-" "< 64 MiB" "$NA"
  row "restore: zstd -dc | psql (s)" "$RESTORE_MED" "-" "" "(shell output: --shell-only)"
  RESULTS=()
else
  PIPE_MED=$(median "${PIPE_TIMES[@]}")
  PIPE_KB=$(printf '%s\n' "${PIPE_KBS[@]}" | sort -n | tail -n1)
  TPUT=$(awk -v s="$SHELL_MED" -v p="$PIPE_MED" 'BEGIN { printf "%.3f", s / p }')
  SZR=$(awk -v s="$SHELL_SIZE" -v p="$PIPE_SIZE" 'BEGIN { printf "%.3f", p / s }')
  V_TPUT=$(verdict "$TPUT" ">=" 0.95)
  V_SIZE=$(verdict "$SZR" "<=" 1.05)
  V_RSS=$(verdict "$PIPE_KB" "<" "$RSS_LIMIT_KB")
  RESULTS=("$V_TPUT" "$V_SIZE" "$V_RSS")
  row "wall time (s)" "$SHELL_MED" "$PIPE_MED" "" ""
  row "throughput shell/pipeline" "" "$TPUT" ">= 0.95" "$V_TPUT"
  row "output size" "$(human "$SHELL_SIZE")" "$(human "$PIPE_SIZE")" "" ""
  row "size pipeline/shell" "" "$SZR" "<= 1.05" "$V_SIZE"
  row "peak RSS" "($(human $((SHELL_KB * 1024))))" "$(human $((PIPE_KB * 1024)))" "< 64 MiB" "$V_RSS"
  row "restore: zstd -dc | psql (s)" "" "$RESTORE_MED" "" "baseline"
  PRESTORE_MED=$(median "${PRESTORE_TIMES[@]}")
  row "restore: pipeline restore (s)" "" "$PRESTORE_MED" "" \
    "$(awk -v a="$RESTORE_MED" -v b="$PRESTORE_MED" 'BEGIN { printf "%.2fx the baseline", b / a }')"
fi
if ((S3)); then
  S3_MED=$(median "${S3_TIMES[@]}")
  S3_KB=$(printf '%s\n' "${S3_KBS[@]}" | sort -n | tail -n1)
  S3_TPUT=$(awk -v s="$SHELL_MED" -v p="$S3_MED" 'BEGIN { printf "%.3f", s / p }')
  V_S3_RSS=$(verdict "$S3_KB" "<" "$RSS_LIMIT_KB")
  RESULTS+=("$V_S3_RSS")
  row "" "" "run nightly-s3.toml" "" ""
  row "local+S3 wall time (s)" "" "$S3_MED" "" ""
  row "throughput shell/local+S3" "" "$S3_TPUT" "" "(local only: $TPUT)"
  row "local+S3 peak RSS" "" "$(human $((S3_KB * 1024)))" "< 64 MiB" "$V_S3_RSS"
  row "S3 object size" "" "$(human "$S3_SIZE")" "" "= local copy (cmp)"
fi
if ((AGE)); then
  AGE_SHELL_MED=$(median "${AGE_SHELL_TIMES[@]}")
  AGE_PIPE_MED=$(median "${AGE_PIPE_TIMES[@]}")
  AGE_PIPE_KB=$(printf '%s\n' "${AGE_PIPE_KBS[@]}" | sort -n | tail -n1)
  AGE_SHELL_KB=$(printf '%s\n' "${AGE_SHELL_KBS[@]}" | sort -n | tail -n1)
  AGE_TPUT=$(awk -v s="$AGE_SHELL_MED" -v p="$AGE_PIPE_MED" 'BEGIN { printf "%.3f", s / p }')
  V_AGE_TPUT=$(verdict "$AGE_TPUT" ">=" 0.95)
  V_AGE_RSS=$(verdict "$AGE_PIPE_KB" "<" "$RSS_LIMIT_KB")
  RESULTS+=("$V_AGE_TPUT" "$V_AGE_RSS")
  row "" "| age -r KEY" "encrypted.toml" "" ""
  row "encrypted wall time (s)" "$AGE_SHELL_MED" "$AGE_PIPE_MED" "" ""
  row "throughput shell/pipeline" "" "$AGE_TPUT" ">= 0.95" "$V_AGE_TPUT"
  row "encrypted output size" "$(human "$AGE_SHELL_SIZE")" "$(human "$AGE_PIPE_SIZE")" "" "both decrypt (age -d)"
  row "encrypted peak RSS" "($(human $((AGE_SHELL_KB * 1024))))" "$(human $((AGE_PIPE_KB * 1024)))" "< 64 MiB" "$V_AGE_RSS"
fi
if ((CLUSTER)); then
  CL_SHELL_MED=$(median "${CL_SHELL_TIMES[@]}")
  CL_PIPE_MED=$(median "${CL_PIPE_TIMES[@]}")
  CL_PIPE_KB=$(printf '%s\n' "${CL_PIPE_KBS[@]}" | sort -n | tail -n1)
  CL_SHELL_KB=$(printf '%s\n' "${CL_SHELL_KBS[@]}" | sort -n | tail -n1)
  CL_TPUT=$(awk -v s="$CL_SHELL_MED" -v p="$CL_PIPE_MED" 'BEGIN { printf "%.3f", s / p }')
  V_CL_TPUT=$(verdict "$CL_TPUT" ">=" 0.95)
  V_CL_RSS=$(verdict "$CL_PIPE_KB" "<" "$RSS_LIMIT_KB")
  RESULTS+=("$V_CL_TPUT" "$V_CL_RSS")
  row "" "pg_dumpall | zstd" "cluster.toml" "" ""
  row "cluster wall time (s)" "$CL_SHELL_MED" "$CL_PIPE_MED" "" ""
  row "throughput shell/pipeline" "" "$CL_TPUT" ">= 0.95" "$V_CL_TPUT"
  row "cluster output size" "$(human "$CL_SHELL_SIZE")" "$(human "$CL_PIPE_SIZE")" "" ""
  row "cluster peak RSS" "($(human $((CL_SHELL_KB * 1024))))" "$(human $((CL_PIPE_KB * 1024)))" "< 64 MiB" "$V_CL_RSS"
fi
echo
echo "runs (s):  shell [$(runs "${SHELL_TIMES[@]}")]"
((SHELL_ONLY)) || echo "           pipeline [$(runs "${PIPE_TIMES[@]}")]"
echo "           restore [$(runs "${RESTORE_TIMES[@]}")] of the $RESTORE_WHAT into a fresh database; row counts match the source"
((SHELL_ONLY)) || echo "           pipeline restore [$(runs "${PRESTORE_TIMES[@]}")]; row counts match the source"
((S3)) && echo "           local+S3 [$(runs "${S3_TIMES[@]}")]"
((AGE)) && echo "           shell+age [$(runs "${AGE_SHELL_TIMES[@]}")], pipeline+age [$(runs "${AGE_PIPE_TIMES[@]}")]"
((CLUSTER)) && echo "           pg_dumpall|zstd [$(runs "${CL_SHELL_TIMES[@]}")], cluster.toml [$(runs "${CL_PIPE_TIMES[@]}")]"
echo "sizes:     shell $SHELL_SIZE bytes (plain/shell $(awk -v a="$PLAIN_SIZE" -v b="$SHELL_SIZE" 'BEGIN { printf "%.2f", a / b }')x)"
if ((!SHELL_ONLY)); then
  echo "           pipeline $PIPE_SIZE bytes ($PIPE_OUT_NAME), decompressing to $PIPE_PLAIN_SIZE bytes (plain dump: $PLAIN_SIZE)"
  ((S3)) && echo "           S3 object $S3_SIZE bytes (s3://$S3_BUCKET/$S3_KEY), byte-identical to the local copy after every run (cmp)"
  echo "peak RSS:  GNU time %M, the largest single process of the command's tree; the shell's is for reference"
fi

if ((AGE)); then
  echo "age alone: component $AGE_ENC_LINE"
  echo "           component $AGE_DEC_LINE"
  echo "           age CLI (age -r, same $AGE_MIB MiB): $AGE_CLI_MBS MB/s"
fi

if ((STRICT)); then
  for r in "${RESULTS[@]}"; do [[ $r == PASS ]] || exit 1; done
fi
