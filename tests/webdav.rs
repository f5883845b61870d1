//! End to end with a third-party plugin: the example WebDAV sink (`examples/webdav-sink`),
//! built from its own crate the way a stranger would build it, loaded from its file, against
//! a real PostgreSQL server and a real WebDAV server (`rclone serve webdav` with basic
//! authentication, started by this harness; it keeps what it stores as plain files, so the
//! collection can be checked on disk). The sink files each artifact under the month it was
//! made (`YYYY/MM/`), and finds it again from the `created-ms` that `list` returned.
//!
//! rclone must be on PATH: `apt-get install rclone` (scripts/install-prerequisites.sh does it).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::PgCluster;
use support::scratch::{Scratch, assert_no_secret, is_backup_name, logs, stderr};
use support::webdav::{PASSWORD, USER, WebDavServer, plugin};

/// Neither the database's password nor the WebDAV server's appears in `text`.
fn assert_no_secrets(pg: &PgCluster, text: &str) {
    assert_no_secret(pg, text);
    assert!(
        !text.contains(PASSWORD),
        "the WebDAV password leaked:\n{text}"
    );
}

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

/// A pipeline file with the WebDAV plugin as sink `dav`; `allow` and `extra` go into its
/// table, `more` after it (another sink, the retention).
fn dav_pipeline(s: &Scratch, dav: &WebDavServer, allow: &str, extra: &str, more: &str) -> String {
    let file = s.path().join("dav.toml");
    std::fs::write(
        &file,
        format!(
            "[pipeline]\nartifact = \"backup-{{time}}\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"dav\"\nplugin = \"{}\"\nurl = \"{}\"\nusername = \"{USER}\"\n\
             password = \"${{env:DAV_PASSWORD}}\"\n{allow}\n{extra}\n\n{more}\n",
            plugin().display(),
            dav.url(),
        ),
    )
    .expect("write the pipeline file");
    file.display().to_string()
}

fn granted(dav: &WebDavServer) -> String {
    format!("allow = {{ hosts = [\"{}\"] }}", dav.host())
}

/// Prunes down to the newest two. (`keep_last` alone is only a floor and prunes nothing:
/// `days = 0` is what lets it prune.)
const RETENTION: &str = "[retention]\ndays = 0\nkeep_last = 2\n";

/// Backups (not manifests) in `files`.
fn backups(files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| is_backup_name(f))
        .cloned()
        .collect()
}

/// About 2.5 MiB once compressed: the upload takes many chunks.
fn load_noise(pg: &PgCluster, db: &str, rows: u32) {
    pg.psql(
        db,
        &format!(
            "SET ROLE app; CREATE TABLE noise AS SELECT i, md5(i::text) || md5(random()::text) AS h \
             FROM generate_series(1, {rows}) i;"
        ),
    );
}

#[test]
fn round_trip_through_webdav_with_retention() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    load_noise(&pg, "app", 60_000);
    let dav = WebDavServer::start();
    let s = Scratch::new();
    let file = dav_pipeline(&s, &dav, &granted(&dav), "", RETENTION);
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str()), ("DAV_PASSWORD", PASSWORD)];

    let mut made = Vec::new();
    for run in 1..=3 {
        let out = s.run(&["run", &file], &env);
        let log = logs(&out);
        assert!(
            out.status.success(),
            "run {run} failed:\n{log}\n--- rclone ---\n{}",
            dav.log()
        );
        assert_no_secrets(&pg, &log);
        let now = backups(&dav.files());
        let new: Vec<&String> = now.iter().filter(|b| !made.contains(*b)).collect();
        assert_eq!(new.len(), 1, "run {run} stored one backup: {now:?}");
        made.push(new[0].clone());
        // Backup names carry milliseconds; keep the runs apart.
        std::thread::sleep(Duration::from_millis(20));
    }

    // The newest two and their manifests remain; the oldest was pruned; nothing half-written.
    let files = dav.files();
    let mut expected = vec![
        made[1].clone(),
        format!("{}.sha256", made[1]),
        made[2].clone(),
        format!("{}.sha256", made[2]),
    ];
    expected.sort();
    assert_eq!(files, expected, "made {made:?}");
    assert!(!files.iter().any(|f| f.contains("partial")), "{files:?}");

    // Each backup and its manifest are filed under the month they were made (the time in
    // the name is the `created-ms` the host gave `put`), side by side.
    for name in &made[1..] {
        let month = format!(
            "{}/{}",
            &name["backup-".len()..][..4],
            &name["backup-YYYY-".len()..][..2]
        );
        assert_eq!(
            dav.path_of(name),
            Path::new(&month).join(name),
            "{name} is filed by its month"
        );
        assert_eq!(
            dav.path_of(&format!("{name}.sha256")),
            Path::new(&month).join(format!("{name}.sha256")),
            "its manifest beside it"
        );
    }

    // What the server holds is what the manifest describes, byte for byte.
    let newest = &made[2];
    let stored = dav.collection().join(dav.path_of(newest));
    let size = std::fs::metadata(&stored).expect("the backup").len();
    assert!(size > 1024 * 1024, "{size} bytes: several chunks");
    let manifest = std::fs::read_to_string(
        dav.collection()
            .join(dav.path_of(&format!("{newest}.sha256"))),
    )
    .expect("the manifest");
    assert_eq!(
        manifest,
        format!("{}  {newest}\n# pipeline: dav\n", sha256_hex(&stored)),
        "the manifest matches the stored bytes"
    );

    // `pipeline list` reads the collection through the plugin (PROPFIND).
    let out = s.run(&["list", &file], &env);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", logs(&out));
    assert!(listing.contains("sink dav (2 backups)"), "{listing}");
    for name in &made[1..] {
        let line = listing
            .lines()
            .find(|l| l.contains(name.as_str()))
            .unwrap_or_else(|| panic!("{name} is listed:\n{listing}"));
        assert!(line.contains("sha256 recorded"), "{line}");
    }
    assert!(!listing.contains(made[0].as_str()), "{listing}");
    assert!(!listing.contains("partial"), "{listing}");
    assert_no_secrets(&pg, &logs(&out));

    // `pipeline verify` downloads the newest (GET) and checks it against its manifest.
    let out = s.run(&["verify", &file], &env);
    let text = logs(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("ok      sink dav: {newest}"))
            && text.contains("matches its manifest"),
        "{text}"
    );

    // And restores it into a fresh database, equal to the source.
    pg.create_db("restored");
    let out = s.run(&["restore", &file, "--to", &pg.url("restored")], &env);
    let err = stderr(&out);
    assert!(out.status.success(), "restore failed:\n{err}");
    assert!(err.contains(newest.as_str()), "restores the newest: {err}");
    assert_no_secrets(&pg, &err);
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));
}

#[test]
fn a_plugin_not_granted_its_host_does_not_run() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let dav = WebDavServer::start();
    let s = Scratch::new();
    let file = dav_pipeline(&s, &dav, "", "", RETENTION);
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str()), ("DAV_PASSWORD", PASSWORD)];
    let out = s.run(&["run", &file], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("needs to reach the host `{}`", dav.host())),
        "{err}"
    );
    assert!(
        err.contains(&format!("allow = {{ hosts = [\"{}\"] }}", dav.host())),
        "says what to add: {err}"
    );
    assert!(err.contains("dav.toml:"), "names the file: {err}");
    assert_no_secrets(&pg, &logs(&out));
    assert_eq!(
        support::scratch::list(dav.root()),
        Vec::<String>::new(),
        "nothing reached the server"
    );

    // `validate` says the same without running anything.
    let out = s.run(&["validate", &file], &env);
    assert_eq!(out.status.code(), Some(2), "{}", logs(&out));
    assert!(
        stderr(&out).contains("allow = { hosts = ["),
        "{}",
        stderr(&out)
    );

    // Granted, the same plugin works.
    let file = dav_pipeline(&s, &dav, &granted(&dav), "", RETENTION);
    let out = s.run(&["run", &file], &env);
    assert!(out.status.success(), "{}", logs(&out));
    assert_eq!(dav.files().len(), 2, "{:?}", dav.files());
}

#[test]
fn a_wrong_password_fails_the_run_and_prunes_nothing() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let dav = WebDavServer::start();
    let s = Scratch::new();
    // A second sink, local, which works: its old backups are what a successful run would
    // prune.
    let local = format!(
        "[[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n\n{RETENTION}",
        s.backups().display()
    );
    let file = dav_pipeline(&s, &dav, &granted(&dav), "", &local);
    let url = pg.url("app");

    // A good run first: the WebDAV collection holds one backup.
    let out = s.run(
        &["run", &file],
        &[("DATABASE_URL", url.as_str()), ("DAV_PASSWORD", PASSWORD)],
    );
    assert!(out.status.success(), "{}", logs(&out));
    let earlier = dav.files();
    assert_eq!(backups(&earlier).len(), 1, "{earlier:?}");
    assert_eq!(earlier.len(), 2, "and its manifest: {earlier:?}");

    let old: Vec<String> = (1..=3)
        .map(|d| format!("backup-2020-01-0{d}T02-00-00-000Z.sql.zst"))
        .collect();
    for name in &old {
        std::fs::write(s.backups().join(name), "old").expect("write");
        std::fs::write(s.backups().join(format!("{name}.sha256")), "x").expect("write");
    }

    let wrong = "not-the-dav-password-42";
    std::thread::sleep(Duration::from_millis(20));
    let out = s.run(
        &["run", &file],
        &[("DATABASE_URL", url.as_str()), ("DAV_PASSWORD", wrong)],
    );
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("stage `sink dav` failed"),
        "names the sink: {log}"
    );
    assert!(log.contains("HTTP 401"), "names the status: {log}");
    assert!(log.contains(&dav.url()), "names the URL: {log}");
    assert!(
        log.contains("check `username` and `password`"),
        "says why: {log}"
    );
    assert!(log.contains("stored by sink local only"), "{log}");
    assert!(log.contains("nothing was pruned"), "{log}");
    assert!(!log.contains(wrong), "the wrong password leaked:\n{log}");
    assert_no_secrets(&pg, &log);

    // The collection is as it was; the local sink pruned nothing.
    assert_eq!(dav.files(), earlier);
    let files = s.files();
    for name in &old {
        assert!(files.contains(name), "{files:?}");
    }
    assert_eq!(backups(&files).len(), old.len() + 2, "{files:?}");
}

/// The sink's memory is capped far below the artifact's size: the upload and the download
/// can only work by streaming.
#[test]
fn a_dump_larger_than_the_sinks_memory_streams_through() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_noise(&pg, "app", 500_000);
    let dav = WebDavServer::start();
    let s = Scratch::new();
    let file = dav_pipeline(
        &s,
        &dav,
        &granted(&dav),
        "limits = { memory = \"4MiB\" }",
        "",
    );
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str()), ("DAV_PASSWORD", PASSWORD)];
    let out = s.run(&["run", &file], &env);
    let log = logs(&out);
    assert!(out.status.success(), "{log}\n--- rclone ---\n{}", dav.log());
    let files = dav.files();
    let backup = backups(&files).pop().expect("a backup");
    let size = std::fs::metadata(dav.collection().join(dav.path_of(&backup)))
        .expect("the backup")
        .len();
    assert!(
        size > 16 * 1024 * 1024,
        "{size} bytes: four times the memory limit"
    );

    let out = s.run(&["verify", &file], &env);
    let text = logs(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("matches its manifest"), "{text}");
}

#[test]
fn a_dump_failing_midway_leaves_nothing_on_the_server() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_noise(&pg, "app", 200_000);
    support::fail_late(&pg, "app");
    let dav = WebDavServer::start();
    let s = Scratch::new();
    let file = dav_pipeline(&s, &dav, &granted(&dav), "", "");
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str()), ("DAV_PASSWORD", PASSWORD)];
    let out = s.run(&["run", &file], &env);
    let log = logs(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("row-level security"),
        "the cause is pg_dump's: {log}"
    );
    // The upload had started (the collection exists) and its `.partial` was deleted.
    assert!(dav.collection().is_dir(), "{log}");
    assert!(
        log.contains("deleted the incomplete upload"),
        "it failed mid-upload, not before: {log}"
    );
    assert_eq!(
        dav.files(),
        Vec::<String>::new(),
        "{log}\n--- rclone ---\n{}",
        dav.log()
    );
}
