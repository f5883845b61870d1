//! Fault matrix: inputs. Hostile and unlucky input: passwords that are common words or
//! full of URL characters, entity names and ids too long for a file name, non-ASCII hosts,
//! numbers from environment variables, and a disk that fills up mid-backup.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::git::Repo;
use crate::support::scratch::{Scratch, assert_no_secret, list, logs, nightly, stderr};
use crate::support::{PgCluster, load_sample};

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn assert_absent(text: &str, secret: &str) {
    assert!(!text.contains(secret), "`{secret}` leaked:\n{text}");
    let encoded = percent_encode(secret);
    assert!(!text.contains(&encoded), "`{encoded}` leaked:\n{text}");
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ------------------------------------------------------------------------ 12: redaction

/// The old script's users keep weak passwords such as `backup`: redaction must not turn
/// every `backup-…` artifact name into `***-…`, which both hides the name and tells anyone
/// reading the log what the password is.
#[test]
fn a_short_password_leaves_artifact_names_readable() {
    let pg = PgCluster::start();
    pg.psql(
        "postgres",
        "CREATE ROLE bk LOGIN PASSWORD 'backup'; CREATE DATABASE shop OWNER bk;",
    );
    pg.psql(
        "shop",
        "SET ROLE bk; CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    );
    let s = Scratch::new();
    let url = format!(
        "postgresql://bk:backup@127.0.0.1:{}/shop?sslmode=disable",
        pg.port()
    );
    let out = s.run(
        &[
            "--log-format",
            "json",
            "-v",
            "run",
            nightly().to_str().unwrap(),
        ],
        &[("DATABASE_URL", &url)],
    );
    let all = logs(&out);
    assert_eq!(code(&out), Some(0), "{all}");
    let backup = s
        .files()
        .into_iter()
        .find(|f| f.ends_with(".sql.zst"))
        .expect("a backup");
    assert!(!all.contains("***-"), "a mangled artifact name:\n{all}");
    assert!(
        stderr(&out).contains(&backup),
        "the log names the artifact {backup}:\n{all}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("one JSON report on stdout ({e}):\n{all}"));
    assert_eq!(report["artifact"], backup.as_str(), "{report}");
    // Where it stands as a password, even a short one is masked.
    let bad = format!(
        "postgresql://bk:backup@127.0.0.1:{}/nosuchdb?sslmode=disable",
        pg.port()
    );
    let out = s.run(
        &["run", nightly().to_str().unwrap()],
        &[("DATABASE_URL", &bad)],
    );
    let all = logs(&out);
    assert_eq!(code(&out), Some(1), "{all}");
    assert!(!all.contains("bk:backup@"), "{all}");
}

/// A long password (full of URL characters, given percent-encoded) never appears in
/// anything printed: the log, the JSON report, `list`, `verify`.
#[test]
fn a_long_password_appears_in_no_log_report_or_listing() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_sample(&pg, "app");
    let s = Scratch::new();
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str())];
    let file = nightly();
    let file = file.to_str().unwrap();
    let run = s.run(&["--log-format", "json", "-v", "run", file], &env);
    let all = logs(&run);
    assert_eq!(code(&run), Some(0), "{all}");
    assert_no_secret(&pg, &all);
    let report: serde_json::Value = serde_json::from_str(stdout(&run).trim())
        .unwrap_or_else(|e| panic!("one JSON report on stdout ({e}):\n{all}"));
    assert!(
        report["artifact"]
            .as_str()
            .is_some_and(|a| a.starts_with("backup-"))
    );
    for args in [
        vec!["list", file],
        vec!["verify", file],
        vec!["validate", file],
        vec!["-v", "--log-format", "json", "verify", file],
    ] {
        let out = s.run(&args, &env);
        let all = logs(&out);
        assert_eq!(code(&out), Some(0), "{args:?}: {all}");
        assert_no_secret(&pg, &all);
    }
}

/// A run that fails to connect (a wrong password, an unreachable host) says why and does not
/// print the password it tried, plain or percent-encoded.
#[test]
fn a_failing_connection_never_prints_the_password() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    let file = nightly();
    let file = file.to_str().unwrap();
    let wrong = "Wr0ng:p@ss/w%rd?x";
    let cases = [
        (
            format!(
                "postgresql://app:{}@127.0.0.1:{}/app?sslmode=disable",
                percent_encode(wrong),
                pg.port()
            ),
            "password authentication failed",
        ),
        (
            // A port nobody listens on.
            format!(
                "postgresql://app:{}@127.0.0.1:1/app?sslmode=disable&connect_timeout=3",
                percent_encode(wrong)
            ),
            "127.0.0.1",
        ),
        (
            format!(
                "host=127.0.0.1 port={} dbname=app user=app password='{}' sslmode=disable",
                pg.port(),
                wrong.replace('\'', "\\'")
            ),
            "password authentication failed",
        ),
    ];
    for (url, why) in cases {
        for json in [false, true] {
            let mut args = vec!["-v"];
            if json {
                args.extend(["--log-format", "json"]);
            }
            args.extend(["run", file]);
            let out = s.run(&args, &[("DATABASE_URL", &url)]);
            let all = logs(&out);
            assert_eq!(code(&out), Some(1), "{url}: {all}");
            assert!(all.contains(why), "the message says why ({why}):\n{all}");
            assert!(
                all.contains("source"),
                "the message names the stage:\n{all}"
            );
            assert_absent(&all, wrong);
            assert_no_secret(&pg, &all);
        }
    }
    assert_eq!(s.files(), Vec::<String>::new(), "nothing was written");
}

// ------------------------------------------------------------------------ 13: file names

fn snapshot_pipeline(s: &Scratch, query: &str) -> PathBuf {
    let file = s.path().join("snap.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"pg-snapshot\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[source.entities]]\ntype = \"role\"\nquery = \"\"\"\n{query}\n\"\"\"\n\n\
             [[sink]]\nname = \"git\"\nplugin = \"git\"\nrepository = \"${{env:REPO}}\"\n\
             author_name = \"Snap Bot\"\nauthor_email = \"bot@example.com\"\n"
        ),
    )
    .unwrap();
    file
}

fn snapshot_env<'a>(pg_url: &'a str, repo: &'a Repo, s: &'a Scratch) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", pg_url),
        ("REPO", repo.dir.to_str().unwrap()),
        ("HOME", s.path().to_str().unwrap()),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
    ]
}

const LONG_ID_LEN: usize = 300;

fn roles_schema(pg: &PgCluster) {
    pg.psql(
        "app",
        &format!(
            "SET ROLE app;
             CREATE TABLE roles (id text PRIMARY KEY, name text NOT NULL, data text NOT NULL);
             INSERT INTO roles VALUES
               ('1', 'Admin', '{{\"a\": 1}}'),
               ('2', repeat('Ä', 120) || repeat('n', 120), '{{\"b\": 2}}'),
               (repeat('i', {LONG_ID_LEN}), 'Long id', '{{\"c\": 3}}');"
        ),
    );
}

/// A 240-character name and a 300-byte id get file names of at most 200 bytes (room for a
/// sink's temporary name within the 255-byte limit), that
/// keep the time, type, action and a readable start of the name; `snapshot record` and
/// `history` use the same names.
#[test]
fn long_entity_names_and_ids_are_recorded_with_bounded_file_names() {
    let pg = PgCluster::start();
    pg.create_db("app");
    roles_schema(&pg);
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let url = pg.url("app");
    let file = snapshot_pipeline(&s, "SELECT id, name, data FROM roles ORDER BY id");
    let file = file.to_str().unwrap();
    let env = snapshot_env(&url, &repo, &s);
    let head = repo.head();
    let out = s.run(&["run", file], &env);
    let all = logs(&out);
    assert_eq!(code(&out), Some(0), "{all}");
    assert_no_secret(&pg, &all);
    let files = list(&repo.dir.join("snapshots"));
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert!(f.len() <= 200, "{} bytes: {f}", f.len());
        assert!(f.contains("_role_create_"), "{f}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("_role_create_Admin_1.json"))
    );
    let long_name = files
        .iter()
        .find(|f| f.contains("_role_create____"))
        .unwrap_or_else(|| panic!("the long name keeps its start: {files:?}"));
    assert!(
        long_name.ends_with("_2.json"),
        "the id is kept whole: {long_name}"
    );
    let long_id = files
        .iter()
        .find(|f| f.contains("_Long_id_"))
        .unwrap_or_else(|| panic!("{files:?}"));
    assert!(long_id.contains("_Long_id_iiiiiiii"), "{long_id}");
    assert_eq!(repo.commits_since(&head).len(), 3, "one commit each");
    // A second run finds every one of them again: nothing changed.
    let out = s.run(&["run", file], &env);
    assert_eq!(code(&out), Some(0), "{}", logs(&out));
    assert_eq!(list(&repo.dir.join("snapshots")).len(), 3);

    // `snapshot record` names its file the same way, and `history` finds it by the id.
    let id = "x/".repeat(LONG_ID_LEN / 2);
    let name = "N".repeat(240);
    let out = s.run_with_stdin(
        &[
            "snapshot", "record", file, "--type", "role", "--id", &id, "--name", &name, "--action",
            "create",
        ],
        &env,
        "{\"d\": 1}",
    );
    let printed = stdout(&out);
    assert_eq!(code(&out), Some(0), "{}", logs(&out));
    let recorded = printed.trim();
    assert!(recorded.len() <= 200, "{recorded}");
    assert!(recorded.contains("_role_create_NNNN"), "{recorded}");
    assert!(
        repo.dir.join("snapshots").join(recorded).is_file(),
        "{recorded}"
    );
    let out = s.run(
        &["snapshot", "history", file, "--type", "role", "--id", &id],
        &env,
    );
    assert_eq!(code(&out), Some(0), "{}", logs(&out));
    assert!(stdout(&out).contains(recorded), "{}", logs(&out));
}

/// An entity whose data cannot be recorded (its query row is not JSON) is named, with its
/// type, id and why, and the run exits 1; every other change is still recorded and
/// committed, and the broken entity is not taken for deleted.
#[test]
fn an_entity_that_cannot_be_recorded_does_not_stop_the_others() {
    let pg = PgCluster::start();
    pg.create_db("app");
    roles_schema(&pg);
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let url = pg.url("app");
    let file = snapshot_pipeline(&s, "SELECT id, name, data FROM roles ORDER BY id");
    let file = file.to_str().unwrap();
    let env = snapshot_env(&url, &repo, &s);
    let out = s.run(&["run", file], &env);
    assert_eq!(code(&out), Some(0), "{}", logs(&out));
    let before = list(&repo.dir.join("snapshots"));
    let head = repo.head();

    pg.psql(
        "app",
        "SET ROLE app;
         UPDATE roles SET data = '{not json' WHERE id = '1';
         UPDATE roles SET data = '{\"b\": 3}' WHERE id = '2';
         INSERT INTO roles VALUES ('4', 'Viewer', '{\"v\": true}');",
    );
    let out = s.run(&["run", file], &env);
    let all = logs(&out);
    assert_eq!(code(&out), Some(1), "{all}");
    assert!(
        all.contains("role \"Admin\" (1)") && all.contains("not JSON"),
        "names the entity and why:\n{all}"
    );
    assert_no_secret(&pg, &all);
    let after = list(&repo.dir.join("snapshots"));
    let new: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    assert_eq!(new.len(), 2, "the update of 2 and the create of 4: {new:?}");
    assert!(
        new.iter()
            .any(|f| f.ends_with("_role_update_") || f.contains("_role_update_"))
    );
    assert!(
        new.iter()
            .any(|f| f.ends_with("_role_create_Viewer_4.json"))
    );
    assert!(
        !after.iter().any(|f| f.contains("_role_delete_")),
        "the broken entity is not recorded as deleted: {after:?}"
    );
    assert_eq!(
        repo.commits_since(&head).len(),
        2,
        "the others are committed"
    );
}

// ---------------------------------------------------------------- 14: panics and types

/// A non-ASCII host in an s3 endpoint, checked against an `allow.hosts` wildcard, is a
/// configuration error (exit 2) with a message, never a panic (exit 101).
#[test]
fn a_non_ascii_endpoint_host_is_a_configuration_error_not_a_panic() {
    let s = Scratch::new();
    for (endpoint, hosts) in [
        ("https://éxample.com", "[\"*.example.com\"]"),
        ("https://bücher.example.com:9000", "[\"*.example.com\"]"),
        ("https://example.com", "[\"*.éxample.com\"]"),
        ("http://s3.例え.co.jp", "[\"*.co.jp\"]"),
    ] {
        let file = s.path().join("s3.toml");
        std::fs::write(
            &file,
            format!(
                "[source]\nplugin = \"postgres\"\nurl = \"postgresql://app@127.0.0.1/app\"\n\n\
                 [[sink]]\nplugin = \"s3\"\nbucket = \"b\"\nendpoint = \"{endpoint}\"\n\
                 access_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"secret-key-123456\"\n\
                 allow = {{ hosts = {hosts} }}\n"
            ),
        )
        .unwrap();
        let out = s.run(&["validate", file.to_str().unwrap()], &[]);
        let all = logs(&out);
        assert_eq!(code(&out), Some(2), "{endpoint} {hosts}: {all}");
        assert!(!all.contains("panicked"), "{all}");
        assert!(all.contains("s3.toml:"), "names the file: {all}");
        assert!(
            all.contains("ASCII") || all.contains("xn--"),
            "says what is wrong: {all}"
        );
        assert!(!all.contains("secret-key-123456"), "{all}");
    }
}

fn zstd_pipeline(s: &Scratch) -> PathBuf {
    let file = s.path().join("zl.toml");
    std::fs::write(
        &file,
        "[source]\nplugin = \"postgres\"\nurl = \"${env:DATABASE_URL}\"\n\n\
         [[transform]]\nplugin = \"zstd\"\nlevel = \"${env:ZL:-3}\"\nthreads = \"${env:ZT:-0}\"\n\n\
         [[sink]]\nplugin = \"local\"\npath = \"./backups\"\n",
    )
    .unwrap();
    file
}

/// The built-in zstd reads `level` and `threads` from environment variables like every
/// other integer key; a value that is not a number names the key, its line and the variable.
#[test]
fn zstd_level_and_threads_come_from_environment_variables() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_sample(&pg, "app");
    let s = Scratch::new();
    let file = zstd_pipeline(&s);
    let file = file.to_str().unwrap();
    let url = pg.url("app");
    let out = s.run(
        &["run", file],
        &[("DATABASE_URL", &url), ("ZL", "19"), ("ZT", "1")],
    );
    assert_eq!(code(&out), Some(0), "{}", logs(&out));
    let backup = s
        .files()
        .into_iter()
        .find(|f| f.ends_with(".sql.zst"))
        .expect("a backup");
    let check = Command::new("zstd")
        .args(["-t", "-q"])
        .arg(s.backups().join(&backup))
        .output()
        .expect("zstd");
    assert!(check.status.success(), "the backup decompresses");
    // The defaults apply when the variables are unset.
    let out = s.run(&["validate", file], &[("DATABASE_URL", &url)]);
    assert_eq!(code(&out), Some(0), "{}", logs(&out));

    for (var, value, key) in [
        ("ZL", "high", "transform[0].level"),
        ("ZT", "-x", "transform[0].threads"),
    ] {
        let out = s.run(&["validate", file], &[("DATABASE_URL", &url), (var, value)]);
        let all = logs(&out);
        assert_eq!(code(&out), Some(2), "{all}");
        assert!(
            all.contains("zl.toml:")
                && all.contains(key)
                && all.contains(&format!("${{env:{var}}}")),
            "names the file, the key and the variable: {all}"
        );
        assert!(all.contains(&format!("`{value}`")), "{all}");
    }
    let out = s.run(&["validate", file], &[("DATABASE_URL", &url), ("ZL", "25")]);
    let all = logs(&out);
    assert_eq!(code(&out), Some(2), "{all}");
    assert!(all.contains("out of range"), "{all}");
    assert_eq!(s.files().len(), 2, "no failed validation wrote anything");
}

// ------------------------------------------------------------------------ 15: disk full

/// A tmpfs mounted for one test, unmounted when dropped (even when the test fails).
pub(crate) struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount_with(dir, &format!("size={size},mode=0700"))
    }

    /// Mounted with `options` (`-o`), e.g. `size=64m,mode=0700,noexec`.
    pub(crate) fn mount_with(dir: &Path, options: &str) -> Tmpfs {
        if unsafe { libc::geteuid() } != 0 {
            panic!(
                "this test needs root to mount a small tmpfs (mount -t tmpfs); \
                 run the tests as root, as CI does"
            );
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily if it is busy (a process of a failed test still holds a file there).
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A backup that does not fit on the disk fails with "no space left on device" naming the
/// sink and the file; nothing partial stays behind and the earlier backup is intact.
#[test]
fn a_full_disk_says_no_space_left_and_keeps_the_earlier_backup() {
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "SET ROLE app; CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'small');",
    );
    let s = Scratch::new();
    let disk = Tmpfs::mount(&s.backups(), "2m");
    let url = pg.url("app");
    let file = nightly();
    let file = file.to_str().unwrap();
    let env = [("DATABASE_URL", url.as_str())];
    let out = s.run(&["run", file], &env);
    assert_eq!(code(&out), Some(0), "{}", logs(&out));
    let earlier = s.files();
    assert_eq!(earlier.len(), 2, "{earlier:?}");
    let sums: Vec<String> = earlier
        .iter()
        .map(|f| sha256(&s.backups().join(f)))
        .collect();

    // Random text compresses to about half: ~8 MiB of it does not fit in 2 MiB.
    pg.psql(
        "app",
        "SET ROLE app; INSERT INTO t SELECT i, md5(random()::text) || md5(random()::text) \
         FROM generate_series(1, 250000) i;",
    );
    let out = s.run(&["run", file], &env);
    let all = logs(&out);
    assert_eq!(code(&out), Some(1), "{all}");
    assert!(all.contains("no space left on device"), "says why:\n{all}");
    assert!(
        !all.contains("os error 29"),
        "not a generic I/O error:\n{all}"
    );
    assert!(all.contains("sink local"), "names the sink:\n{all}");
    assert!(
        all.contains(&s.backups().display().to_string()),
        "names the path:\n{all}"
    );
    assert_no_secret(&pg, &all);
    let names = list(&disk.dir);
    assert_eq!(names, earlier, "no partial file, the earlier backup kept");
    let now: Vec<String> = earlier
        .iter()
        .map(|f| sha256(&s.backups().join(f)))
        .collect();
    assert_eq!(now, sums, "the earlier backup is intact");
}
