//! Test harness: a throwaway PostgreSQL cluster built from the machine's binaries.
//!
//! Include from an integration test with `mod support;`. Every `PgCluster` is fully
//! independent (own temp dir, own port, own unix socket dir), so tests may run in
//! parallel threads of one process. Nothing is mocked and nothing is skipped: a missing
//! prerequisite panics with instructions.
//!
//! When the tests run as root (CI), initdb / pg_ctl / postgres run as the `postgres`
//! system user through `runuser`; the client tools (psql, pg_dump, pg_isready) run as
//! the current user.

#![allow(dead_code)]

pub mod cargo;
pub mod faultproxy;
pub mod git;
pub mod mariadb;
pub mod moto;
pub mod processes;
pub mod pty;
pub mod receiver;
pub mod redis;
pub mod registry;
pub mod s3;
pub mod scratch;
pub mod smtp;
pub mod webdav;

use std::ffi::{CString, OsStr};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "install the PostgreSQL server binaries (Debian/Ubuntu: `apt-get install postgresql`; \
     they land in /usr/lib/postgresql/<version>/bin), or point PG_BIN at a directory containing \
     initdb, pg_ctl, postgres, psql, pg_dump and pg_isready";

/// Binaries the harness needs in the bin dir.
const REQUIRED_BINARIES: &[&str] = &[
    "initdb",
    "pg_ctl",
    "postgres",
    "psql",
    "pg_dump",
    "pg_isready",
];

/// How long to wait for the server to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running, throwaway PostgreSQL cluster. Stopped and deleted on drop.
pub struct PgCluster {
    /// Owns the temp dir; removed when the cluster is dropped (after the server is stopped).
    tmp: tempfile::TempDir,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    /// Run server-side commands (initdb, pg_ctl) as the `postgres` user via runuser.
    as_postgres_user: bool,
    running: AtomicBool,
}

impl PgCluster {
    /// Password of the `app` login role: every URL-hostile character we could think of.
    pub const PASSWORD: &'static str = "p@ss:w/rd%?&=#x";

    /// initdb + pg_ctl start (~1 s). See the module docs.
    pub fn start() -> PgCluster {
        let bin_dir = find_bin_dir();
        let as_postgres_user = unsafe { libc::geteuid() } == 0;
        let postgres_ids = if as_postgres_user {
            Some(root_prerequisites())
        } else {
            None
        };

        let tmp = tempfile::Builder::new()
            .prefix("pgcluster-")
            .tempdir_in(std::env::temp_dir())
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a temp dir under {}: {e}",
                    std::env::temp_dir().display()
                )
            });
        let root = tmp.path().to_path_buf();
        let data_dir = root.join("data");
        let socket_dir = root.join("sock");
        let log_file = root.join("server.log");
        std::fs::create_dir(&socket_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", socket_dir.display()));

        // Unix socket paths are limited to 107 bytes (sun_path); ".s.PGSQL.65535" is 14.
        let socket_len = socket_dir.as_os_str().len() + "/.s.PGSQL.65535".len();
        if socket_len > 107 {
            panic!(
                "the unix socket path under {} would be {socket_len} bytes, over the 107-byte limit; \
                 set TMPDIR to a shorter directory (e.g. TMPDIR=/tmp)",
                socket_dir.display()
            );
        }

        if let Some((uid, gid)) = postgres_ids {
            make_traversable_for_others(&root);
            for p in [&root, &socket_dir] {
                chown(p, uid, gid);
            }
        }

        let mut cluster = PgCluster {
            tmp,
            data_dir,
            socket_dir,
            log_file,
            port: 0,
            bin_dir,
            as_postgres_user,
            running: AtomicBool::new(false),
        };
        cluster.initdb();
        cluster.start_server();
        cluster.psql(
            "postgres",
            &format!(
                "CREATE ROLE app LOGIN PASSWORD {};",
                quote_literal(Self::PASSWORD)
            ),
        );
        cluster
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// `postgresql://app:<percent-encoded password>@127.0.0.1:<port>/<db>?sslmode=disable&application_name=pipeline-test`
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://app:{}@127.0.0.1:{}/{}?sslmode=disable&application_name=pipeline-test",
            percent_encode(Self::PASSWORD),
            self.port,
            percent_encode(db)
        )
    }

    /// `CREATE DATABASE db OWNER app`.
    pub fn create_db(&self, db: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {} OWNER app;", quote_ident(db)),
        );
    }

    /// Runs `sql` as the superuser `postgres` over the unix socket into `db`
    /// (`psql -X -q -A -t -v ON_ERROR_STOP=1`, SQL fed on stdin so several statements,
    /// including ones that cannot run in a transaction block, are fine).
    /// Output is unaligned, tuples only: `SELECT count(*) ...` returns e.g. `"3000\n"`.
    /// Panics with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = self.psql_command(db);
        cmd.args(["-f", "-"]);
        let out = run_with_stdin(cmd, sql.as_bytes());
        if !out.status.success() {
            panic!(
                "psql into database {db:?} failed ({}):\n--- stderr ---\n{}\n--- sql ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                truncate(sql, 4000)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`psql`](Self::psql) but runs a SQL file (`psql -v ON_ERROR_STOP=1 -f file`),
    /// e.g. to restore a plain dump. `Err` carries psql's exit status and stderr.
    pub fn psql_file(&self, db: &str, file: &Path) -> Result<String, String> {
        let mut cmd = self.psql_command(db);
        cmd.arg("-f").arg(file);
        let out = output(cmd);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "psql -f {} into database {db:?} failed ({}): {}",
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A canonical text of the database's schema and data: `pg_dump --no-owner --no-acl`
    /// (as the superuser), with `--` comment lines, `\restrict` / `\unrestrict` lines and
    /// repeated blank lines removed, and the rows of every `COPY ... FROM stdin` block
    /// sorted (so physical row order does not matter). Equal content gives equal strings.
    pub fn canonical_dump(&self, db: &str) -> String {
        let mut cmd = self.client_command("pg_dump");
        cmd.args(["--no-owner", "--no-acl"])
            .arg(format!("--dbname={}", self.superuser_conninfo(db)));
        let out = output(cmd);
        if !out.status.success() {
            panic!(
                "pg_dump of database {db:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8(out.stdout)
            .unwrap_or_else(|e| panic!("pg_dump of {db:?} produced non-UTF-8 output: {e}"));
        canonicalize_dump(&text)
    }

    /// Stops the server (`pg_ctl stop -m fast`), simulating "database down".
    /// Calling it again is a no-op. The cluster may still be dropped afterwards.
    pub fn stop(&self) {
        if !self.running.load(Ordering::SeqCst) {
            return;
        }
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "30"]);
        let out = output(cmd);
        if !out.status.success() {
            panic!(
                "pg_ctl stop -m fast failed ({}):\n{}{}\n--- server log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.server_log()
            );
        }
        self.running.store(false, Ordering::SeqCst);
    }

    /// Contents of the server log (for diagnostics).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log_file)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_file.display()))
    }

    // ---------------------------------------------------------------- internals

    fn initdb(&self) {
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        let out = output(cmd);
        if !out.status.success() {
            panic!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let hba = "# written by the test harness\n\
                   local all all trust\n\
                   host  all all 127.0.0.1/32 scram-sha-256\n";
        self.write_server_file(&self.data_dir.join("pg_hba.conf"), hba);

        let conf_path = self.data_dir.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", conf_path.display()));
        // The port is passed on the pg_ctl command line (it may change on a retry).
        write!(
            conf,
            "\n# --- test harness ---\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = '32MB'\n\
             password_encryption = 'scram-sha-256'\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             lc_messages = 'C'\n",
            quote_conf(&self.socket_dir.to_string_lossy())
        )
        .unwrap();
        self.write_server_file(&conf_path, &conf);
    }

    /// Writes a file in the data dir. Root can write anywhere and the file keeps the
    /// owner it had (initdb created it as `postgres`), so no chown is needed.
    fn write_server_file(&self, path: &Path, contents: &str) {
        std::fs::write(path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// pg_ctl start on a free port; retries with a new port if another process grabbed it
    /// between our probe and the server's bind.
    fn start_server(&mut self) {
        const ATTEMPTS: usize = 5;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        for attempt in 1..=ATTEMPTS {
            self.port = free_port();
            let _ = std::fs::remove_file(&self.log_file);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut cmd = self.server_command("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .arg("-o")
                .arg(format!("-p {}", self.port))
                .arg("-w")
                .arg("-t")
                .arg(remaining.as_secs().max(1).to_string());
            // From here on Drop must try to stop the server, even if pg_ctl reports failure
            // (e.g. a timeout leaves a postmaster running).
            self.running.store(true, Ordering::SeqCst);
            let out = output(cmd);
            if out.status.success() {
                self.wait_ready(deadline);
                return;
            }
            let log = self.server_log();
            let port_taken = log.contains("Address already in use")
                || log.contains("could not create any TCP/IP sockets");
            if port_taken && attempt < ATTEMPTS && Instant::now() < deadline {
                self.kill_server();
                continue;
            }
            panic!(
                "pg_ctl start failed ({}) on port {} (attempt {attempt}):\n{}{}\n--- server log ({}) ---\n{}",
                out.status,
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_file.display(),
                log
            );
        }
    }

    /// pg_ctl -w already waited; confirm with pg_isready on both the socket and TCP.
    fn wait_ready(&self, deadline: Instant) {
        loop {
            let socket_ok = self.pg_isready(&self.socket_dir.to_string_lossy());
            let tcp_ok = socket_ok && self.pg_isready("127.0.0.1");
            if socket_ok && tcp_ok {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL did not become ready within {:?} (port {}, socket dir {}).\n--- server log ---\n{}",
                    STARTUP_TIMEOUT,
                    self.port,
                    self.socket_dir.display(),
                    self.server_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pg_isready(&self, host: &str) -> bool {
        let mut cmd = self.client_command("pg_isready");
        cmd.args([
            "-q", "-t", "2", "-U", "postgres", "-d", "postgres", "-h", host, "-p",
        ])
        .arg(self.port.to_string());
        output(cmd).status.success()
    }

    /// Best-effort immediate stop; never panics.
    fn kill_server(&self) {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let stopped = cmd.status().map(|s| s.success()).unwrap_or(false);
        // If pg_ctl could not do it, SIGKILL the postmaster named in postmaster.pid
        // (only if that pid still is a postgres process, so a stale file cannot hit a stranger).
        if !stopped
            && let Ok(pidfile) = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            && let Some(pid) = pidfile
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            && pid > 0
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        self.running.store(false, Ordering::SeqCst);
    }

    fn superuser_conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={} connect_timeout=10",
            quote_conninfo(&self.socket_dir.to_string_lossy()),
            self.port,
            quote_conninfo(db)
        )
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut cmd = self.client_command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!("--dbname={}", self.superuser_conninfo(db)));
        cmd
    }

    /// A client tool (psql, pg_dump, pg_isready), run as the current user with a clean
    /// libpq environment.
    fn client_command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(tool));
        scrub_pg_env(&mut cmd);
        cmd.current_dir(self.tmp.path());
        cmd
    }

    /// A server tool (initdb, pg_ctl): as `postgres` via runuser when we are root.
    fn server_command(&self, tool: &str) -> Command {
        let exe = self.bin_dir.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        scrub_pg_env(&mut cmd);
        // The caller's cwd (e.g. /root/...) may not be accessible to `postgres`.
        cmd.current_dir(self.tmp.path());
        cmd
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Always attempt, even after stop(): cheap, and covers a half-failed start.
        // Errors (already stopped, ...) are ignored; nothing here may panic.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.kill_server()));
        // `tmp` (TempDir) is dropped after this and removes the directory, ignoring errors.
    }
}

/// Loads a small but awkward, fully deterministic dataset into `db`. All objects are
/// created as (and owned by) `app`, so the tool under test can dump them over the app URL.
///
/// Contents: enum `mood`; `customers` (serial PK, text with quotes / non-ASCII / emoji /
/// backslashes / tabs / newlines / `\.` / literal `\N` vs NULL, enum, timestamptz,
/// numeric(12,2), jsonb, bytea incl. NUL bytes; 1000 rows); `orders` (bigint identity PK,
/// FK to customers, numeric with large scale, text[]; 3000 rows); `"Odd Table"` (quoted
/// identifiers, a generated column; 200 rows); an index, a unique constraint, a check
/// constraint, a view, and comments.
/// A table pg_dump can lock but not copy (row-level security applies to `app`), sorted
/// after `noise`: pg_dump fails after it has streamed megabytes.
pub fn fail_late(pg: &PgCluster, db: &str) {
    pg.psql(
        db,
        "CREATE TABLE zz_private (x int); INSERT INTO zz_private VALUES (1); \
         ALTER TABLE zz_private ENABLE ROW LEVEL SECURITY; GRANT SELECT ON zz_private TO app;",
    );
}

/// A table `noise` of `rows` random rows (an id and 64 hex characters), owned by `app`: about
/// 38 bytes of compressed dump per row, so 500 000 rows are four 5 MiB parts of an upload.
pub fn load_noise(pg: &PgCluster, db: &str, rows: u32) {
    pg.psql(
        db,
        &format!(
            "SET ROLE app; CREATE TABLE noise AS SELECT i, md5(random()::text) || md5(random()::text) AS h \
             FROM generate_series(1, {rows}) i;"
        ),
    );
}

/// The test-only `misbehave` plugin (`plugins/testing/misbehave`), built with the host.
pub fn misbehave_wasm() -> PathBuf {
    Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_misbehave.wasm")
}

pub fn load_sample(pg: &PgCluster, db: &str) {
    pg.psql(db, SAMPLE_SQL);
}

const SAMPLE_SQL: &str = r#"
SET ROLE app;
SET client_min_messages = warning;

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'très content');

CREATE TABLE customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text UNIQUE,
    mood        mood NOT NULL DEFAULT 'ok',
    created_at  timestamptz NOT NULL,
    balance     numeric(12,2) NOT NULL CHECK (balance > -1000000),
    profile     jsonb,
    avatar      bytea
);
COMMENT ON TABLE customers IS 'Customers; note the ''quotes'' and the ünïcødé';

INSERT INTO customers (name, email, mood, created_at, balance, profile, avatar)
SELECT
    CASE i % 7
        WHEN 0 THEN 'O''Brien "the ' || i || '"'
        WHEN 1 THEN 'Zoë Ünïcødé 日本語 🐘 #' || i
        WHEN 2 THEN E'tab\there, newline\nthere, CR\r, backslash \\ #' || i
        WHEN 3 THEN E'\\.'
        WHEN 4 THEN E'\\N'
        WHEN 5 THEN '-- not a comment ' || i
        ELSE 'plain customer ' || i
    END,
    CASE WHEN i % 10 = 0 THEN NULL ELSE 'user' || i || '@example.com' END,
    (ARRAY['sad', 'ok', 'happy', 'très content']::mood[])[1 + i % 4],
    timestamptz '2024-01-01 00:00:00+00' + i * interval '37 minutes 13.123456 seconds',
    round((i * 13.37 - 5000)::numeric, 2),
    CASE WHEN i % 9 = 0 THEN NULL ELSE jsonb_build_object(
        'i', i,
        'name', 'he said "hi" \ ' || i,
        'unicode', 'ça va? — ✓',
        'nested', jsonb_build_array(i, i * 0.5, true, NULL, jsonb_build_object('k', repeat('x', i % 5))),
        'big', 12345678901234567890
    ) END,
    CASE WHEN i % 11 = 0 THEN NULL
         ELSE decode(md5(i::text), 'hex') || '\x00ff0a0d5c'::bytea END
FROM generate_series(1, 1000) AS s(i);

CREATE TABLE orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  integer NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    placed_at    timestamptz NOT NULL,
    total        numeric NOT NULL,
    note         text,
    tags         text[]
);
CREATE INDEX orders_customer_placed_idx ON orders (customer_id, placed_at DESC);

INSERT INTO orders (customer_id, placed_at, total, note, tags)
SELECT
    1 + (i * 7919) % 1000,
    timestamptz '2024-06-01 12:00:00+02' + i * interval '1 hour 1 second',
    (i::numeric * 1.000000000000000001) / 7,
    CASE WHEN i % 3 = 0 THEN NULL ELSE 'note ' || i || E' with \'quote\' and ½' END,
    ARRAY['tag' || (i % 5), 'with,comma', 'with "dq"', 'ü']
FROM generate_series(1, 3000) AS s(i);

CREATE TABLE "Odd Table" (
    "Weird ""Col""" integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "ÄÖÜ" text,
    doubled integer GENERATED ALWAYS AS ("Weird ""Col""" * 2) STORED
);
INSERT INTO "Odd Table" ("ÄÖÜ") SELECT repeat('ß', i % 13) FROM generate_series(1, 200) AS s(i);

CREATE VIEW customer_totals AS
SELECT c.id, c.name, c.mood, count(o.id) AS orders, coalesce(sum(o.total), 0) AS total
FROM customers c
LEFT JOIN orders o ON o.customer_id = c.id
GROUP BY c.id, c.name, c.mood;
COMMENT ON VIEW customer_totals IS 'per-customer order totals';

RESET ROLE;
"#;

// -------------------------------------------------------------------- helpers

/// `PG_BIN`, else the highest-versioned `/usr/lib/postgresql/<v>/bin` containing `initdb`.
fn find_bin_dir() -> PathBuf {
    let dir = if let Some(bin) = std::env::var_os("PG_BIN") {
        PathBuf::from(bin)
    } else {
        let mut best: Option<(Vec<u64>, PathBuf)> = None;
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            for entry in entries.flatten() {
                let bin = entry.path().join("bin");
                if !bin.join("initdb").is_file() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let version: Vec<u64> = name
                    .split('.')
                    .map(|p| p.parse::<u64>().unwrap_or(0))
                    .collect();
                if best.as_ref().is_none_or(|(v, _)| version > *v) {
                    best = Some((version, bin));
                }
            }
        }
        match best {
            Some((_, bin)) => bin,
            None => panic!(
                "no PostgreSQL server binaries found (no /usr/lib/postgresql/*/bin/initdb and PG_BIN unset): {INSTALL_HINT}"
            ),
        }
    };
    let missing: Vec<&str> = REQUIRED_BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        panic!(
            "PostgreSQL bin dir {} lacks {}: {INSTALL_HINT}",
            dir.display(),
            missing.join(", ")
        );
    }
    dir
}

/// Running as root: need `runuser` and a `postgres` system user. Returns its uid/gid.
fn root_prerequisites() -> (libc::uid_t, libc::gid_t) {
    let runuser_ok = Command::new("runuser")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !runuser_ok {
        panic!(
            "tests run as root, and initdb/postgres refuse to run as root; the harness needs `runuser` \
             to switch to the `postgres` user (Debian/Ubuntu: `apt-get install util-linux`), or run the tests as a non-root user"
        );
    }
    match lookup_user("postgres") {
        Some(ids) => ids,
        None => panic!(
            "tests run as root, and initdb/postgres refuse to run as root; the harness runs them as the \
             `postgres` system user, which does not exist. `apt-get install postgresql` creates it \
             (or `useradd --system postgres`), or run the tests as a non-root user"
        ),
    }
}

/// Thread-safe getpwnam_r.
fn lookup_user(name: &str) -> Option<(libc::uid_t, libc::gid_t)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    Some((pwd.pw_uid, pwd.pw_gid))
}

fn chown(path: &Path, uid: libc::uid_t, gid: libc::gid_t) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("path contains NUL");
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    if rc != 0 {
        panic!(
            "chown {} to the postgres user failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// The `postgres` user must be able to traverse every ancestor of `dir`. If the temp dir
/// itself lacks o+x (e.g. a private TMPDIR), add it; for any other ancestor, panic.
fn make_traversable_for_others(dir: &Path) {
    let temp_root = std::env::temp_dir();
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 != 0 {
            continue;
        }
        if ancestor == temp_root.as_path() {
            let mut perms = meta.permissions();
            perms.set_mode(mode | 0o001);
            std::fs::set_permissions(ancestor, perms).unwrap_or_else(|e| {
                panic!("cannot make {} traversable (o+x): {e}", ancestor.display())
            });
        } else {
            panic!(
                "{} (an ancestor of the cluster dir {}) is not traversable by the `postgres` user; \
                 set TMPDIR to a world-traversable directory such as /tmp",
                ancestor.display(),
                dir.display()
            );
        }
    }
}

/// Binds 127.0.0.1:0, reads the port, releases it.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener.local_addr().unwrap().port()
}

/// Remove every PG* variable (PGHOST, PGPORT, PGUSER, PGDATA, PGPASSWORD, PGSERVICE,
/// PGOPTIONS, ...) so the caller's environment cannot redirect or alter the commands.
fn scrub_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_MESSAGES", "C");
}

fn output(mut cmd: Command) -> Output {
    let program: &OsStr = cmd.get_program();
    let program = program.to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"))
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Write from a thread so a large script cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program} failed: {e}"));
    let _ = writer.join();
    out
}

fn canonicalize_dump(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("--")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict")
        {
            continue;
        }
        if line.trim().is_empty() {
            if out.last().is_some_and(|l| !l.is_empty()) {
                out.push("");
            }
            continue;
        }
        out.push(line);
        if line.starts_with("COPY ") && line.ends_with(" FROM stdin;") {
            let mut rows: Vec<&str> = Vec::new();
            let mut terminated = false;
            for row in lines.by_ref() {
                if row == "\\." {
                    terminated = true;
                    break;
                }
                rows.push(row);
            }
            rows.sort_unstable();
            out.extend(rows);
            if terminated {
                out.push("\\.");
            }
        }
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

/// SQL string literal.
fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// postgresql.conf string value.
fn quote_conf(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// SQL identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// libpq conninfo value.
fn quote_conninfo(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
