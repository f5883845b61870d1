//! End to end: `pipeline run nightly` against a real PostgreSQL server, restored with the
//! standard tools (`zstd`, `psql`), and every failure the issue lists.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::PgCluster;
use support::scratch::{Scratch, assert_no_secret, is_backup_name, nightly, stderr};

fn sha256_hex(path: &Path) -> String {
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

#[test]
fn nightly_backup_restores_to_an_equal_database() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let url = pg.url("app");
    let out = s.run(
        &["run", nightly().to_str().unwrap()],
        &[("DATABASE_URL", &url)],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "run failed:\n{err}");
    assert_no_secret(&pg, &err);

    let files = s.files();
    assert_eq!(files.len(), 2, "one backup and its manifest: {files:?}");
    let backup = files
        .iter()
        .find(|f| f.ends_with(".sql.zst"))
        .expect("a .sql.zst backup");
    assert!(is_backup_name(backup), "name format: {backup}");
    let path = s.backups().join(backup);

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backups must not be world-readable");

    // The manifest is sha256sum's format and checks with the standard tool.
    let manifest = std::fs::read_to_string(s.backups().join(format!("{backup}.sha256"))).unwrap();
    // The checksum line, then the pipeline that made it (a comment `sha256sum` skips).
    assert_eq!(
        manifest,
        format!("{}  {backup}\n# pipeline: nightly\n", sha256_hex(&path))
    );
    let check = Command::new("sha256sum")
        .args(["-c", "--strict"])
        .arg(format!("{backup}.sha256"))
        .current_dir(s.backups())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Restore with the standard tools only: zstd -d, then psql.
    let sql = s.path().join("restore.sql");
    let z = Command::new("zstd")
        .args(["-d", "-q", "-o"])
        .arg(&sql)
        .arg(&path)
        .status()
        .expect("zstd is installed");
    assert!(z.success());
    let text = std::fs::read_to_string(&sql).unwrap();
    assert!(
        text.contains("DROP TABLE IF EXISTS"),
        "plain SQL with --clean --if-exists"
    );
    assert!(!text.contains("OWNER TO"), "--no-owner");
    pg.create_db("restored");
    pg.psql_file("restored", &sql)
        .expect("psql restores the dump");
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));
}

#[test]
fn missing_database_url_is_a_config_error_that_names_it() {
    let s = Scratch::new();
    let out = s.run(&["run", nightly().to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("DATABASE_URL is not set"), "{err}");
    assert!(err.contains("nightly.toml:"), "names the file: {err}");
    assert!(s.files().is_empty(), "nothing written: {:?}", s.files());
}

/// Earlier backups that every failure must leave exactly as they were.
fn seed_old_backup(s: &Scratch) -> (PathBuf, Vec<u8>) {
    std::fs::create_dir_all(s.backups()).unwrap();
    let old = s.backups().join("backup-2020-01-01T00-00-00-000Z.sql.zst");
    let bytes = b"an earlier good backup".to_vec();
    std::fs::write(&old, &bytes).unwrap();
    (old, bytes)
}

#[test]
fn database_down_fails_and_keeps_earlier_backups() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let url = pg.url("app");
    pg.stop();
    let s = Scratch::new();
    let (old, bytes) = seed_old_backup(&s);
    // Retention of 1 day would delete the 2020 backup if a failed run pruned.
    let out = s.run(
        &["run", nightly().to_str().unwrap()],
        &[("DATABASE_URL", &url), ("BACKUP_RETENTION_DAYS", "1")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pg_dump"), "names the cause: {err}");
    assert!(
        err.contains("connection") || err.contains("connect"),
        "says it could not connect: {err}"
    );
    assert!(err.contains("nothing was pruned"), "{err}");
    assert_no_secret(&pg, &err);
    assert_eq!(
        s.files(),
        vec!["backup-2020-01-01T00-00-00-000Z.sql.zst".to_string()],
        "no partial artifact left"
    );
    assert_eq!(std::fs::read(&old).unwrap(), bytes);
}

/// pg_dump fails after it has streamed data (row-level security stops it at a table it
/// could lock but not copy): the half-written backup must vanish, older ones stay.
#[test]
fn a_dump_failing_midway_leaves_no_partial_file() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    pg.psql(
        "app",
        "CREATE TABLE zz_private (x int); INSERT INTO zz_private VALUES (1); \
         ALTER TABLE zz_private ENABLE ROW LEVEL SECURITY; GRANT SELECT ON zz_private TO app;",
    );
    let s = Scratch::new();
    let (old, bytes) = seed_old_backup(&s);
    let out = s.run(
        &["run", nightly().to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("row-level security"),
        "names pg_dump's reason: {err}"
    );
    assert_eq!(
        s.files(),
        vec!["backup-2020-01-01T00-00-00-000Z.sql.zst".to_string()],
        "no partial file left"
    );
    assert_eq!(std::fs::read(&old).unwrap(), bytes);
}

#[test]
fn broken_pipeline_file_names_file_line_and_column() {
    let s = Scratch::new();
    let file = s.path().join("broken.toml");
    std::fs::write(&file, "[source]\nplugin = \"postgres\"\nurl = \"x\"\n\n[[sink]]\nplugin = \"local\"\npath = \"./b\"\ncompression = 9\n").unwrap();
    let out = s.run(&["run", file.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("broken.toml:8:1: sink[0].compression: unknown key for plugin `local`"),
        "{err}"
    );

    std::fs::write(&file, "[source\nplugin = \"postgres\"\n").unwrap();
    let out = s.run(&["validate", file.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("broken.toml:1:") && err.contains("invalid TOML"),
        "{err}"
    );
    assert!(
        !s.path().join("b").exists(),
        "validation has no side effects"
    );
}

#[test]
fn unwritable_backup_directory_fails_without_an_artifact() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    // A path below a regular file can never be created, even by root.
    let blocker = s.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let dir = blocker.join("backups");
    let out = s.run(
        &["run", nightly().to_str().unwrap()],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("BACKUP_DIR", dir.to_str().unwrap()),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(dir.to_str().unwrap()),
        "names the directory: {err}"
    );
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "x");
}

/// The built-in local sink loaded as a file is a third-party plugin: it gets only what the
/// file grants.
fn third_party_pipeline(s: &Scratch, allow: &str) -> PathBuf {
    let wasm = Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_local.wasm");
    let file = s.path().join("third.toml");
    let backups = s.backups();
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n[[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"mine\"\nplugin = \"{}\"\npath = \"{}\"\n{allow}\n",
            wasm.display(),
            backups.display()
        ),
    )
    .unwrap();
    file
}

#[test]
fn a_plugin_file_is_denied_a_directory_it_was_not_granted() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let file = third_party_pipeline(&s, "");
    let out = s.run(
        &["run", file.to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not grant"), "{err}");
    assert!(
        err.contains(&format!(
            "allow = {{ directories = [\"{}\"] }}",
            s.backups().display()
        )),
        "says what to add: {err}"
    );
    assert!(!s.backups().exists(), "nothing created");

    // Granted, the same plugin works.
    std::fs::create_dir_all(s.backups()).unwrap();
    let file = third_party_pipeline(
        &s,
        &format!(
            "allow = {{ directories = [\"{}\"] }}",
            s.backups().display()
        ),
    );
    let out = s.run(
        &["run", file.to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.files().len(), 2, "{:?}", s.files());
}

#[test]
fn a_second_run_while_one_holds_the_lock_exits_at_once() {
    use sha2::Digest;
    let s = Scratch::new();
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The lock is keyed by the pipeline's name and a hash of its file's canonical path.
    let canonical = std::fs::canonicalize(nightly()).unwrap();
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state.join(format!("nightly-{}.lock", hex::encode(&digest[..8]))))
        .unwrap();
    lock.lock().unwrap();
    let out = s.run(
        &["run", nightly().to_str().unwrap()],
        &[("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("another run of pipeline `nightly` is in progress"),
        "{err}"
    );
    assert!(s.files().is_empty());
}

#[test]
fn retention_prunes_only_this_pipelines_old_backups() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    std::fs::create_dir_all(s.backups()).unwrap();
    let old: Vec<String> = (1..=5)
        .map(|d| format!("backup-2020-01-0{d}T02-00-00-000Z.sql.zst"))
        .collect();
    // Ages are measured from the newest earlier backup (a clock that jumped ahead must not
    // age real backups), so the last run before this one was an hour ago.
    let t = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let recent = format!("backup-{}.sql.zst", t.strftime("%Y-%m-%dT%H-%M-%S-000Z"));
    for name in old.iter().chain([&recent]) {
        std::fs::write(s.backups().join(name), "old").unwrap();
        // Made by this pipeline, as the manifest's owner line says.
        std::fs::write(
            s.backups().join(format!("{name}.sha256")),
            "x\n# pipeline: nightly\n",
        )
        .unwrap();
    }
    let strangers = [
        "notes.txt",
        "backup-2020-01-01T00-00-00-000Z.sql",
        "other-2020-01-01T00-00-00-000Z.sql.zst",
    ];
    for name in strangers {
        std::fs::write(s.backups().join(name), "keep me").unwrap();
    }
    let out = s.run(
        &["run", nightly().to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let files = s.files();
    // keep_last = 3 in nightly.toml: the new backup and the two newest earlier ones stay.
    let backups: Vec<&String> = files.iter().filter(|f| is_backup_name(f)).collect();
    assert_eq!(backups.len(), 3, "{files:?}");
    assert!(
        files.contains(&recent) && files.contains(&old[4]),
        "{files:?}"
    );
    assert!(
        !files.contains(&old[0]) && !files.contains(&format!("{}.sha256", old[0])),
        "{files:?}"
    );
    for name in strangers {
        assert!(
            files.contains(&name.to_string()),
            "{name} must never be touched: {files:?}"
        );
    }

    // `pipeline list` shows them with what retention says.
    let out = s.run(
        &["list", nightly().to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(listing.contains("sink local (3 backups)"), "{listing}");
    assert!(listing.contains("keep (keep_last"), "{listing}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    let out = s.run(
        &["--log-format", "json", "run", nightly().to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("a JSON report on stdout");
    assert_eq!(report["pipeline"], "nightly");
    assert_eq!(report["sha256"].as_str().map(str::len), Some(64));
}

#[test]
fn plugins_lists_the_built_ins() {
    let s = Scratch::new();
    let out = s.run(&["plugins"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    for expected in [
        "postgres ",
        "(source)",
        "local ",
        "(sink)",
        "zstd ",
        "gzip ",
        "(transform)",
        "url",
        "path",
        "level",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn plugins_inspect_shows_what_a_file_would_need() {
    let s = Scratch::new();
    let wasm = Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_local.wasm");
    let out = s.run(&["plugins", "inspect", wasm.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    for expected in [
        "local 0.1.0 (sink)",
        "path  path, required",
        "WIT: pipeline:plugin@0.3.0: compatible",
        "pipeline:plugin/sink@0.3.0",
        "wasi:filesystem/preopens@",
        "— files: only directories in `allow.directories`",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let not_wasm = s.path().join("x.wasm");
    std::fs::write(&not_wasm, "not a component").unwrap();
    let out = s.run(&["plugins", "inspect", not_wasm.to_str().unwrap()], &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("x.wasm"), "{}", stderr(&out));
}
