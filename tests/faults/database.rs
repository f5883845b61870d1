//! Fault matrix: the database refuses, does not answer, or the manifest beside a backup lies.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::support::PgCluster;
use crate::support::scratch::{Scratch, assert_no_secret, logs, nightly};

fn nightly_path() -> String {
    nightly().display().to_string()
}

#[test]
fn a_refused_password_fails_naming_the_cause_and_leaks_nothing() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    let good = pg.url("app");
    let first = s.run(&["run", &nightly_path()], &[("DATABASE_URL", &good)]);
    assert!(first.status.success(), "{}", logs(&first));
    let before = s.files();

    let wrong_password = "Wr0ng-pa55word-7f3a";
    let url = format!(
        "postgresql://app:{wrong_password}@127.0.0.1:{}/app?sslmode=disable",
        pg.port()
    );
    let out = s.run(&["run", &nightly_path()], &[("DATABASE_URL", &url)]);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("password authentication failed"),
        "says why: {log}"
    );
    assert!(
        log.contains("stage `source` failed"),
        "names the stage: {log}"
    );
    assert!(!log.contains(wrong_password), "the password leaked:\n{log}");
    assert_no_secret(&pg, &log);
    assert_eq!(s.files(), before, "nothing new, nothing lost");
}

#[test]
fn a_database_that_never_answers_fails_within_its_connect_timeout() {
    // Accepts connections and never says a word, like a host behind a black-holing firewall.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let s = Scratch::new();
    let url = format!(
        "postgresql://app:secret-never-sent-91@127.0.0.1:{port}/app?sslmode=disable&connect_timeout=3"
    );
    let started = Instant::now();
    let out = s.run(&["run", &nightly_path()], &[("DATABASE_URL", &url)]);
    let took = started.elapsed();
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(took < Duration::from_secs(40), "bounded: {took:?}\n{log}");
    assert!(log.contains("timeout"), "says it timed out: {log}");
    assert!(!log.contains("secret-never-sent-91"), "{log}");
    assert!(
        s.files().iter().all(|f| f.starts_with('.')),
        "no backup: {:?}",
        s.files()
    );
    drop(held);
}

#[test]
fn a_manifest_that_holds_no_checksum_is_refused_by_verify_and_restore() {
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.create_db("target");
    pg.psql(
        "app",
        "SET ROLE app; CREATE TABLE t AS SELECT generate_series(1, 100) AS i;",
    );
    let s = Scratch::new();
    let url = pg.url("app");
    let out = s.run(&["run", &nightly_path()], &[("DATABASE_URL", &url)]);
    assert!(out.status.success(), "{}", logs(&out));
    let manifest = s
        .files()
        .into_iter()
        .find(|f| f.ends_with(".sha256"))
        .expect("a manifest");
    let path = s.backups().join(&manifest);
    std::fs::write(&path, "not a checksum at all\n").expect("rewrite the manifest");

    let out = s.run(&["verify", &nightly_path()], &[("DATABASE_URL", &url)]);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("holds no SHA-256"), "says why: {log}");

    let target = pg.url("target");
    let out = s.run(
        &["restore", &nightly_path(), "--to", &target],
        &[("DATABASE_URL", &url)],
    );
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("holds no SHA-256"), "says why: {log}");
    assert_no_secret(&pg, &log);
    let tables = pg.psql(
        "target",
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public';",
    );
    assert_eq!(tables.trim(), "0", "nothing restored");
}
