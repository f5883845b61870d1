//! Fault matrix: the S3-compatible store misbehaves (error answers, connections reset in
//! the middle of a part, a store that stops answering) behind a fault-injecting proxy.

use std::time::{Duration, Instant};

use crate::support::faultproxy::{Fault, FaultProxy, Rule};
use crate::support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use crate::support::scratch::{Scratch, assert_no_secret, logs};
use crate::support::{self, PgCluster};

/// A pipeline with one s3 sink behind `endpoint`, 5 MiB parts; `extra` goes into the sink.
fn s3_pipeline(s: &Scratch, endpoint: &str, extra: &str) -> String {
    let file = s.path().join("s3-faults.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nartifact = \"backup-{{time}}\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"s3\"\nplugin = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"faults/\"\n\
             endpoint = \"{endpoint}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"${{env:S3_SECRET_KEY}}\"\npart_size = \"5MiB\"\n{extra}\n"
        ),
    )
    .expect("write the pipeline file");
    file.display().to_string()
}

/// About 19 MiB once compressed: four parts of 5 MiB.
fn load_big(pg: &PgCluster, db: &str) {
    support::load_noise(pg, db, 500000);
}

fn env(pg_url: &str) -> Vec<(&str, &str)> {
    vec![("DATABASE_URL", pg_url), ("S3_SECRET_KEY", SECRET_KEY)]
}

/// Runs `verify` on the pipeline and asserts it passes.
fn assert_verifies(s: &Scratch, file: &str, pg_url: &str) {
    let out = s.run(&["verify", file], &env(pg_url));
    let log = logs(&out);
    assert!(out.status.success(), "verify failed:\n{log}");
    assert!(log.contains("matches its manifest"), "{log}");
}

fn backups_in(s3: &S3Server) -> Vec<String> {
    s3.objects("faults")
        .into_iter()
        .filter(|o| o.ends_with(".sql.zst"))
        .collect()
}

#[test]
fn s3_answering_503_to_a_part_is_retried_and_the_backup_verifies() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(
        s3.port,
        vec![Rule::new("PUT", "partNumber=2&", 2, Fault::Status(503))],
    );
    let s = Scratch::new();
    let file = s3_pipeline(&s, &proxy.endpoint(), "");
    let url = pg.url("app");
    let out = s.run(&["run", &file], &env(&url));
    let log = logs(&out);
    assert!(out.status.success(), "a 503 is transient:\n{log}");
    assert_no_secret(&pg, &log);
    assert!(!log.contains(SECRET_KEY), "the S3 secret leaked:\n{log}");
    // Both faulted tries were retried (the SDK retries 503 SlowDown itself).
    assert_eq!(proxy.faulted().len(), 2, "{:?}", proxy.faulted());
    assert_eq!(backups_in(&s3).len(), 1, "{:?}", s3.objects("faults"));
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    assert_verifies(&s, &file, &url);
}

#[test]
fn s3_resetting_the_connection_mid_part_is_retried_and_the_backup_verifies() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(
        s3.port,
        vec![Rule::new("PUT", "partNumber=3&", 1, Fault::ResetMidBody)],
    );
    let s = Scratch::new();
    let file = s3_pipeline(&s, &proxy.endpoint(), "");
    let url = pg.url("app");
    let out = s.run(&["run", &file], &env(&url));
    let log = logs(&out);
    assert!(
        out.status.success(),
        "a reset connection is transient:\n{log}"
    );
    assert_eq!(proxy.faulted().len(), 1, "{:?}", proxy.faulted());
    assert_eq!(backups_in(&s3).len(), 1, "{:?}", s3.objects("faults"));
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    assert_verifies(&s, &file, &url);
}

#[test]
fn s3_resetting_every_try_fails_the_run_and_keeps_the_earlier_backup() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s3 = S3Server::start();
    // Only multipart uploads have part 2: the first, small backup is one PutObject.
    let proxy = FaultProxy::start(
        s3.port,
        vec![Rule::new(
            "PUT",
            "partNumber=2&",
            usize::MAX,
            Fault::ResetMidBody,
        )],
    );
    let s = Scratch::new();
    let file = s3_pipeline(&s, &proxy.endpoint(), "");
    let url = pg.url("app");
    let first = s.run(&["run", &file], &env(&url));
    assert!(first.status.success(), "{}", logs(&first));
    let before = s3.objects("faults");
    assert_eq!(before.len(), 2, "a backup and its manifest: {before:?}");

    load_big(&pg, "app");
    let out = s.run(&["run", &file], &env(&url));
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert_no_secret(&pg, &log);
    assert!(
        log.contains("stage `sink s3` failed"),
        "names the sink: {log}"
    );
    assert!(log.contains("aborted the upload"), "{log}");
    assert!(log.contains("nothing was pruned"), "{log}");
    assert!(proxy.faulted().len() >= 2, "retried: {:?}", proxy.faulted());
    assert_eq!(
        s3.objects("faults"),
        before,
        "the earlier backup is untouched"
    );
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    assert_verifies(&s, &file, &url);
}

#[test]
fn s3_that_stops_answering_is_stopped_by_the_sink_time_limit() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(
        s3.port,
        vec![Rule::new("PUT", "partNumber=2&", usize::MAX, Fault::Stall)],
    );
    let s = Scratch::new();
    let file = s3_pipeline(&s, &proxy.endpoint(), "limits = { timeout = \"8s\" }");
    let url = pg.url("app");
    let started = Instant::now();
    let out = s.run(&["run", &file], &env(&url));
    let took = started.elapsed();
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        took < Duration::from_secs(90),
        "a stalled store must not hang the run ({took:?}):\n{log}"
    );
    assert!(log.contains("time limit"), "names the limit: {log}");
    assert!(log.contains("sink s3"), "names the stage: {log}");
    assert!(!proxy.faulted().is_empty(), "the stall was hit");
    assert!(
        backups_in(&s3).is_empty(),
        "no backup is visible: {:?}",
        s3.objects("faults")
    );
}

/// A store that refuses to delete (a missing `s3:DeleteObject` permission) is not a lock:
/// the prune fails the run with the sink and the reason, so retention that silently stops
/// cannot fill the bucket unnoticed; the new backup is stored and nothing else is lost.
#[test]
fn a_store_that_refuses_deletes_fails_the_prune_and_loses_nothing() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(
        s3.port,
        vec![Rule::new("DELETE", "", usize::MAX, Fault::Status(403))],
    );
    let s = Scratch::new();
    let file = s3_pipeline(
        &s,
        &proxy.endpoint(),
        "\n[retention]\nkeep_last = 1\ndaily = 1",
    );
    let url = pg.url("app");
    let first = s.run(&["run", &file], &env(&url));
    assert!(first.status.success(), "{}", logs(&first));
    let second = s.run(&["run", &file], &env(&url));
    let log = logs(&second);
    assert_eq!(second.status.code(), Some(1), "{log}");
    assert!(
        log.contains("was stored, but pruning sink `s3` failed") && log.contains("AccessDenied"),
        "{log}"
    );
    assert!(
        !log.contains("is locked"),
        "a refusal is not reported as a lock: {log}"
    );
    assert!(!proxy.faulted().is_empty(), "the delete was tried");
    assert_eq!(backups_in(&s3).len(), 2, "{:?}", s3.objects("faults"));
    assert!(!log.contains(SECRET_KEY), "the S3 secret leaked:\n{log}");
}
