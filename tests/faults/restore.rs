//! Fault matrix: restore.
//!
//! A restore is all or nothing, whatever stops it: SIGKILL or SIGTERM of `pipeline` at any
//! point (its children left running), a target that drops mid-way, a database that is down
//! or refuses the password. The guard against replacing the pipeline's own database holds
//! however the target is spelled; the target can stay off the command line; and `verify`
//! reads a backup back through every transform, so bytes that match their manifest but do
//! not decode fail.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::PgCluster;
use crate::support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use crate::support::scratch::{Scratch, assert_no_secret, list, logs, stderr};

/// Rows of the big table: enough that a restore takes seconds in a debug build.
const BIG_ROWS: u64 = 1_500_000;
/// Rows of the table restored after it, so that a kill "late" in the big table still
/// leaves megabytes of the stream unsent.
const TAIL_ROWS: u64 = 300_000;

fn dataset() -> String {
    format!(
        "SET ROLE app; \
         CREATE TABLE a_big (id int PRIMARY KEY, payload text NOT NULL); \
         INSERT INTO a_big SELECT g, md5(g::text) || repeat('x', 40) FROM generate_series(1, {BIG_ROWS}) g; \
         CREATE TABLE b_tail (id int PRIMARY KEY, payload text NOT NULL); \
         INSERT INTO b_tail SELECT g, md5(g::text) FROM generate_series(1, {TAIL_ROWS}) g;"
    )
}

/// Relations a restore could have left behind.
fn relations(pg: &PgCluster, db: &str) -> u64 {
    pg.psql(
        db,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
         AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i')",
    )
    .trim()
    .parse()
    .expect("a count")
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A cluster with a source database, a pipeline file and one backup in it.
struct Fixture {
    pg: PgCluster,
    s: Scratch,
    s3: Option<S3Server>,
    file: String,
    url: String,
}

impl Fixture {
    /// `format` plain or custom; with `s3`, a second sink `s3` on a real S3 server.
    fn new(format: &str, s3: bool, dataset: &str) -> Fixture {
        let pg = PgCluster::start();
        pg.create_db("app");
        pg.psql("app", dataset);
        let s = Scratch::new();
        let s3 = s3.then(S3Server::start);
        let mut toml = format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\nformat = \"{format}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n",
            s.backups().display()
        );
        if let Some(s3) = &s3 {
            toml.push_str(&format!(
                "\n[[sink]]\nname = \"s3\"\nplugin = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"nightly/\"\n\
                 endpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
                s3.endpoint()
            ));
        }
        let file = s.path().join(format!("{format}.toml"));
        std::fs::write(&file, toml).expect("write the pipeline file");
        let url = pg.url("app");
        let fx = Fixture {
            file: file.to_str().expect("utf-8 path").to_string(),
            pg,
            s,
            s3,
            url,
        };
        let out = fx.run(&["run", &fx.file], &[]);
        assert!(out.status.success(), "backup failed:\n{}", logs(&out));
        fx
    }

    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![("DATABASE_URL", self.url.as_str())];
        env.extend_from_slice(extra);
        env
    }

    fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        self.s.run(args, &self.env(extra))
    }

    /// Every stored file (local directory and bucket) with its SHA-256.
    fn stored(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = list(&self.s.backups())
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(self.s.backups().join(&f)).expect("read a backup");
                (format!("local/{f}"), sha(&bytes))
            })
            .collect();
        if let Some(s3) = &self.s3 {
            for o in s3.objects("nightly") {
                let bytes = std::fs::read(s3.bucket().join("nightly").join(&o)).expect("read");
                out.push((format!("s3/{o}"), sha(&bytes)));
            }
        }
        assert!(
            out.iter().any(|(n, _)| n.ends_with(".sha256")),
            "a manifest: {out:?}"
        );
        out
    }

    /// The one backup's name.
    fn backup_name(&self) -> String {
        list(&self.s.backups())
            .into_iter()
            .find(|f| f.starts_with("backup-") && !f.ends_with(".sha256"))
            .expect("a backup")
    }
}

#[derive(Clone, Copy, Debug)]
enum Point {
    /// The restore's transaction has written something.
    Early,
    /// About half of the big table is copied.
    Mid,
    /// Most of the big table is copied (megabytes of the stream still to come).
    Late,
}

/// Waits until the restore into `db` reaches `point`; panics if `child` ends first.
fn wait_for(pg: &PgCluster, db: &str, child: &mut Child, point: Point) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_relid = std::cell::Cell::new(None::<String>);
    let reached = || -> bool {
        match point {
            Point::Early => {
                pg.psql(
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
                         AND backend_xid IS NOT NULL"
                    ),
                )
                .trim()
                    != "0"
            }
            Point::Mid | Point::Late => {
                let line = pg.psql(
                    "postgres",
                    &format!(
                        "SELECT relid, tuples_processed FROM pg_stat_progress_copy WHERE datname = '{db}'"
                    ),
                );
                let Some((relid, tuples)) = line.trim().split_once('|') else {
                    return false;
                };
                let tuples: u64 = tuples.parse().unwrap_or(0);
                let first = first_relid.take().unwrap_or_else(|| relid.to_string());
                let other_table = first != relid;
                first_relid.set(Some(first));
                match point {
                    Point::Mid => tuples >= BIG_ROWS * 2 / 5 || other_table,
                    _ => tuples >= BIG_ROWS * 17 / 20 || other_table,
                }
            }
        }
    };
    loop {
        if reached() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the restore ended ({status}) before the {point:?} point was seen: the dataset is too small \
                 for this machine, or the restore failed"
            );
        }
        assert!(
            Instant::now() < deadline,
            "the restore never reached {point:?}"
        );
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Waits until no session is connected to `db` (the restore's psql or pg_restore exited).
fn wait_until_idle(pg: &PgCluster, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"),
        );
        if n.trim() == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the restore's session into {db} is still there 30 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a restore into a fresh database, signals `pipeline` at `point`, and checks that
/// the target holds nothing, the run failed and the backup is as it was.
fn kill_restore(fx: &Fixture, from: &str, signal: i32, point: Point, n: usize) {
    let db = format!("killed_{n}");
    fx.pg.create_db(&db);
    let before = fx.stored();
    let to = fx.pg.url(&db);
    let mut child = fx.s.spawn(
        &["restore", &fx.file, "--from", from, "--to", &to],
        &fx.env(&[]),
    );
    wait_for(&fx.pg, &db, &mut child, point);
    let pid = i32::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) on the child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal the restore");
    let out = child.wait_with_output().expect("wait for pipeline");
    let what = format!("signal {signal} at {point:?} from {from}");
    assert!(!out.status.success(), "{what}: the run must fail");
    if signal == libc::SIGKILL {
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{what}");
    } else {
        assert!(
            out.status.signal() == Some(signal) || out.status.code().is_some_and(|c| c != 0),
            "{what}: {:?}",
            out.status
        );
    }
    wait_until_idle(&fx.pg, &db);
    assert_eq!(
        relations(&fx.pg, &db),
        0,
        "{what}: the killed restore committed part of the backup\n{}",
        logs(&out)
    );
    assert_eq!(fx.stored(), before, "{what}: the backup changed");
    assert_no_secret(&fx.pg, &logs(&out));
}

#[test]
fn killed_plain_restore_from_local_commits_nothing() {
    let fx = Fixture::new("plain", false, &dataset());
    kill_restore(&fx, "local", libc::SIGKILL, Point::Early, 1);
    kill_restore(&fx, "local", libc::SIGTERM, Point::Mid, 2);
    kill_restore(&fx, "local", libc::SIGKILL, Point::Late, 3);
}

#[test]
fn killed_plain_restore_from_s3_commits_nothing() {
    let fx = Fixture::new("plain", true, &dataset());
    kill_restore(&fx, "s3", libc::SIGTERM, Point::Early, 1);
    kill_restore(&fx, "s3", libc::SIGKILL, Point::Mid, 2);
    kill_restore(&fx, "s3", libc::SIGTERM, Point::Late, 3);
}

#[test]
fn killed_custom_restore_from_local_commits_nothing() {
    let fx = Fixture::new("custom", false, &dataset());
    kill_restore(&fx, "local", libc::SIGTERM, Point::Early, 1);
    kill_restore(&fx, "local", libc::SIGKILL, Point::Mid, 2);
    kill_restore(&fx, "local", libc::SIGTERM, Point::Late, 3);
}

#[test]
fn killed_custom_restore_from_s3_commits_nothing() {
    let fx = Fixture::new("custom", true, &dataset());
    kill_restore(&fx, "s3", libc::SIGKILL, Point::Early, 1);
    kill_restore(&fx, "s3", libc::SIGTERM, Point::Mid, 2);
    kill_restore(&fx, "s3", libc::SIGKILL, Point::Late, 3);
}

/// The server ends the restore's session mid-way (a restart, an administrator): the run
/// fails naming psql and why, and nothing is committed.
#[test]
fn a_target_that_drops_mid_restore_gets_nothing() {
    let fx = Fixture::new("plain", false, &dataset());
    let db = "dropped";
    fx.pg.create_db(db);
    let before = fx.stored();
    let to = fx.pg.url(db);
    let mut child =
        fx.s.spawn(&["restore", &fx.file, "--to", &to], &fx.env(&[]));
    wait_for(&fx.pg, db, &mut child, Point::Mid);
    fx.pg.psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"),
    );
    let out = child.wait_with_output().expect("wait for pipeline");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&fx.backup_name()) && err.contains("psql"),
        "names the backup and psql: {err}"
    );
    assert!(
        err.contains("terminat") || err.contains("connection"),
        "says why: {err}"
    );
    assert!(err.contains("nothing was committed"), "{err}");
    wait_until_idle(&fx.pg, db);
    assert_eq!(relations(&fx.pg, db), 0);
    assert_eq!(fx.stored(), before);
    assert_no_secret(&fx.pg, &err);
}

/// The store goes away mid-restore (s3s-fs killed while the backup streams out of it): the
/// run fails naming the sink, and nothing is committed.
#[test]
fn a_sink_that_drops_mid_restore_gets_nothing() {
    let mut fx = Fixture::new("plain", true, &dataset());
    let db = "sink_dropped";
    fx.pg.create_db(db);
    let before = fx.stored();
    let to = fx.pg.url(db);
    let mut child = fx.s.spawn(
        &["restore", &fx.file, "--from", "s3", "--to", &to],
        &fx.env(&[]),
    );
    wait_for(&fx.pg, db, &mut child, Point::Mid);
    let s3 = fx.s3.as_mut().expect("an S3 server");
    s3.child.kill().expect("stop s3s-fs");
    s3.child.wait().expect("reap s3s-fs");
    let out = child.wait_with_output().expect("wait for pipeline");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&fx.backup_name()) && err.contains("sink `s3`"),
        "names the backup and the sink: {err}"
    );
    wait_until_idle(&fx.pg, db);
    assert_eq!(relations(&fx.pg, db), 0, "{err}");
    assert_eq!(fx.stored(), before);
    assert_no_secret(&fx.pg, &err);
    assert!(!err.contains(SECRET_KEY), "{err}");
}

const SMALL: &str = "SET ROLE app; CREATE TABLE t (id int PRIMARY KEY, v text); \
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g;";

/// Restoring into the pipeline's own database needs `--yes`, however `--to` spells it:
/// another host name for the same server, the default port written out, key=value form,
/// the server's socket directory.
#[test]
fn the_own_database_needs_yes_however_it_is_spelled() {
    let fx = Fixture::new("plain", false, SMALL);
    let pg = &fx.pg;
    // Something newer than the backup, which a restore would replace.
    pg.psql("app", "INSERT INTO t VALUES (5000, 'after the backup')");
    let port = pg.port();
    let pw = "p%40ss%3Aw%2Frd%25%3F%26%3D%23x"; // PgCluster::PASSWORD, percent-encoded
    let sock = pg.socket_dir().display().to_string();
    let spellings = [
        fx.url.clone(),
        format!("postgresql://app:{pw}@localhost:{port}/app"),
        format!("postgres://APP:{pw}@LocalHost:{port}/app?sslmode=disable"),
        format!("postgresql://app:{pw}@[::1]:{port}/app"),
        format!(
            "host=127.0.0.1 port={port} dbname=app user=app password='{}'",
            PgCluster::PASSWORD
        ),
        format!("postgresql:///app?host={sock}&port={port}&user=app"),
        format!("host={sock} port={port} dbname=app"),
    ];
    for to in &spellings {
        for option in ["--to", "env"] {
            let mut args = vec!["restore", &fx.file, "--allow-non-empty"];
            let mut extra = vec![];
            if option == "--to" {
                args.extend(["--to", to.as_str()]);
            } else {
                extra.push(("PIPELINE_RESTORE_TO", to.as_str()));
            }
            let out = fx.run(&args, &extra);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{to}: {err}");
            assert!(
                err.contains("the pipeline's own database")
                    && err.contains("--yes")
                    && err.contains("database `app`"),
                "{to}: says why: {err}"
            );
            let named = if option == "--to" {
                "--to"
            } else {
                "PIPELINE_RESTORE_TO"
            };
            assert!(err.contains(named), "{to}: names {named}: {err}");
            assert_no_secret(pg, &err);
        }
    }
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM t WHERE id = 5000")
            .trim(),
        "1",
        "the live database was not touched"
    );

    // The libpq defaults: no port means 5432, no database means the user's name.
    for (source, to) in [
        (
            "postgresql://app@localhost/app",
            "host=127.0.0.1 port=5432 dbname=app",
        ),
        (
            "postgresql://app@db.example.com:5432",
            "postgresql://app@DB.EXAMPLE.COM/app",
        ),
    ] {
        let out = fx.s.run(
            &["restore", &fx.file, "--to", to],
            &[("DATABASE_URL", source)],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{source} vs {to}: {err}");
        assert!(err.contains("the pipeline's own database"), "{err}");
    }

    // verify never restores into it.
    let out = fx.run(&["verify", &fx.file, "--restore-into", &spellings[1]], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--restore-into names the pipeline's own database"),
        "{err}"
    );

    // Another database on the same server is fine; the own one with --yes is too.
    pg.create_db("other");
    let out = fx.run(
        &[
            "restore",
            &fx.file,
            "--to",
            &format!("host={sock} port={port} dbname=other user=app"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pg.psql("other", "SELECT count(*) FROM t").trim(), "1000");
    let out = fx.run(
        &[
            "restore",
            &fx.file,
            "--to",
            &spellings[1],
            "--allow-non-empty",
            "--yes",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        pg.psql("app", "SELECT count(*) FROM t WHERE id = 5000")
            .trim(),
        "0",
        "--yes replaced it"
    );
}

/// The target can stay off the command line: PIPELINE_RESTORE_TO, PIPELINE_VERIFY_INTO, or
/// a password in ~/.pgpass. A password on the command line works but is warned about,
/// without being printed. A target that is not a connection string is a usage error.
#[test]
fn the_target_and_its_password_can_stay_off_the_command_line() {
    let fx = Fixture::new("plain", false, SMALL);
    let pg = &fx.pg;
    let warning = "holds a password, and a command line is readable";

    pg.create_db("from_env");
    let to = pg.url("from_env");
    let out = fx.run(&["restore", &fx.file], &[("PIPELINE_RESTORE_TO", &to)]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(warning), "{err}");
    assert_eq!(pg.psql("from_env", "SELECT count(*) FROM t").trim(), "1000");
    assert_no_secret(pg, &err);

    pg.create_db("verify_env");
    let out = fx.run(
        &["verify", &fx.file],
        &[("PIPELINE_VERIFY_INTO", &pg.url("verify_env"))],
    );
    let text = logs(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok      restore of backup-"), "{text}");
    assert!(!text.contains(warning), "{text}");
    assert_no_secret(pg, &text);

    // ~/.pgpass: the restore programs keep HOME, so libpq finds the password there.
    pg.create_db("from_pgpass");
    let home = fx.s.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let pgpass = home.join(".pgpass");
    let mut f = std::fs::File::create(&pgpass).unwrap();
    writeln!(
        f,
        "127.0.0.1:{}:*:app:{}",
        pg.port(),
        PgCluster::PASSWORD
            .replace('\\', "\\\\")
            .replace(':', "\\:")
    )
    .unwrap();
    drop(f);
    // libpq ignores a passfile that others can read.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let to = format!(
        "postgresql://app@127.0.0.1:{}/from_pgpass?sslmode=disable",
        pg.port()
    );
    let out = fx.run(
        &["restore", &fx.file, "--to", &to],
        &[("HOME", home.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(warning), "{err}");
    assert_eq!(
        pg.psql("from_pgpass", "SELECT count(*) FROM t").trim(),
        "1000"
    );

    // A password on the command line: works, with a warning that does not print it.
    pg.create_db("from_argv");
    let out = fx.run(&["restore", &fx.file, "--to", &pg.url("from_argv")], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("--to {warning}")) && err.contains("PIPELINE_RESTORE_TO"),
        "{err}"
    );
    assert_no_secret(pg, &err);
    pg.create_db("verify_argv");
    let out = fx.run(
        &["verify", &fx.file, "--restore-into", &pg.url("verify_argv")],
        &[],
    );
    let text = logs(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("--restore-into {warning}"))
            && text.contains("PIPELINE_VERIFY_INTO"),
        "{text}"
    );
    assert_no_secret(pg, &text);

    // Not a connection string: a usage error naming where it came from, before any
    // connection (psql would have taken a bare word for a database on the default socket).
    for (args, extra, named) in [
        (
            vec!["restore", &fx.file, "--to", "from_env"],
            vec![],
            "--to",
        ),
        (vec!["restore", &fx.file, "--to", ""], vec![], "--to"),
        (
            vec!["restore", &fx.file],
            vec![("PIPELINE_RESTORE_TO", "app")],
            "PIPELINE_RESTORE_TO",
        ),
        (
            vec!["verify", &fx.file, "--restore-into", "scratch"],
            vec![],
            "--restore-into",
        ),
        (
            vec!["verify", &fx.file],
            vec![("PIPELINE_VERIFY_INTO", "localhost:5432")],
            "PIPELINE_VERIFY_INTO",
        ),
    ] {
        let out = fx.run(&args, &extra);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{named}: not a PostgreSQL connection string")),
            "{args:?}: {err}"
        );
    }
    assert_eq!(pg.psql("from_env", "SELECT count(*) FROM t").trim(), "1000");
}

/// A database that is down, or refuses the password: a clear error before anything is
/// sent, exit 1, the password never printed, the backup untouched.
#[test]
fn a_database_that_is_down_or_refuses_the_password_is_a_clear_error() {
    let fx = Fixture::new("plain", false, SMALL);
    let pg = &fx.pg;
    pg.create_db("target");
    let before = fx.stored();
    let wrong = format!(
        "postgresql://app:not-the-password@127.0.0.1:{}/target?sslmode=disable",
        pg.port()
    );
    for allow in [false, true] {
        let mut args = vec!["restore", &fx.file];
        if allow {
            args.push("--allow-non-empty");
        }
        let out = fx.run(&args, &[("PIPELINE_RESTORE_TO", &wrong)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("cannot reach the restore target")
                && err.contains("password authentication failed"),
            "{err}"
        );
        assert!(!err.contains("not-the-password"), "{err}");
        assert_no_secret(pg, &err);
    }
    assert_eq!(relations(pg, "target"), 0);

    pg.stop();
    for allow in [false, true] {
        let mut args = vec!["restore", &fx.file];
        if allow {
            args.push("--allow-non-empty");
        }
        let to = pg.url("target");
        let out = fx.run(&args, &[("PIPELINE_RESTORE_TO", &to)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("cannot reach the restore target") && err.contains("Connection refused"),
            "{err}"
        );
        assert!(err.contains(&fx.backup_name()), "names the backup: {err}");
        assert_no_secret(pg, &err);
    }
    assert_eq!(fx.stored(), before);
}

/// Puts an artifact with a matching manifest beside the good backup.
fn plant(fx: &Fixture, name: &str, bytes: &[u8]) {
    let dir = fx.s.backups();
    std::fs::write(dir.join(name), bytes).unwrap();
    std::fs::write(
        dir.join(format!("{name}.sha256")),
        format!("{}  {name}\n", sha(bytes)),
    )
    .unwrap();
}

/// `verify` decodes what it reads: an artifact whose bytes match their manifest but that is
/// empty, not zstd, or a truncated zstd fails, naming the backup, the sink and why; the
/// good backup passes and reports its decoded size. `restore` refuses the same artifacts
/// and commits nothing.
#[test]
fn verify_decodes_every_backup_and_fails_the_undecodable() {
    let fx = Fixture::new("plain", false, SMALL);
    let good = fx.backup_name();
    let bytes = std::fs::read(fx.s.backups().join(&good)).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "backup-2020-01-01T00-00-00-000Z.sql.zst",
            Vec::new(),
            "is empty (0 bytes)",
        ),
        (
            "backup-2020-01-01T12-00-00-000Z.sql.zst",
            zstd::encode_all(&b""[..], 3).unwrap(),
            "decodes to nothing",
        ),
        (
            "backup-2020-01-02T00-00-00-000Z.sql.zst",
            b"-- not compressed at all\nSELECT 1;\n".to_vec(),
            "zstd",
        ),
        (
            "backup-2020-01-03T00-00-00-000Z.sql.zst",
            bytes[..bytes.len() / 2].to_vec(),
            "zstd",
        ),
    ];
    for (name, data, _) in &cases {
        plant(&fx, name, data);
    }

    let out = fx.run(&["verify", &fx.file, "--backup", &good], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("ok      sink local: {good}"))
            && text.contains("matches its manifest; decodes to")
            && text.contains("(undoing transform zstd)"),
        "{text}"
    );

    for (i, (name, data, why)) in cases.iter().enumerate() {
        let out = fx.run(&["verify", &fx.file, "--backup", name], &[]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{name}: {text}{}", stderr(&out));
        assert!(
            text.contains(&format!("FAILED  sink local: {name}")) && text.contains(why),
            "{name}: names the sink, the backup and why: {text}"
        );
        if !data.is_empty() {
            assert!(
                text.contains("matches its manifest, but the backup does not decode"),
                "{name}: {text}"
            );
        }

        let db = format!("undecodable_{i}");
        fx.pg.create_db(&db);
        let out = fx.run(
            &[
                "restore",
                &fx.file,
                "--backup",
                name,
                "--to",
                &fx.pg.url(&db),
            ],
            &[],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(name) && err.contains(why), "{name}: {err}");
        assert_eq!(relations(&fx.pg, &db), 0, "{name}");
        assert_no_secret(&fx.pg, &err);
    }
    assert!(
        fx.s.backups().join(&good).is_file(),
        "the good backup is still there"
    );
}
