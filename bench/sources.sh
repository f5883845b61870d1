#!/usr/bin/env bash
# Sources benchmark: `pipeline run pipelines/mysql.toml`, `pipelines/redis.toml` and
# `pipelines/sqlite.toml` against the shell pipelines an operator would write instead,
#
#   mariadb-dump --single-transaction --routines --triggers --events --hex-blob \
#       --no-tablespaces DB | zstd -3 -T0 -q > file
#   redis-cli --rdb - | zstd -3 -T0 -q > file
#   sqlite3 -readonly DB .dump | zstd -3 -T0 -q > file
#
# on a throwaway MariaDB server (filled with --rows rows of shop-like data), a
# throwaway Redis server (--keys keys: strings, hashes and lists) and an SQLite file
# (--rows rows of the same orders). Prints wall times
# (median of --repeat runs), the throughput ratio (target >= 0.95), output sizes and the
# pipeline's peak RSS (target < 64 MiB). See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/sources.sh [--rows N] [--keys N] [--repeat N] [--only mysql|redis|sqlite] [--strict]

  --rows N      rows in the MariaDB and SQLite databases (default 1000000)
  --keys N      keys in the Redis server (default 1000000)
  --repeat N    timed runs of each command; the median is reported (default 3)
  --only S      only the `mysql`, `redis` or `sqlite` source
  --strict      exit 1 if any target is missed (default: report only)

environment:
  PIPELINE_BIN  pipeline binary (default <repo>/target/release/pipeline; if that
                is missing it is built with `cargo build --release`)
  TMPDIR        where the throwaway servers and outputs live (default /tmp)
EOF
}

die() { printf 'sources.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ROWS=1000000
KEYS=1000000
REPEAT=3
ONLY=
STRICT=0
while (($#)); do
  case $1 in
    --rows) ROWS=${2:-}; shift 2 || die "--rows needs a value" ;;
    --keys) KEYS=${2:-}; shift 2 || die "--keys needs a value" ;;
    --repeat) REPEAT=${2:-}; shift 2 || die "--repeat needs a value" ;;
    --only) ONLY=${2:-}; shift 2 || die "--only needs a value" ;;
    --strict) STRICT=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $ROWS =~ ^[0-9]+$ ]] && ((ROWS >= 100)) || die "--rows must be an integer >= 100 (got '$ROWS')"
[[ $KEYS =~ ^[0-9]+$ ]] && ((KEYS >= 100)) || die "--keys must be an integer >= 100 (got '$KEYS')"
[[ $REPEAT =~ ^[0-9]+$ ]] && ((REPEAT >= 1)) || die "--repeat must be an integer >= 1 (got '$REPEAT')"
case $ONLY in '' | mysql | redis | sqlite) ;; *) die "--only is mysql, redis or sqlite (got '$ONLY')" ;; esac
want() { [[ -z $ONLY || $ONLY == "$1" ]]; }

unset LC_ALL
export LC_NUMERIC=C
unset MYSQL_PWD MYSQL_HOST MYSQL_TCP_PORT MYSQL_UNIX_PORT REDISCLI_AUTH

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd)
TIME_BIN=/usr/bin/time
[[ -x $TIME_BIN ]] || die "$TIME_BIN (GNU time) not found"
command -v zstd >/dev/null || die "zstd not found"
if want mysql; then
  for tool in mariadb-install-db mariadb mariadb-dump; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install mariadb-server mariadb-client"
  done
  MARIADBD=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  [[ -x $MARIADBD ]] || die "mariadbd not found: apt-get install mariadb-server"
fi
if want sqlite; then
  command -v sqlite3 >/dev/null || die "sqlite3 not found: apt-get install sqlite3"
fi
if want redis; then
  for tool in redis-server redis-cli; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install redis-server redis-tools"
  done
fi

if [[ -n ${PIPELINE_BIN:-} ]]; then
  [[ -x $PIPELINE_BIN ]] || die "PIPELINE_BIN=$PIPELINE_BIN is not an executable file"
else
  PIPELINE_BIN=$REPO/target/release/pipeline
  if [[ ! -x $PIPELINE_BIN ]]; then
    say "building $PIPELINE_BIN with 'cargo build --release'"
    (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
  fi
fi
for s in mysql redis sqlite; do
  want "$s" || continue
  "$PIPELINE_BIN" plugins 2>/dev/null | grep -q "^$s " ||
    die "$PIPELINE_BIN has no built-in $s plugin (stale binary? rebuild it)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pipeline-bench-sources.XXXXXX")
OUT=$WORK/out
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS"
SERVER_PIDS=()
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  local pid
  for pid in "${SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- measuring
# time_cmd LABEL CMD...: runs CMD, appends "seconds peak_kib" to $LOGS/LABEL.times.
time_cmd() {
  local label=$1
  shift
  local t0 t1
  t0=$EPOCHREALTIME
  "$TIME_BIN" -f '%M' -o "$LOGS/$label.rss" "$@" >"$LOGS/$label.out" 2>"$LOGS/$label.err" ||
    { tail -n 20 "$LOGS/$label.err" >&2; die "$label failed"; }
  t1=$EPOCHREALTIME
  printf '%s %s\n' "$(echo "$t1 - $t0" | bc -l)" "$(tail -n1 "$LOGS/$label.rss")" >>"$LOGS/$label.times"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
MISSED=0
report() { # report NAME SHELL_FILE
  local name=$1 shell_file=$2
  local shell_t pipe_t rss ratio shell_size pipe_size pipe_file
  shell_t=$(cut -d' ' -f1 "$LOGS/$name-shell.times" | median)
  pipe_t=$(cut -d' ' -f1 "$LOGS/$name-pipeline.times" | median)
  rss=$(cut -d' ' -f2 "$LOGS/$name-pipeline.times" | sort -n | tail -n1)
  ratio=$(echo "$shell_t / $pipe_t" | bc -l)
  pipe_file=$(find "$OUT/$name-backups" -name '*.zst' -printf '%s %p\n' | sort -n | tail -n1 | cut -d' ' -f2)
  shell_size=$(stat -c %s "$shell_file")
  pipe_size=$(stat -c %s "$pipe_file")
  printf '\n%s (%s)\n' "$name" "$3"
  printf '  shell    %8.2f s   %s bytes\n' "$shell_t" "$shell_size"
  printf '  pipeline %8.2f s   %s bytes   peak RSS %.1f MiB\n' "$pipe_t" "$pipe_size" "$(echo "$rss / 1024" | bc -l)"
  local ok_ratio ok_rss
  ok_ratio=$(echo "$ratio >= 0.95" | bc -l)
  ok_rss=$(echo "$rss < 65536" | bc -l)
  printf '  throughput ratio (shell time / pipeline time) %.2f  target >= 0.95  %s\n' "$ratio" \
    "$( ((ok_ratio)) && echo ok || echo MISSED)"
  printf '  peak RSS %.1f MiB  target < 64 MiB  %s\n' "$(echo "$rss / 1024" | bc -l)" \
    "$( ((ok_rss)) && echo ok || echo MISSED)"
  printf '  size ratio (pipeline / shell) %.3f\n' "$(echo "$pipe_size / $shell_size" | bc -l)"
  ((ok_ratio && ok_rss)) || MISSED=1
}

# bench NAME SHELL_SCRIPT PIPELINE_FILE VAR=VALUE...: alternating timed runs.
bench() {
  local name=$1 shell=$2 file=$3
  shift 3
  local run env=(env "$@" "BACKUP_DIR=$OUT/$name-backups" "PIPELINE_STATE_DIR=$WORK/state-$name"
    "PIPELINE_CACHE_DIR=$WORK/cache")
  say "$name: one untimed run (compiles the components into the cache)"
  "${env[@]}" "$PIPELINE_BIN" run "$file" >"$LOGS/$name-warmup.log" 2>&1 ||
    { tail -n 20 "$LOGS/$name-warmup.log" >&2; die "$name: pipeline run failed"; }
  for ((run = 1; run <= REPEAT; run++)); do
    rm -rf "$OUT/$name-backups" "$WORK/state-$name" "$OUT/$name-shell.zst"
    if ((run % 2)); then
      time_cmd "$name-shell" bash -c "$shell"
      time_cmd "$name-pipeline" "${env[@]}" "$PIPELINE_BIN" run "$file"
    else
      time_cmd "$name-pipeline" "${env[@]}" "$PIPELINE_BIN" run "$file"
      time_cmd "$name-shell" bash -c "$shell"
    fi
    say "$name: run $run of $REPEAT done"
  done
}

say "work dir $WORK; $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"

# ---------------------------------------------------------------- MariaDB
if want mysql; then
  MDB=$WORK/mariadb
  mkdir -p "$MDB"
  ROOT_ARGS=()
  ((EUID == 0)) && ROOT_ARGS=(--user=root)
  mariadb-install-db --no-defaults --datadir="$MDB/data" --auth-root-authentication-method=normal \
    --skip-test-db "${ROOT_ARGS[@]}" >"$LOGS/install-db.log" 2>&1 ||
    { tail -n 20 "$LOGS/install-db.log" >&2; die "mariadb-install-db failed"; }
  MPORT=$(free_port)
  "$MARIADBD" --no-defaults --datadir="$MDB/data" --socket="$MDB/sock" --port="$MPORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --skip-log-bin --log-error="$MDB/server.log" \
    --character-set-server=utf8mb4 --innodb-buffer-pool-size=256M "${ROOT_ARGS[@]}" &
  SERVER_PIDS+=($!)
  for _ in $(seq 600); do
    mariadb --no-defaults -S "$MDB/sock" -u root -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  root_sql() { mariadb --no-defaults -S "$MDB/sock" -u root "$@"; }
  root_sql -e 'SELECT 1' >/dev/null || die "mariadbd did not start: $(tail -n 20 "$MDB/server.log")"
  MPASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  root_sql <<EOF
CREATE DATABASE shop CHARACTER SET utf8mb4;
CREATE USER 'bench'@'%' IDENTIFIED BY '$MPASS';
GRANT ALL ON shop.* TO 'bench'@'%';
EOF
  say "MariaDB $(root_sql -N -e 'SELECT VERSION()') on 127.0.0.1:$MPORT: generating $ROWS rows"
  t0=$EPOCHREALTIME
  # Orders with text drawn from a skewed vocabulary (compresses like prose), amounts, dates.
  word() {
    printf "ELT(1 + FLOOR(POW(RAND(), 2) * 20), 'the', 'order', 'payment', 'shipping', 'customer', \
'refund', 'invoice', 'delivered', 'pending', 'please', 'update', 'account', 'address', 'thanks', \
'support', 'card', 'express', 'warehouse', 'return', 'discount')"
  }
  root_sql shop <<EOF
CREATE TABLE orders (
  id BIGINT PRIMARY KEY, user_id INT NOT NULL, status ENUM('pending','paid','shipped','delivered','cancelled') NOT NULL,
  amount DECIMAL(12,2) NOT NULL, created DATETIME NOT NULL, email VARCHAR(100) NOT NULL, note VARCHAR(300)
) ENGINE=InnoDB;
INSERT INTO orders
SELECT seq, 1 + FLOOR(RAND() * 50000), ELT(1 + FLOOR(RAND() * 5), 'pending','paid','shipped','delivered','cancelled'),
  ROUND(RAND() * 1000, 2), '2024-01-01' + INTERVAL FLOOR(RAND() * 31536000) SECOND,
  CONCAT('user', FLOOR(RAND() * 50000), '@example.com'),
  CONCAT_WS(' ', $(word), $(word), $(word), $(word), MD5(seq))
FROM seq_1_to_$ROWS;
EOF
  say "generated in $(echo "$EPOCHREALTIME - $t0" | bc -l | xargs printf '%.1f') s"
  MURL="mysql://bench:$MPASS@127.0.0.1:$MPORT/shop"
  DUMP_SIZE=$(MYSQL_PWD=$MPASS mariadb-dump --protocol=TCP -h 127.0.0.1 -P "$MPORT" -u bench \
    --single-transaction --routines --triggers --events --hex-blob --no-tablespaces shop | wc -c)
  say "plain dump: $DUMP_SIZE bytes"
  bench mysql "MYSQL_PWD=$MPASS mariadb-dump --protocol=TCP -h 127.0.0.1 -P $MPORT -u bench \
--default-character-set=utf8mb4 --single-transaction --routines --triggers --events --hex-blob \
--no-tablespaces shop | zstd -3 -T0 -q > $OUT/mysql-shell.zst" "$REPO/pipelines/mysql.toml" "MYSQL_URL=$MURL"
  report mysql "$OUT/mysql-shell.zst" "$ROWS rows, plain dump $DUMP_SIZE bytes"
fi

# ---------------------------------------------------------------- Redis
if want redis; then
  RDIR=$WORK/redis
  mkdir -p "$RDIR"
  RPORT=$(free_port)
  RPASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$RDIR" --requirepass "$RPASS" --save '' \
    --appendonly no --repl-diskless-sync-delay 0 --logfile "$RDIR/redis.log" &
  SERVER_PIDS+=($!)
  export REDISCLI_AUTH=$RPASS
  for _ in $(seq 300); do
    [[ $(redis-cli -p "$RPORT" PING 2>/dev/null) == PONG ]] && break
    sleep 0.1
  done
  say "Redis $(redis-server --version | awk '{ print $3 }') on 127.0.0.1:$RPORT: loading $KEYS keys"
  t0=$EPOCHREALTIME
  # A third each: short strings of prose, hashes of a user, lists of events.
  awk -v n="$KEYS" 'BEGIN {
    split("the order payment shipping customer refund invoice delivered pending please", w, " ")
    srand(1)
    for (i = 0; i < n; i++) {
      k = i % 3
      if (k == 0) {
        v = w[1 + int(rand() * 10)] " " w[1 + int(rand() * 10)] " " w[1 + int(rand() * 10)] " " i
        printf "*3\r\n$3\r\nSET\r\n$%d\r\nstr:%d\r\n$%d\r\n%s\r\n", length("str:" i), i, length(v), v
      } else if (k == 1) {
        e = "user" i "@example.com"; c = sprintf("%d", int(rand() * 1000))
        printf "*6\r\n$4\r\nHSET\r\n$%d\r\nuser:%d\r\n$5\r\nemail\r\n$%d\r\n%s\r\n$6\r\ncredit\r\n$%d\r\n%s\r\n", length("user:" i), i, length(e), e, length(c), c
      } else {
        a = w[1 + int(rand() * 10)]; b = w[1 + int(rand() * 10)]
        printf "*4\r\n$5\r\nRPUSH\r\n$%d\r\nlog:%d\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length("log:" i), i, length(a), a, length(b), b
      }
    }
  }' | redis-cli -p "$RPORT" --pipe >"$LOGS/redis-load.log" 2>&1 ||
    { tail -n 5 "$LOGS/redis-load.log" >&2; die "loading Redis failed"; }
  say "loaded in $(echo "$EPOCHREALTIME - $t0" | bc -l | xargs printf '%.1f') s; $(redis-cli -p "$RPORT" DBSIZE) keys"
  RDB_SIZE=$(redis-cli -p "$RPORT" --rdb - 2>/dev/null | wc -c)
  say "RDB snapshot: $RDB_SIZE bytes"
  RURL="redis://:$RPASS@127.0.0.1:$RPORT"
  bench redis "redis-cli -p $RPORT --rdb - 2>/dev/null | zstd -3 -T0 -q > $OUT/redis-shell.zst" \
    "$REPO/pipelines/redis.toml" "REDIS_URL=$RURL"
  report redis "$OUT/redis-shell.zst" "$KEYS keys, RDB $RDB_SIZE bytes"
  unset REDISCLI_AUTH
fi

# ---------------------------------------------------------------- SQLite
if want sqlite; then
  SDB=$WORK/app.db
  say "SQLite $(sqlite3 --version | awk '{ print $1 }'): generating $ROWS rows in $SDB"
  t0=$EPOCHREALTIME
  # The same orders as MariaDB's, in WAL mode like a live application's database.
  python3 - "$SDB" "$ROWS" <<'PY'
import hashlib, random, sqlite3, sys
path, rows = sys.argv[1], int(sys.argv[2])
words = ("the order payment shipping customer refund invoice delivered pending please update "
         "account address thanks support card express warehouse return discount").split()
weights = [1 / (i + 1) for i in range(len(words))]
rnd = random.Random(1)
db = sqlite3.connect(path)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, status TEXT NOT NULL, "
           "amount REAL NOT NULL, created TEXT NOT NULL, email TEXT NOT NULL, note TEXT)")
statuses = ["pending", "paid", "shipped", "delivered", "cancelled"]
def gen():
    for i in range(1, rows + 1):
        note = " ".join(rnd.choices(words, weights, k=4)) + " " + hashlib.md5(str(i).encode()).hexdigest()
        yield (i, rnd.randint(1, 50000), rnd.choice(statuses), round(rnd.random() * 1000, 2),
               "2024-%02d-%02d %02d:%02d:00" % (rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(0, 23), rnd.randint(0, 59)),
               "user%d@example.com" % rnd.randint(1, 50000), note)
db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?)", gen())
db.commit()
db.close()
PY
  say "generated in $(echo "$EPOCHREALTIME - $t0" | bc -l | xargs printf '%.1f') s; $(stat -c %s "$SDB") bytes"
  DUMP_SIZE=$(sqlite3 -readonly "$SDB" .dump | wc -c)
  say "plain dump: $DUMP_SIZE bytes"
  bench sqlite "sqlite3 -readonly $SDB .dump | zstd -3 -T0 -q > $OUT/sqlite-shell.zst" \
    "$REPO/pipelines/sqlite.toml" "SQLITE_DB=$SDB"
  report sqlite "$OUT/sqlite-shell.zst" "$ROWS rows, plain dump $DUMP_SIZE bytes"
fi

if ((MISSED)); then
  printf '\nsome targets were missed\n'
  ((STRICT)) && exit 1
fi
exit 0
