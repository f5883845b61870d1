//! End to end with the `s3` sink: `pipeline run` against a real PostgreSQL server and a real
//! S3-compatible server that checks SigV4 signatures (s3s-fs, started by this harness; it
//! keeps objects as files, so what the bucket holds — and any multipart upload left behind —
//! can be checked on disk).
//!
//! s3s-fs must be on PATH: `cargo install s3s-fs --version 0.14.1 --features binary --locked`
//! (scripts/install-prerequisites.sh --tests does it).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::PgCluster;
use support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use support::scratch::{Scratch, logs, repo};

/// A TCP proxy in front of the server that answers `500 Internal Server Error` to every
/// upload of part `fail_part` (and forwards everything else), as a store failing
/// mid-upload does. Counts the failed attempts.
struct FaultyProxy {
    port: u16,
    failed: Arc<AtomicUsize>,
}

impl FaultyProxy {
    fn start(upstream: u16, fail_part: u32) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let failed = Arc::new(AtomicUsize::new(0));
        let f = failed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let f = f.clone();
                std::thread::spawn(move || proxy_one(client, upstream, fail_part, &f));
            }
        });
        FaultyProxy { port, failed }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn proxy_one(mut client: TcpStream, upstream: u16, fail_part: u32, failed: &AtomicUsize) {
    // Read the request line and headers.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    if line.starts_with("PUT ") && line.contains(&format!("partNumber={fail_part}&")) {
        failed.fetch_add(1, Ordering::SeqCst);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                    <Message>injected fault</Message></Error>";
        let _ = write!(
            client,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.shutdown(Shutdown::Write);
        // Drain what the client still sends so it reads the answer, not a reset.
        let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
        let mut sink = [0u8; 65536];
        while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    if server.write_all(&head).is_err() {
        return;
    }
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn assert_no_secret(text: &str) {
    assert!(
        !text.contains(SECRET_KEY),
        "the S3 secret key leaked:\n{text}"
    );
}

/// The environment of `pipelines/nightly-s3.toml` for this test's servers.
fn nightly_env<'a>(pg_url: &'a str, s3: &'a str, prefix: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", pg_url),
        ("S3_BUCKET", BUCKET),
        ("S3_ENDPOINT", s3),
        ("S3_ACCESS_KEY", ACCESS_KEY),
        ("S3_SECRET_KEY", SECRET_KEY),
        ("S3_PREFIX", prefix),
    ]
}

fn nightly_s3() -> String {
    repo()
        .join("pipelines/nightly-s3.toml")
        .display()
        .to_string()
}

/// A pipeline file with an s3 sink only; `extra` goes into the sink's table.
fn s3_pipeline(s: &Scratch, plugin: &str, endpoint: &str, extra: &str) -> String {
    let file = s.path().join("s3-only.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nartifact = \"backup-{{time}}\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"s3\"\nplugin = \"{plugin}\"\nbucket = \"{BUCKET}\"\nprefix = \"big/\"\n\
             endpoint = \"{endpoint}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"${{env:S3_SECRET_KEY}}\"\n{extra}\n"
        ),
    )
    .expect("write pipeline");
    file.display().to_string()
}

/// About 19 MiB once compressed: four parts of 5 MiB.
fn load_big(pg: &PgCluster, db: &str) {
    support::load_noise(pg, db, 500000);
}

#[test]
fn round_trip_through_s3_restores_an_equal_database() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let url = pg.url("app");
    let endpoint = s3.endpoint();
    let out = s.run(
        &["run", &nightly_s3()],
        &nightly_env(&url, &endpoint, "nightly/"),
    );
    let log = logs(&out);
    assert!(out.status.success(), "run failed:\n{log}");
    assert_no_secret(&log);

    // The same backup and manifest in both sinks.
    let local = s.files();
    let objects = s3.objects("nightly");
    assert_eq!(local.len(), 2, "{local:?}");
    assert_eq!(objects, local, "S3 holds what local holds");
    let backup = objects
        .iter()
        .find(|n| n.ends_with(".sql.zst"))
        .expect("a backup");
    let object = s3.bucket().join("nightly").join(backup);
    assert_eq!(
        std::fs::read(&object).expect("object"),
        std::fs::read(s.backups().join(backup)).expect("local copy")
    );
    let manifest =
        std::fs::read_to_string(s3.bucket().join("nightly").join(format!("{backup}.sha256")))
            .expect("manifest");
    assert!(
        manifest.ends_with(&format!("  {backup}\n# pipeline: nightly-s3\n")),
        "{manifest}"
    );

    // `pipeline list` reads the bucket through the plugin (ListObjectsV2).
    let out = s.run(
        &["list", &nightly_s3()],
        &nightly_env(&url, &endpoint, "nightly/"),
    );
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", logs(&out));
    assert!(
        listing.contains("sink s3 (1 backups)") || listing.contains("sink s3 (1 backup)"),
        "{listing}"
    );
    assert!(listing.contains(backup.as_str()), "{listing}");

    // Restore what S3 stored with the standard tools.
    let sql = s.path().join("restore.sql");
    let z = Command::new("zstd")
        .args(["-d", "-q", "-o"])
        .arg(&sql)
        .arg(&object)
        .status()
        .expect("zstd is installed");
    assert!(z.success());
    pg.create_db("restored");
    pg.psql_file("restored", &sql)
        .expect("psql restores the dump");
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));
}

#[test]
fn a_dump_larger_than_several_parts_is_a_multipart_upload() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let file = s3_pipeline(&s, "s3", &s3.endpoint(), "part_size = \"5MiB\"");
    let out = s.run(
        &["--verbose", "run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("S3_SECRET_KEY", SECRET_KEY),
        ],
    );
    let log = logs(&out);
    assert!(out.status.success(), "run failed:\n{log}");
    assert_no_secret(&log);
    let objects = s3.objects("big");
    let backup = objects
        .iter()
        .find(|n| n.ends_with(".sql.zst"))
        .expect("backup");
    let size = std::fs::metadata(s3.bucket().join("big").join(backup))
        .expect("object")
        .len();
    assert!(size > 3 * 5 * 1024 * 1024, "{size} bytes: several parts");
    let parts = log
        .lines()
        .find_map(|l| {
            l.split(" in ")
                .nth(1)
                .and_then(|r| r.strip_suffix(" bytes)"))
                .and_then(|r| r.split(" parts").next())
                .and_then(|n| n.parse::<u32>().ok())
        })
        .unwrap_or_else(|| panic!("the log says how many parts:\n{log}"));
    assert!(parts >= 4, "{parts} parts");
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    // The manifest's checksum is that of the object S3 holds.
    let manifest =
        std::fs::read_to_string(s3.bucket().join("big").join(format!("{backup}.sha256")))
            .expect("manifest");
    let sum = Command::new("sha256sum")
        .arg(s3.bucket().join("big").join(backup))
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(
        manifest.split_whitespace().next(),
        sum.split_whitespace().next()
    );
}

#[test]
fn a_wrong_secret_key_fails_loudly_and_prunes_nothing() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    // An old local backup that retention would remove after a successful run.
    std::fs::create_dir_all(s.backups()).expect("mkdir");
    let old: Vec<String> = (1..=4)
        .map(|d| format!("backup-2020-01-0{d}T02-00-00-000Z.sql.zst"))
        .collect();
    for name in &old {
        std::fs::write(s.backups().join(name), "old").expect("write");
    }
    let url = pg.url("app");
    let endpoint = s3.endpoint();
    let mut env = nightly_env(&url, &endpoint, "nightly/");
    let wrong = "not-the-secret-key-0123";
    env.retain(|(k, _)| *k != "S3_SECRET_KEY");
    env.push(("S3_SECRET_KEY", wrong));
    let out = s.run(&["run", &nightly_s3()], &env);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("stage `sink s3` failed"),
        "names the sink: {log}"
    );
    assert!(log.contains("secret key is wrong"), "says why: {log}");
    assert!(log.contains("SignatureDoesNotMatch"), "{log}");
    assert!(log.contains("nothing was pruned"), "{log}");
    assert!(!log.contains(wrong), "the wrong secret leaked:\n{log}");
    // The local sink kept its copy; nothing was pruned; S3 holds nothing.
    let local = s.files();
    for name in &old {
        assert!(local.contains(name), "{local:?}");
    }
    assert_eq!(local.len(), old.len() + 2, "{local:?}");
    assert!(s3.objects("nightly").is_empty());
    assert!(s3.pending_uploads().is_empty());
}

#[test]
fn a_store_failing_mid_upload_leaves_no_object_and_no_parts() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let proxy = FaultyProxy::start(s3.port, 3);
    let s = Scratch::new();
    let file = s3_pipeline(&s, "s3", &proxy.endpoint(), "part_size = \"5MiB\"");
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("S3_SECRET_KEY", SECRET_KEY),
        ],
    );
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert_no_secret(&log);
    assert!(log.contains("retrying"), "parts are retried: {log}");
    assert!(log.contains("uploading part 3"), "{log}");
    // The client sees the 500 or, while it still sends the part, a reset connection.
    assert!(
        log.contains("HTTP 500") || log.contains("connection reset"),
        "{log}"
    );
    assert!(log.contains("aborted the upload"), "{log}");
    assert!(proxy.failed.load(Ordering::SeqCst) >= 2, "retried");
    assert!(s3.objects("big").is_empty(), "{:?}", s3.objects("big"));
    assert!(
        s3.pending_uploads().is_empty(),
        "orphaned multipart upload: {:?}",
        s3.pending_uploads()
    );
}

#[test]
fn a_dump_failing_midway_aborts_the_upload_and_leaves_nothing() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    support::fail_late(&pg, "app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let file = s3_pipeline(&s, "s3", &s3.endpoint(), "part_size = \"5MiB\"");
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("S3_SECRET_KEY", SECRET_KEY),
        ],
    );
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("row-level security"),
        "the cause is pg_dump's: {log}"
    );
    assert!(
        log.contains("aborted the upload"),
        "it failed mid-upload, not before: {log}"
    );
    assert!(s3.objects("big").is_empty(), "{:?}", s3.objects("big"));
    assert!(
        s3.pending_uploads().is_empty(),
        "orphaned multipart upload: {:?}",
        s3.pending_uploads()
    );
}

#[test]
fn a_plugin_file_is_denied_a_host_it_was_not_granted() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let wasm = Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_s3.wasm");
    let host = format!("127.0.0.1:{}", s3.port);
    let file = s3_pipeline(&s, &wasm.display().to_string(), &s3.endpoint(), "");
    let env = [
        ("DATABASE_URL", pg.url("app")),
        ("S3_SECRET_KEY", SECRET_KEY.into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = s.run(&["run", &file], &env);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!("needs to reach the host `{host}`")),
        "{log}"
    );
    assert!(
        log.contains(&format!("allow = {{ hosts = [\"{host}\"] }}")),
        "says what to add: {log}"
    );
    assert_no_secret(&log);

    // Granted, the same plugin works.
    let file = s3_pipeline(
        &s,
        &wasm.display().to_string(),
        &s3.endpoint(),
        &format!("allow = {{ hosts = [\"{host}\"] }}"),
    );
    let out = s.run(&["run", &file], &env);
    assert!(out.status.success(), "{}", logs(&out));
    assert_eq!(s3.objects("big").len(), 2);
}

#[test]
fn credentials_come_from_the_aws_environment_when_the_file_has_none() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let url = pg.url("app");
    let endpoint = s3.endpoint();
    let mut env = nightly_env(&url, &endpoint, "env/");
    env.retain(|(k, _)| !k.starts_with("S3_ACCESS") && !k.starts_with("S3_SECRET"));
    env.push(("AWS_ACCESS_KEY_ID", ACCESS_KEY));
    env.push(("AWS_SECRET_ACCESS_KEY", SECRET_KEY));
    let out = s.run(&["--verbose", "run", &nightly_s3()], &env);
    let log = logs(&out);
    assert!(out.status.success(), "{log}");
    assert_no_secret(&log);
    assert_eq!(s3.objects("env").len(), 2);

    // No keys anywhere: a configuration error that says where credentials come from.
    env.retain(|(k, _)| !k.starts_with("AWS_"));
    let out = s.run(&["run", &nightly_s3()], &env);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("no credentials"), "{log}");
}

#[test]
fn retention_on_s3_prunes_only_this_pipelines_objects() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let ours = s3.bucket().join("nightly");
    let theirs = s3.bucket().join("other");
    std::fs::create_dir_all(&ours).expect("mkdir");
    std::fs::create_dir_all(&theirs).expect("mkdir");
    let old: Vec<String> = (1..=5)
        .map(|d| format!("backup-2020-01-0{d}T02-00-00-000Z.sql.zst"))
        .collect();
    // Ages are measured from the newest earlier backup (a clock that jumped ahead must not
    // age real backups), so the last run before this one was an hour ago.
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let recent = format!("backup-{}.sql.zst", t.strftime("%Y-%m-%dT%H-%M-%S-000Z"));
    for name in &old {
        std::fs::write(theirs.join(name), "another pipeline's").expect("write");
    }
    for name in old.iter().chain([&recent]) {
        std::fs::write(ours.join(name), "old").expect("write");
        // Made by this pipeline, as the manifest's owner line says.
        std::fs::write(
            ours.join(format!("{name}.sha256")),
            "x\n# pipeline: nightly-s3\n",
        )
        .expect("write");
    }
    let strangers = ["notes.txt", "other-2020-01-01T00-00-00-000Z.sql.zst"];
    for name in strangers {
        std::fs::write(ours.join(name), "keep me").expect("write");
    }
    let url = pg.url("app");
    let endpoint = s3.endpoint();
    let out = s.run(
        &["run", &nightly_s3()],
        &nightly_env(&url, &endpoint, "nightly/"),
    );
    let log = logs(&out);
    assert!(out.status.success(), "{log}");
    let objects = s3.objects("nightly");
    let backups: Vec<&String> = objects
        .iter()
        .filter(|n| n.starts_with("backup-") && n.ends_with(".sql.zst"))
        .collect();
    // keep_last = 3: the new backup and the two newest earlier ones.
    assert_eq!(backups.len(), 3, "{objects:?}");
    assert!(
        objects.contains(&recent) && objects.contains(&old[4]),
        "{objects:?}"
    );
    assert!(
        !objects.contains(&old[0]) && !objects.contains(&format!("{}.sha256", old[0])),
        "{objects:?}"
    );
    for name in strangers {
        assert!(objects.contains(&name.to_string()), "{name}: {objects:?}");
    }
    assert_eq!(
        s3.objects("other").len(),
        5,
        "another prefix is never touched"
    );
}
