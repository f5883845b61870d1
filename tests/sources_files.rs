//! The `sqlite` and `files` sources end to end, with the real `sqlite3` and GNU `tar`:
//! a consistent copy of a SQLite database while a writer commits (WAL and rollback
//! journal), round trips through transforms and sinks that restore equal to the source
//! (content, modes, times, links), symbolic links never followed out of the grant, and
//! hostile archives refused without writing outside the target.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use support::scratch::{Scratch, logs};

/// A program the tests run, or a loud panic saying how to install it.
fn require(program: &str, apt: &str) {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{program}` is needed by these tests: install it (Debian: apt-get install {apt}; \
         scripts/install-prerequisites.sh --tests does)"
    );
}

fn sqlite3(db: &Path, sql: &str) -> String {
    require("sqlite3", "sqlite3");
    let out = Command::new("sqlite3")
        .args(["-bail", "-batch", "-cmd", ".timeout 60000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write_pipeline(s: &Scratch, name: &str, body: &str) -> String {
    let file = s.path().join(format!("{name}.toml"));
    std::fs::write(&file, body).expect("write the pipeline file");
    file.display().to_string()
}

/// A pipeline file `name.toml`: artifacts `artifact-{time}`, the source given by its keys,
/// a transform if one is named, and a `local` sink storing in `sink_path`.
fn local_pipeline(
    s: &Scratch,
    name: &str,
    artifact: &str,
    source: &str,
    transform: Option<&str>,
    sink_path: &str,
) -> String {
    let transform = transform
        .map(|t| format!("[[transform]]\nplugin = \"{t}\"\n"))
        .unwrap_or_default();
    write_pipeline(
        s,
        name,
        &format!(
            r#"
[pipeline]
artifact = "{artifact}-{{time}}"

[source]
{source}

{transform}
[[sink]]
name = "local"
plugin = "local"
path = "{sink_path}"
"#
        ),
    )
}

fn run_ok(s: &Scratch, args: &[&str]) -> String {
    let out = s.run(args, &[]);
    let text = logs(&out);
    assert!(out.status.success(), "pipeline {args:?} failed:\n{text}");
    text
}

/// The backups in a directory (not manifests, not hidden files).
fn backups_in(dir: &Path) -> Vec<String> {
    support::scratch::list(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.') && !n.ends_with(".sha256"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// sqlite

/// A writer that commits one transaction after another into `db` until stopped: each
/// inserts a row into `a` and a row into `b` pointing at it.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(db: &Path) -> Writer {
        let mut child = Command::new("sqlite3")
            .args(["-bail", "-batch"])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stdin = child.stdin.take().expect("stdin");
            writeln!(stdin, ".timeout 60000").expect("write");
            // One transaction a millisecond or so: continuous, yet leaving a reader of a
            // rollback-journal database moments between commits to take its lock.
            while !flag.load(Ordering::Relaxed) {
                let tx = "BEGIN IMMEDIATE; INSERT INTO a(v) VALUES (hex(randomblob(64))); \
                          INSERT INTO b(a_id, v) VALUES (last_insert_rowid(), hex(randomblob(64))); COMMIT;\n";
                if stdin
                    .write_all(tx.as_bytes())
                    .and_then(|()| stdin.flush())
                    .is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(stdin);
            let status = child.wait().expect("wait for the writer");
            assert!(status.success(), "the writer failed: {status}");
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the writer thread");
        }
    }
}

fn counts(db: &Path) -> (u64, u64) {
    let out = sqlite3(
        db,
        "SELECT (SELECT count(*) FROM a) || ' ' || (SELECT count(*) FROM b)",
    );
    let mut it = out.split(' ').map(|n| n.parse::<u64>().expect("a count"));
    (it.next().expect("a"), it.next().expect("b"))
}

fn sqlite_pipeline(s: &Scratch, db: &Path) -> String {
    let source = format!("plugin = \"sqlite\"\npath = \"{}\"", db.display());
    local_pipeline(s, "app-db", "app", &source, Some("zstd"), "backups")
}

/// The backup is one committed state of a database a writer keeps committing to: in WAL
/// mode (a snapshot while the writer goes on) and in rollback-journal mode (the writer
/// waits for the read lock). The restored file passes `PRAGMA integrity_check`, every
/// transaction is there whole or not at all (as many rows in `b` as in `a`, each pointing
/// at its row), it holds what was committed before the backup started and not what was
/// committed after it ended.
#[test]
fn sqlite_backup_under_a_committing_writer_is_one_consistent_state() {
    require("sqlite3", "sqlite3");
    for mode in ["wal", "delete"] {
        let s = Scratch::new();
        let db = s.path().join("app.db");
        sqlite3(
            &db,
            &format!(
                "PRAGMA journal_mode={mode}; PRAGMA user_version=42; \
                 CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT NOT NULL); \
                 CREATE TABLE b(id INTEGER PRIMARY KEY, a_id INTEGER NOT NULL REFERENCES a(id), v TEXT); \
                 CREATE INDEX b_a ON b(a_id); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000) \
                 INSERT INTO a(id, v) SELECT i, hex(randomblob(120)) FROM n; \
                 INSERT INTO b(a_id, v) SELECT id, v FROM a;"
            ),
        );
        let file = sqlite_pipeline(&s, &db);
        let writer = Writer::start(&db);
        // The writer is committing before the backup starts.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while counts(&db).0 < 60_200 {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: the writer does not commit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = counts(&db).0;
        run_ok(&s, &["run", &file]);
        let after = counts(&db).0;
        // ... and still commits after it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while counts(&db).0 < after + 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: the writer stopped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        writer.finish();

        let restored = s.path().join("restored/app.db");
        let text = run_ok(&s, &["restore", &file, "--to", "restored/app.db"]);
        assert!(text.contains("integrity ok"), "{mode}: {text}");
        assert_eq!(sqlite3(&restored, "PRAGMA integrity_check"), "ok", "{mode}");
        assert_eq!(sqlite3(&restored, "PRAGMA journal_mode"), mode, "{mode}");
        assert_eq!(sqlite3(&restored, "PRAGMA user_version"), "42", "{mode}");
        let (a, b) = counts(&restored);
        assert_eq!(a, b, "{mode}: a transaction was cut in half");
        assert_eq!(
            sqlite3(
                &restored,
                "SELECT count(*) FROM b LEFT JOIN a ON a.id = b.a_id WHERE a.id IS NULL"
            ),
            "0",
            "{mode}"
        );
        assert!(
            before <= a && a <= after,
            "{mode}: restored {a} rows, the database had {before} before the backup and {after} after it"
        );
        let last = counts(&db).0;
        assert!(
            a < last,
            "{mode}: the writer's later commits are not in the backup"
        );
        // Nothing but the database in the target's directory (no temporary file left).
        assert_eq!(
            support::scratch::list(&s.path().join("restored")),
            ["app.db"],
            "{mode}"
        );
    }
}

/// Restore writes a new file atomically and refuses to replace one: a second restore to
/// the same file fails unless allowed; the database being backed up is refused without
/// `--yes`; a damaged backup leaves no file and no temporary file behind.
#[test]
fn sqlite_restore_refuses_existing_files_and_leaves_nothing_when_it_fails() {
    require("sqlite3", "sqlite3");
    let s = Scratch::new();
    let db = s.path().join("app.db");
    sqlite3(
        &db,
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO a(v) VALUES ('one'), ('two');",
    );
    let file = sqlite_pipeline(&s, &db);
    run_ok(&s, &["run", &file]);

    run_ok(&s, &["restore", &file, "--to", "copy.db"]);
    let copy = s.path().join("copy.db");
    assert_eq!(sqlite3(&copy, "SELECT group_concat(v) FROM a"), "one,two");

    let again = s.run(&["restore", &file, "--to", "copy.db"], &[]);
    assert_eq!(again.status.code(), Some(1), "{}", logs(&again));
    assert!(
        logs(&again).contains("--allow-non-empty"),
        "{}",
        logs(&again)
    );
    run_ok(
        &s,
        &["restore", &file, "--to", "copy.db", "--allow-non-empty"],
    );

    let own = s.run(&["restore", &file, "--to", &db.display().to_string()], &[]);
    assert_eq!(own.status.code(), Some(2), "{}", logs(&own));
    assert!(
        logs(&own).contains("what the source backs up"),
        "{}",
        logs(&own)
    );

    // Damage the stored backup: the checksum fails while it streams, and the restore
    // renames nothing into place.
    let backups = s.backups();
    let name = backups_in(&backups).pop().expect("a backup");
    let stored = backups.join(&name);
    let mut bytes = std::fs::read(&stored).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, bytes).expect("write");
    let out = s.run(&["restore", &file, "--to", "fresh/app.db"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", logs(&out));
    assert!(
        support::scratch::list(&s.path().join("fresh")).is_empty(),
        "a failed restore left {:?}",
        support::scratch::list(&s.path().join("fresh"))
    );
}

// ---------------------------------------------------------------------------------------
// files

/// What a restored tree must keep of each entry.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32, mtime: i64 },
    File { mode: u32, mtime: i64, sha: String },
    Link { target: PathBuf },
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let path = e.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("inside")
                .display()
                .to_string();
            let m = std::fs::symlink_metadata(&path).expect("lstat");
            let entry = if m.file_type().is_symlink() {
                Entry::Link {
                    target: std::fs::read_link(&path).expect("readlink"),
                }
            } else if m.is_dir() {
                stack.push(path.clone());
                Entry::Dir {
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                }
            } else {
                Entry::File {
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                    sha: hex::encode(Sha256::digest(std::fs::read(&path).expect("read"))),
                }
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn set_mtime(path: &Path, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    std::fs::File::open(path)
        .expect("open")
        .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .expect("set times");
}

/// A tree with files of several modes and times, a link inside and links leading out of
/// it, and what the pipeline excludes (`*.tmp`, `cache`). Returns (tree, outside).
fn make_tree(s: &Scratch) -> (PathBuf, PathBuf) {
    let tree = s.path().join("tree");
    let outside = s.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), "outside the grant").expect("write");
    for d in ["etc", "bin", "data/deep", "private", "cache/x"] {
        std::fs::create_dir_all(tree.join(d)).expect("mkdir");
    }
    let files: [(&str, u32, &[u8]); 7] = [
        ("etc/app.conf", 0o644, b"listen = 8080\n"),
        ("bin/run.sh", 0o755, b"#!/bin/sh\necho run\n"),
        ("private/key", 0o600, b"not really a key"),
        ("data/deep/blob.bin", 0o640, &[0u8, 1, 2, 255, 254, 253]),
        ("data/empty", 0o444, b""),
        ("data/scratch.tmp", 0o644, b"excluded"),
        ("cache/x/c", 0o644, b"excluded too"),
    ];
    for (f, mode, content) in files {
        let p = tree.join(f);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(tree.join("data/big.bin"), big).expect("write");
    symlink("../etc/app.conf", tree.join("data/conf-link")).expect("symlink");
    symlink(outside.join("secret.txt"), tree.join("data/out-file")).expect("symlink");
    symlink("../../outside", tree.join("data/out-dir")).expect("symlink");
    std::fs::set_permissions(tree.join("private"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    std::fs::set_permissions(tree.join("bin"), std::fs::Permissions::from_mode(0o751))
        .expect("chmod");
    for (i, f) in [
        "etc/app.conf",
        "bin/run.sh",
        "private/key",
        "data/deep/blob.bin",
        "data/empty",
        "data/big.bin",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&tree.join(f), 86_400 * (i as u64 + 3));
    }
    // Directories last: writing into them changed their times.
    for (i, d) in ["etc", "bin", "data/deep", "data", "private"]
        .iter()
        .enumerate()
    {
        set_mtime(&tree.join(d), 3_600 * (i as u64 + 5));
    }
    (tree, outside)
}

fn files_pipeline(s: &Scratch, tree: &Path, transform: &str) -> String {
    let source = format!(
        "plugin = \"files\"\npath = \"{}\"\nexclude = [\"*.tmp\", \"cache\"]",
        tree.display()
    );
    local_pipeline(s, "tree", "tree", &source, Some(transform), "backups")
}

/// Back up a tree, restore it into an empty directory: every entry the pipeline keeps is
/// there with its content, mode and modification time, every link is a link with its
/// target (the ones leading out of the tree too), and nothing of what they point to
/// outside the grant was read into the backup. Excluded entries are absent. Through zstd
/// and through gzip.
#[test]
fn files_round_trip_keeps_content_modes_times_and_links() {
    require("tar", "tar");
    for transform in ["zstd", "gzip"] {
        let s = Scratch::new();
        let (tree, _outside) = make_tree(&s);
        let file = files_pipeline(&s, &tree, transform);
        let tree_root_mtime = {
            set_mtime(&tree, 7_200);
            std::fs::metadata(&tree).expect("stat").mtime()
        };
        run_ok(&s, &["run", &file]);
        // The backup's bytes hold no trace of the file outside the grant.
        let backups = s.backups();
        let name = backups_in(&backups).pop().expect("a backup");
        assert!(
            name.ends_with(&format!(
                ".tar.{}",
                if transform == "zstd" { "zst" } else { "gz" }
            )),
            "{name}"
        );

        let text = run_ok(&s, &["restore", &file, "--to", "restored"]);
        assert!(text.contains("entries"), "{text}");
        let restored = s.path().join("restored");
        let mut expected = snapshot(&tree);
        expected.retain(|k, _| !k.ends_with(".tmp") && k != "cache" && !k.starts_with("cache/"));
        let got = snapshot(&restored);
        assert_eq!(got, expected, "{transform}");
        assert!(got.contains_key("data/out-dir") && got.contains_key("private/key"));
        assert!(!got.keys().any(|k| k.contains("secret")), "{got:?}");
        assert!(
            !got.values().any(|e| matches!(e, Entry::File { sha, .. }
                if *sha == hex::encode(Sha256::digest(b"outside the grant")))),
            "the outside file's content was archived"
        );
        let m = std::fs::metadata(&restored).expect("stat");
        assert_eq!(m.mtime(), tree_root_mtime, "the root's time");
        assert_eq!(
            m.mode() & 0o7777,
            std::fs::metadata(&tree).expect("stat").mode() & 0o7777
        );

        // A directory that is not empty is refused, unless allowed.
        let again = s.run(&["restore", &file, "--to", "restored"], &[]);
        assert_eq!(again.status.code(), Some(1), "{}", logs(&again));
        assert!(logs(&again).contains("not empty"), "{}", logs(&again));
        run_ok(
            &s,
            &["restore", &file, "--to", "restored", "--allow-non-empty"],
        );
        assert_eq!(snapshot(&restored), expected);

        // The directory backed up itself (or one inside it) only with --yes.
        let inside = tree.join("etc/x").display().to_string();
        let own = s.run(&["restore", &file, "--to", &inside], &[]);
        assert_eq!(own.status.code(), Some(2), "{}", logs(&own));
        assert!(!tree.join("etc/x").exists());
    }
}

/// `include` keeps only what matches and the directories leading to it.
#[test]
fn files_include_keeps_matches_and_their_directories() {
    require("tar", "tar");
    let s = Scratch::new();
    let (tree, _) = make_tree(&s);
    let source = format!(
        "plugin = \"files\"\npath = \"{}\"\ninclude = [\"*.conf\", \"bin\"]",
        tree.display()
    );
    let file = local_pipeline(&s, "conf", "conf", &source, None, "backups");
    run_ok(&s, &["run", &file]);
    run_ok(&s, &["restore", &file, "--to", "only-conf"]);
    let got: Vec<String> = snapshot(&s.path().join("only-conf")).into_keys().collect();
    assert_eq!(got, ["bin", "bin/run.sh", "etc", "etc/app.conf"]);
}

/// Stores `archive` (a tar made by hand) in the sink as a complete backup of `pipeline`.
fn plant_backup(s: &Scratch, pipeline: &str, archive: &Path) -> String {
    let name = "hostile-2026-01-01T00-00-00-000Z.tar";
    let backups = s.backups();
    std::fs::create_dir_all(&backups).expect("mkdir");
    let bytes = std::fs::read(archive).expect("read the archive");
    let sha = hex::encode(Sha256::digest(&bytes));
    std::fs::write(backups.join(name), &bytes).expect("write");
    std::fs::write(
        backups.join(format!("{name}.sha256")),
        format!("{sha}  {name}\n# pipeline: {pipeline}\n"),
    )
    .expect("write the manifest");
    name.to_string()
}

/// A backup whose archive names `../x`, an absolute path, or a path through a symbolic
/// link it made (`l -> victim`, then `l/pwned`) is refused: the restore fails (exit 1)
/// naming the entry, and nothing is written outside the target.
#[test]
fn hostile_archives_are_refused_without_writing_outside_the_target() {
    require("tar", "tar");
    let s = Scratch::new();
    let tree = s.path().join("tree");
    std::fs::create_dir_all(&tree).expect("mkdir");
    let source = format!("plugin = \"files\"\npath = \"{}\"", tree.display());
    let file = local_pipeline(&s, "hostile", "hostile", &source, None, "backups");
    let work = s.path().join("work");
    let victim = s.path().join("victim");
    std::fs::create_dir_all(work.join("in")).expect("mkdir");
    std::fs::create_dir_all(&victim).expect("mkdir");
    std::fs::write(work.join("x"), "dot-dot").expect("write");
    std::fs::write(work.join("in/ok"), "fine").expect("write");
    let abs = s.path().join("abs-target");
    std::fs::write(&abs, "absolute").expect("write");
    symlink(&victim, work.join("in/l")).expect("symlink");
    std::fs::write(victim.join("pwned"), "through a link").expect("write");

    let cases: Vec<(Vec<String>, &str, PathBuf)> = vec![
        (vec!["ok".into(), "../x".into()], "`..`", s.path().join("x")),
        (
            vec!["ok".into(), abs.display().to_string()],
            "absolute",
            abs.clone(),
        ),
        (
            vec!["ok".into(), "l".into(), "l/pwned".into()],
            "symbolic link",
            victim.join("pwned"),
        ),
    ];
    for (i, (members, needle, outside)) in cases.into_iter().enumerate() {
        let archive = s.path().join(format!("evil-{i}.tar"));
        let out = Command::new("tar")
            .arg("-cPf")
            .arg(&archive)
            .arg("-C")
            .arg(work.join("in"))
            .args(&members)
            .output()
            .expect("run tar");
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = Command::new("tar")
            .arg("-tPf")
            .arg(&archive)
            .output()
            .expect("tar -t");
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        assert!(
            listing.contains(members.last().expect("member")),
            "{listing}"
        );
        // What the entry would overwrite outside the target: gone before, checked after.
        let _ = std::fs::remove_file(&outside);
        let name = plant_backup(&s, "hostile", &archive);
        let target = s.path().join(format!("target-{i}"));
        let out = s.run(
            &[
                "restore",
                &file,
                "--backup",
                &name,
                "--to",
                &target.display().to_string(),
            ],
            &[],
        );
        let text = logs(&out);
        assert_eq!(out.status.code(), Some(1), "{members:?}: {text}");
        assert!(
            text.contains(needle) && text.contains("refused"),
            "{members:?}: {text}"
        );
        assert!(
            !outside.exists(),
            "{members:?}: {} was written",
            outside.display()
        );
        if outside.starts_with(&victim) {
            assert!(
                support::scratch::list(&victim).is_empty(),
                "{members:?}: the victim got files"
            );
        }
    }
}

/// How many of `path`'s pages are in the page cache, and how many it has (mincore on a
/// mapping of it, which faults nothing in).
fn cached_pages(path: &Path) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open the backup");
    let len = usize::try_from(file.metadata().expect("stat").len()).expect("size");
    assert!(len > 0, "{} is empty", path.display());
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
    // SAFETY: a fresh read-only shared mapping of a file we hold open, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
    let pages = len.div_ceil(page);
    let mut resident = vec![0u8; pages];
    // SAFETY: `map` is a mapping of `len` bytes; `resident` has one byte per page.
    let rc = unsafe { libc::mincore(map, len, resident.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(map, len) };
    assert_eq!(rc, 0, "mincore: {err}");
    (resident.iter().filter(|b| *b & 1 == 1).count(), pages)
}

/// The `local` sink has the kernel write a backup to the disk while it writes it and drops
/// it from the page cache (README "local": a backup does not push the database's pages out
/// of memory, and the final sync waits for the last few MiB only): after a run of 24 MiB,
/// almost none of the stored backup's pages are still cached. The backup directory is in
/// the build's target directory, on the disk (a tmpfs never drops its pages).
#[test]
fn a_stored_backup_is_not_left_in_the_page_cache() {
    require("tar", "tar");
    let s = Scratch::new();
    let tree = s.path().join("tree");
    std::fs::create_dir_all(&tree).expect("mkdir tree");
    // Incompressible, so that the backup is as large as the tree.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..3 {
        let data: Vec<u8> = (0..8 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(tree.join(format!("media-{i}.bin")), data).expect("write");
    }
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir under target/");
    // The file system must drop written pages when advised to (tmpfs never does): shown
    // first with a file written here by the test itself.
    {
        use std::os::fd::AsRawFd;
        let probe = disk.path().join("probe");
        let f = std::fs::File::create(&probe).expect("create probe");
        (&f).write_all(&vec![7u8; 1 << 20]).expect("write probe");
        f.sync_all().expect("sync probe");
        // SAFETY: a plain call on a descriptor `f` keeps open.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let (cached, _) = cached_pages(&probe);
        assert!(
            cached == 0,
            "{} (the build's target directory) keeps pages cached after              POSIX_FADV_DONTNEED (tmpfs?): put the target directory on a disk file system              to run this test",
            disk.path().display()
        );
        std::fs::remove_file(&probe).expect("remove probe");
    }
    let source = format!("plugin = \"files\"\npath = \"{}\"", tree.display());
    let sink = disk.path().display().to_string();
    let file = local_pipeline(&s, "cache", "media", &source, Some("zstd"), &sink);
    run_ok(&s, &["run", &file]);
    let stored = backups_in(disk.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    let backup = disk.path().join(&stored[0]);
    let (cached, pages) = cached_pages(&backup);
    assert!(
        pages > 5_000,
        "a backup of {pages} pages is too small to tell"
    );
    assert!(
        cached * 20 <= pages,
        "{cached} of the backup's {pages} pages are still in the page cache"
    );
    // It is all there: `verify` reads it back (from the disk) and checks its checksum.
    run_ok(&s, &["verify", &file]);
}
