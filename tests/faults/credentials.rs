//! Fault matrix: S3 credentials from a role. The `s3` sink without keys gets credentials
//! from the host's AWS credential chain, here the ECS container protocol served by a tiny
//! HTTP server in the test (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), with short expirations
//! so that refreshing is needed during one upload, as an hour-long role session is for a
//! long one.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support;
use support::PgCluster;
use support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use support::scratch::{Scratch, assert_no_secret, logs};

/// The session token the credential server hands out (s3s-fs ignores it, AWS checks it).
const TOKEN: &str = "pipeline-test-session-token-7d1e0c";

/// A container credential endpoint (the ECS task role protocol): every GET answers fresh
/// credentials that expire `lifetime` from now, while `serve` says so; otherwise 500.
struct CredentialServer {
    port: u16,
    /// Credentials handed out.
    served: Arc<AtomicUsize>,
    /// Requests answered with an error.
    refused: Arc<AtomicUsize>,
}

impl CredentialServer {
    fn start(lifetime: Duration, serve: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the credential server");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (s, r) = (served.clone(), refused.clone());
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, r, serve) = (s.clone(), r.clone(), serve.clone());
                std::thread::spawn(move || answer(conn, lifetime, &*serve, &s, &r));
            }
        });
        CredentialServer {
            port,
            served,
            refused,
        }
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/creds", self.port)
    }
}

fn answer(
    mut conn: TcpStream,
    lifetime: Duration,
    serve: &dyn Fn() -> bool,
    served: &AtomicUsize,
    refused: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let (status, body) = if serve() {
        served.fetch_add(1, Ordering::SeqCst);
        let expires = jiff::Timestamp::now()
            + jiff::SignedDuration::from_secs(i64::try_from(lifetime.as_secs()).expect("secs"));
        (
            "200 OK",
            format!(
                "{{\"AccessKeyId\": \"{ACCESS_KEY}\", \"SecretAccessKey\": \"{SECRET_KEY}\", \
                 \"Token\": \"{TOKEN}\", \"Expiration\": \"{}\"}}",
                expires.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
        )
    } else {
        refused.fetch_add(1, Ordering::SeqCst);
        (
            "500 Internal Server Error",
            "{\"code\": \"Unavailable\", \"message\": \"the credential agent stopped\"}".into(),
        )
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.shutdown(Shutdown::Write);
}

/// Multipart uploads s3s-fs holds under `root` (what `S3Server::pending_uploads` reads).
fn uploads_pending(root: &Path) -> bool {
    std::fs::read_dir(root).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(".upload"))
    })
}

/// About 25 MiB once compressed: five parts of 5 MiB.
fn load_big(pg: &PgCluster, db: &str) {
    pg.psql(
        db,
        "SET ROLE app; CREATE TABLE noise AS SELECT i, md5(random()::text) || md5(random()::text) \
         || md5(random()::text) AS h FROM generate_series(1, 450000) i;",
    );
}

/// A pipeline whose s3 sink sets no keys (so the host's credential chain serves it), with
/// 5 MiB parts and a retention that would prune the 2020 backups after a good run.
fn pipeline(s: &Scratch, endpoint: &str) -> String {
    let file = s.path().join("role.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nartifact = \"backup-{{time}}\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"s3\"\nplugin = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"role/\"\n\
             endpoint = \"{endpoint}\"\npart_size = \"5MiB\"\n\n\
             [retention]\ndays = 7\nkeep_last = 1\n"
        ),
    )
    .expect("write pipeline");
    file.display().to_string()
}

/// Earlier backups in the bucket that a successful run's retention would delete.
fn old_backups(s3: &S3Server) -> Vec<String> {
    let dir = s3.bucket().join("role");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let old: Vec<String> = (1..=3)
        .map(|d| format!("backup-2020-01-0{d}T02-00-00-000Z.sql.zst"))
        .collect();
    for name in &old {
        std::fs::write(dir.join(name), "an earlier backup").expect("write");
        std::fs::write(dir.join(format!("{name}.sha256")), "x").expect("write");
    }
    old
}

fn assert_no_aws_secret(log: &str) {
    assert!(!log.contains(SECRET_KEY), "the secret key leaked:\n{log}");
    assert!(!log.contains(TOKEN), "the session token leaked:\n{log}");
}

fn server_root(s3: &S3Server) -> PathBuf {
    s3.bucket()
        .parent()
        .expect("the bucket is in the server's root")
        .to_path_buf()
}

#[test]
fn role_credentials_are_refreshed_during_a_long_upload() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    // 90 s: within both the host's and the plugin's refresh window (5 min, the SDK's jitter
    // takes it down to 2.5 min at most), so every request of the upload asks for fresh
    // credentials, as the requests near the end of an hour-long session would.
    let creds = CredentialServer::start(Duration::from_secs(90), || true);
    let s = Scratch::new();
    let file = pipeline(&s, &s3.endpoint());
    let out = s.run(
        &["--verbose", "run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &creds.uri()),
        ],
    );
    let log = logs(&out);
    assert!(out.status.success(), "run failed:\n{log}");
    assert_no_secret(&pg, &log);
    assert_no_aws_secret(&log);
    let served = creds.served.load(Ordering::SeqCst);
    eprintln!("the credential server handed out credentials {served} times during the run");
    // Once when the pipeline was prepared, then again for the upload's requests (the part
    // uploads alone are five).
    assert!(
        served > 5,
        "credentials were refreshed {served} times:\n{log}"
    );
    assert!(log.contains("refreshed the AWS credentials"), "{log}");

    let objects = s3.objects("role");
    let backup = objects
        .iter()
        .find(|n| n.ends_with(".sql.zst") && !n.starts_with("backup-2020"))
        .unwrap_or_else(|| panic!("the new backup is in the bucket: {objects:?}"));
    let size = std::fs::metadata(s3.bucket().join("role").join(backup))
        .expect("object")
        .len();
    assert!(
        size > 3 * 5 * 1024 * 1024,
        "{size} bytes: a multipart upload"
    );
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
}

#[test]
fn credentials_that_stop_coming_fail_the_run_and_leave_no_upload() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let old = old_backups(&s3);
    // The credential agent stops as soon as the multipart upload has started; what it
    // handed out last expires within the minute, too soon to go on with.
    let root = server_root(&s3);
    let creds = CredentialServer::start(Duration::from_secs(30), move || !uploads_pending(&root));
    let s = Scratch::new();
    let file = pipeline(&s, &s3.endpoint());
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &creds.uri()),
        ],
    );
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        creds.refused.load(Ordering::SeqCst) > 0,
        "it stopped mid-run"
    );
    assert!(
        log.contains("stage `sink s3` failed"),
        "names the sink: {log}"
    );
    assert!(
        log.contains("cannot refresh the AWS credentials of stage `sink s3`"),
        "says why: {log}"
    );
    assert!(log.contains("nothing was pruned"), "{log}");
    assert!(log.contains("aborted the upload"), "{log}");
    assert_no_secret(&pg, &log);
    assert_no_aws_secret(&log);

    // The earlier backups are all there, nothing new is visible, no parts stay behind.
    let mut expected: Vec<String> = old
        .iter()
        .flat_map(|n| [n.clone(), format!("{n}.sha256")])
        .collect();
    expected.sort();
    assert_eq!(s3.objects("role"), expected);
    assert!(
        s3.pending_uploads().is_empty(),
        "orphaned multipart upload: {:?}",
        s3.pending_uploads()
    );
}

#[test]
fn a_passing_outage_of_the_credential_source_is_ridden_out() {
    // The agent stops once the upload has started, but what it handed out last is valid
    // for two more minutes: the sink keeps using it (with a warning) and the run succeeds.
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let root = server_root(&s3);
    let creds = CredentialServer::start(Duration::from_secs(120), move || !uploads_pending(&root));
    let s = Scratch::new();
    let file = pipeline(&s, &s3.endpoint());
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &creds.uri()),
        ],
    );
    let log = logs(&out);
    assert!(out.status.success(), "run failed:\n{log}");
    assert!(
        creds.refused.load(Ordering::SeqCst) > 0,
        "it stopped mid-run"
    );
    assert!(
        log.contains("cannot refresh the AWS credentials")
            && log.contains("using the current ones"),
        "warns: {log}"
    );
    assert_no_secret(&pg, &log);
    assert_no_aws_secret(&log);
    assert!(
        s3.objects("role").iter().any(|n| n.ends_with(".sql.zst")),
        "{:?}",
        s3.objects("role")
    );
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
}

#[test]
fn keys_in_the_file_need_no_credential_chain() {
    // Explicit keys keep working as before: the plugin signs with them and the host's
    // chain is never asked (the credential server would count it).
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s3 = S3Server::start();
    let creds = CredentialServer::start(Duration::from_secs(90), || true);
    let s = Scratch::new();
    let file = s.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nartifact = \"backup-{{time}}\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[sink]]\nname = \"s3\"\nplugin = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"keys/\"\n\
             endpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"${{env:S3_SECRET_KEY}}\"\n",
            s3.endpoint()
        ),
    )
    .expect("write pipeline");
    let file = file.display().to_string();
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("S3_SECRET_KEY", SECRET_KEY),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &creds.uri()),
        ],
    );
    let log = logs(&out);
    assert!(out.status.success(), "{log}");
    assert_no_aws_secret(&log);
    assert_eq!(creds.served.load(Ordering::SeqCst), 0, "{log}");
    assert_eq!(s3.objects("keys").len(), 2, "{:?}", s3.objects("keys"));
}

#[test]
fn a_plugin_file_gets_host_credentials_only_when_the_file_allows_it() {
    // The same s3 component loaded from a file is not the built-in: its plan asks for the
    // host's credentials, which a plugin file gets only with `allow.credentials = ["aws"]`.
    // Without it the run is refused before anything runs, saying what to add; nothing is
    // resolved or stored. With it, the plugin gets them and stores the backup.
    let pg = PgCluster::start();
    pg.create_db("app");
    let s3 = S3Server::start();
    let creds = CredentialServer::start(Duration::from_secs(90), || true);
    let s = Scratch::new();
    let wasm = Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_s3.wasm");
    let file = s.path().join("file.toml");
    let write = |allow: &str| {
        std::fs::write(
            &file,
            format!(
                "[pipeline]\nartifact = \"backup-{{time}}\"\n\n\
                 [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
                 [[sink]]\nname = \"s3\"\nplugin = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"file/\"\n\
                 endpoint = \"{}\"\nallow = {{ hosts = [\"127.0.0.1:{}\"]{allow} }}\n",
                wasm.display(),
                s3.endpoint(),
                s3.port
            ),
        )
        .expect("write pipeline");
    };
    let run = || {
        s.run(
            &["run", file.to_str().expect("utf-8 path")],
            &[
                ("DATABASE_URL", &pg.url("app")),
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &creds.uri()),
            ],
        )
    };
    write("");
    let out = run();
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("asks for the host's AWS credentials, which the pipeline file does not grant"),
        "says why: {log}"
    );
    assert!(
        log.contains("allow = { credentials = [\"aws\"] }"),
        "says what to add: {log}"
    );
    assert_eq!(creds.served.load(Ordering::SeqCst), 0, "{log}");
    assert!(s3.objects("file").is_empty());

    write(", credentials = [\"aws\"]");
    let out = run();
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(creds.served.load(Ordering::SeqCst) > 0, "{log}");
    assert_eq!(s3.objects("file").len(), 2, "backup and manifest: {log}");
    assert!(!log.contains(SECRET_KEY), "the secret key leaked:\n{log}");
}
