//! A throwaway MariaDB server built from the machine's binaries (Debian's `mariadb-server`):
//! `mariadb-install-db` into a temp dir, then `mariadbd` on a private socket and a free
//! port of 127.0.0.1. Every server is independent, so tests may run in parallel. A missing
//! binary panics saying what to install.
//!
//! The server runs as the current user (`--user=root` when that is root: mariadbd refuses
//! root otherwise). `root` has no password and is reached over the socket only (the
//! harness's own statements); the tools under test log in over TCP as `app`, whose
//! password is every URL-hostile character we could think of.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "install MariaDB (Debian/Ubuntu: `apt-get install mariadb-server \
     mariadb-client`, or scripts/install-prerequisites.sh --tests)";

/// How long to wait for the server to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct MariaDb {
    tmp: tempfile::TempDir,
    socket: PathBuf,
    port: u16,
    server: Child,
}

impl MariaDb {
    /// Password of the `app` user.
    pub const PASSWORD: &'static str = "p@ss:w/rd%?&=#x";

    /// mariadb-install-db + mariadbd (~5 s).
    pub fn start() -> MariaDb {
        for tool in ["mariadb-install-db", "mariadbd", "mariadb", "mariadb-dump"] {
            if find(tool).is_none() {
                panic!("`{tool}` is not installed: {INSTALL_HINT}");
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("mariadb-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let data = tmp.path().join("data");
        let socket = tmp.path().join("mysqld.sock");
        let log = tmp.path().join("server.log");
        // Its own temporary directory: a mariadbd starting up deletes every `#sql*` file in
        // its tmpdir, which in a shared /tmp are the temporary tables of another test's
        // mariadb-install-db ("Unknown table 'mysql.tmp_user_sys'").
        let scratch = tmp.path().join("tmp");
        std::fs::create_dir(&scratch)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", scratch.display()));
        let root = unsafe { libc::geteuid() } == 0;

        let mut install = Command::new(find("mariadb-install-db").unwrap_or_default());
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", scratch.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if root {
            install.arg("--user=root");
        }
        let out = output(install);
        if !out.status.success() {
            panic!(
                "mariadb-install-db failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = super::free_port();
            let mut cmd = Command::new(find("mariadbd").unwrap_or_default());
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", scratch.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--port={port}"))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!(
                    "--pid-file={}",
                    tmp.path().join("mariadbd.pid").display()
                ))
                .args([
                    "--bind-address=127.0.0.1",
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_unicode_ci",
                    "--innodb-buffer-pool-size=64M",
                    "--innodb-log-file-size=64M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--skip-innodb-doublewrite",
                    "--event-scheduler=OFF",
                    "--default-time-zone=+00:00",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if root {
                cmd.arg("--user=root");
            }
            let mut server = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start mariadbd: {e}; {INSTALL_HINT}"));
            match wait_ready(&mut server, &socket, &log) {
                Ok(()) => {
                    let db = MariaDb {
                        tmp,
                        socket,
                        port,
                        server,
                    };
                    db.root_sql(
                        "",
                        &format!(
                            "CREATE USER 'app'@'%' IDENTIFIED BY {};",
                            quote(Self::PASSWORD)
                        ),
                    );
                    return db;
                }
                Err(text) => {
                    let _ = server.kill();
                    let _ = server.wait();
                    let taken = text.contains("Address already in use");
                    last_log = text;
                    if !taken {
                        break;
                    }
                    // Another process took the port between the probe and the bind.
                }
            }
        }
        panic!("mariadbd did not start:\n--- server log ---\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `mysql://app:<percent-encoded password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "mysql://app:{}@127.0.0.1:{}/{}",
            super::percent_encode(Self::PASSWORD),
            self.port,
            super::percent_encode(db)
        )
    }

    /// The same database over the server's socket.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "mariadb://app:{}@localhost/{}?socket={}",
            super::percent_encode(Self::PASSWORD),
            super::percent_encode(db),
            super::percent_encode(&self.socket.to_string_lossy())
        )
    }

    /// `CREATE DATABASE db` (utf8mb4), everything on it granted to `app`.
    pub fn create_db(&self, db: &str) {
        self.root_sql(
            "",
            &format!(
                "CREATE DATABASE `{db}` CHARACTER SET utf8mb4; GRANT ALL ON `{db}`.* TO 'app'@'%';"
            ),
        );
    }

    /// Runs `sql` (statements, `DELIMITER` allowed) as `app` over TCP in `db`; the objects
    /// it creates are `app`'s, as a dump by `app` expects. Returns the output (tab-separated,
    /// no headers).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let mut cmd = client();
        cmd.current_dir(self.tmp.path())
            .args([
                "--protocol=TCP",
                "--host=127.0.0.1",
                &format!("--port={}", self.port),
                "--user=app",
                &format!("--database={db}"),
            ])
            .env("MYSQL_PWD", Self::PASSWORD);
        run(cmd, sql)
    }

    /// Runs `sql` as `root` over the socket (`db` may be empty).
    pub fn root_sql(&self, db: &str, sql: &str) -> String {
        let mut cmd = root_command(&self.socket);
        cmd.current_dir(self.tmp.path());
        if !db.is_empty() {
            cmd.arg(format!("--database={db}"));
        }
        run(cmd, sql)
    }

    /// Tables, views, sequences, routines and events in `db`.
    pub fn count_objects(&self, db: &str) -> u64 {
        let n = self.root_sql(
            "",
            &format!(
                "SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '{db}') \
                 + (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = '{db}') \
                 + (SELECT COUNT(*) FROM information_schema.events WHERE event_schema = '{db}');"
            ),
        );
        n.trim()
            .parse()
            .unwrap_or_else(|e| panic!("count of objects in {db}: {n:?}: {e}"))
    }

    /// A canonical text of `db`'s schema and data: `mariadb-dump` as root without comments
    /// or dates, one row per INSERT, rows in primary key order. Equal content gives equal
    /// text.
    pub fn canonical_dump(&self, db: &str) -> String {
        let dump = || {
            let mut cmd = Command::new(find("mariadb-dump").unwrap_or_default());
            cmd.arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args([
                    "--protocol=SOCKET",
                    "--user=root",
                    "--default-character-set=utf8mb4",
                    "--skip-comments",
                    "--skip-dump-date",
                    "--skip-extended-insert",
                    "--order-by-primary",
                    "--routines",
                    "--triggers",
                    "--events",
                    "--hex-blob",
                    db,
                ]);
            output(cmd)
        };
        let mut out = dump();
        // The oracle's own connection dropped (error 2013, seen once in CI on a loaded
        // machine, the pipeline's dump before it whole): ask once more. A server that
        // crashed fails again, and its log says why.
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("(2013)") {
            std::thread::sleep(std::time::Duration::from_millis(500));
            out = dump();
        }
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.tmp.path().join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "mariadb-dump {db} failed ({}): {}\n--- server log (last lines) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                tail.join("\n")
            );
        }
        String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("dump of {db} is not UTF-8: {e}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // Nothing of the server is kept: no clean shutdown needed.
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A small but awkward schema and data set, created as `app`: quotes, backslashes, NUL and
/// CR/LF in text and blobs, emoji, JSON, DECIMAL, DATETIME(6), ENUM/SET, a generated
/// column, a foreign key, a view, a procedure, a function, a trigger, an event and a
/// sequence, and a table of 2000 rows.
pub const SAMPLE: &str = r#"
CREATE TABLE customers (
    id INT AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    note TEXT,
    avatar BLOB,
    balance DECIMAL(12,2) NOT NULL,
    created DATETIME(6),
    mood ENUM('sad', 'ok', 'très content') NOT NULL DEFAULT 'ok',
    tags SET('a', 'b', 'ü'),
    profile JSON,
    name_length INT AS (CHAR_LENGTH(name)) STORED,
    UNIQUE KEY (name)
) DEFAULT CHARSET = utf8mb4;
INSERT INTO customers (name, note, avatar, balance, created, mood, tags, profile) VALUES
    ('O''Brien "the first"', 'tab\there\nnewline \\ backslash \r CR', UNHEX('00FF0A0D5C27225C30'), -12.50, '2024-01-01 10:00:00.123456', 'très content', 'a,ü', '{"a": [1, "ü", null], "b": {"c": true}}'),
    ('Zoë Ünïcødé 日本語 🐘', NULL, NULL, 3.14, NULL, 'ok', '', NULL),
    ('-- not a comment; DELIMITER ;;', '/*!50000 not a hint */', UNHEX(''), 0, '1970-01-01 00:00:01', 'sad', 'b', '[]'),
    ('\\N', 'NULL', UNHEX('00'), 9999999999.99, '2038-01-19 03:14:08', 'ok', NULL, '"just a string"');
CREATE TABLE orders (
    id BIGINT PRIMARY KEY,
    customer_id INT NOT NULL,
    total DECIMAL(20,6) NOT NULL,
    placed DATE,
    FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE
) ENGINE = InnoDB;
INSERT INTO orders SELECT seq, 1 + seq % 4, seq / 7, DATE '2024-01-01' + INTERVAL seq DAY FROM seq_1_to_2000;
CREATE VIEW totals AS SELECT c.id, c.name, COUNT(o.id) AS n, COALESCE(SUM(o.total), 0) AS total
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.name;
CREATE SEQUENCE invoice_numbers START WITH 1000 INCREMENT BY 10;
DELIMITER ;;
CREATE PROCEDURE add_order(IN c INT, IN t DECIMAL(20,6))
BEGIN
    INSERT INTO orders (id, customer_id, total) SELECT COALESCE(MAX(id), 0) + 1, c, t FROM orders;
END;;
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;;
CREATE TRIGGER orders_positive BEFORE INSERT ON orders FOR EACH ROW
BEGIN
    IF NEW.total < 0 THEN SET NEW.total = 0; END IF;
END;;
CREATE EVENT purge_nothing ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DO DELETE FROM orders WHERE id < 0;;
DELIMITER ;
"#;

/// A table `noise` of `rows` rows of random hex: about 80 bytes of dump per row.
pub fn load_noise(db: &MariaDb, name: &str, rows: u32) {
    db.sql(
        name,
        &format!(
            "CREATE TABLE noise (i INT PRIMARY KEY, h CHAR(64)) ENGINE = InnoDB; \
             INSERT INTO noise SELECT seq, SHA2(RAND(), 256) FROM seq_1_to_{rows};"
        ),
    );
}

/// A view sorted after `noise` that references a table that no longer exists: mariadb-dump
/// fails on it after it has streamed the tables before it.
pub fn fail_late(db: &MariaDb, name: &str) {
    db.sql(
        name,
        "CREATE TABLE zz_gone (x INT); CREATE VIEW zz_broken AS SELECT x FROM zz_gone; \
         DROP TABLE zz_gone;",
    );
}

fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn client() -> Command {
    let mut cmd = Command::new(find("mariadb").unwrap_or_default());
    cmd.args([
        "--no-defaults",
        "--batch",
        "--skip-column-names",
        "--default-character-set=utf8mb4",
    ]);
    cmd.env_remove("MYSQL_PWD").env_remove("MYSQL_HOST");
    cmd
}

fn root_command(socket: &Path) -> Command {
    let mut cmd = client();
    cmd.arg(format!("--socket={}", socket.display()))
        .args(["--protocol=SOCKET", "--user=root"]);
    cmd
}

/// Waits until the server answers on its socket; `Err` with its log if it exits first or
/// takes too long.
fn wait_ready(server: &mut Child, socket: &Path, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!("mariadbd exited ({status}):\n{}", log()));
        }
        let mut ping = root_command(socket);
        ping.arg("--execute=SELECT 1");
        if output(ping).status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready within {STARTUP_TIMEOUT:?}:\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn output(mut cmd: Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"))
}

/// Runs `cmd` with `input` on stdin; panics with its stderr unless it succeeds.
fn run(mut cmd: Command, input: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the mariadb client: {e}; {INSTALL_HINT}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let preview = super::truncate(input, 2000).to_owned();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child
        .wait_with_output()
        .expect("wait for the mariadb client");
    let _ = writer.join();
    if !out.status.success() {
        panic!(
            "mariadb failed ({}):\n{}\n--- sql ---\n{preview}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}
