//! Fault matrix: retention — who owns a backup, what a killed run leaves, backups dated in the
//! future (a wrong clock), and the run lock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use crate::support;
use support::PgCluster;
use support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use support::scratch::{Scratch, assert_no_secret, logs};

const BIN: &str = env!("CARGO_BIN_EXE_pipeline");

/// `pipeline <args>` in `s` with only PATH, the state and cache directories and `env`: no
/// variable of the machine (HOME included) reaches it unless given.
fn command(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PIPELINE_STATE_DIR", s.path().join("state"))
        .env(
            "PIPELINE_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args(args)
        .current_dir(s.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(s, args, env).output().expect("run pipeline")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A time `hours` from now, as `PIPELINE_TEST_NOW` takes it.
fn at(hours: i64) -> String {
    (Timestamp::now() + SignedDuration::from_hours(hours)).to_string()
}

/// A pipeline file `dir/file.toml` dumping `$DATABASE_URL` through zstd into `sink` (a
/// `[[sink]]` table's body), with `extra` appended (e.g. a `[retention]` table).
fn pipeline(dir: &Path, file: &str, name: Option<&str>, sink: &str, extra: &str) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    let name = name
        .map(|n| format!("name = \"{n}\"\n"))
        .unwrap_or_default();
    let path = dir.join(format!("{file}.toml"));
    std::fs::write(
        &path,
        format!(
            "[pipeline]\n{name}artifact = \"backup-{{time}}\"\n\n\
             [source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\nformat = \"plain\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n[[sink]]\n{sink}\n{extra}\n"
        ),
    )
    .expect("write pipeline");
    path.display().to_string()
}

fn local_sink(dir: &Path) -> String {
    format!(
        "name = \"local\"\nplugin = \"local\"\npath = \"{}\"",
        dir.display()
    )
}

fn s3_sink(s3: &S3Server, prefix: &str, extra: &str) -> String {
    format!(
        "name = \"s3\"\nplugin = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\n\
         endpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key = \"${{env:S3_SECRET_KEY}}\"\n{extra}",
        s3.endpoint()
    )
}

fn backups(files: &[String]) -> Vec<String> {
    files
        .iter()
        .filter(|f| support::scratch::is_backup_name(f))
        .cloned()
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    support::scratch::list(dir)
}

/// Asserts a run succeeded and returns its log, checked for secrets.
fn ok(pg: &PgCluster, o: &Output) -> String {
    let log = logs(o);
    assert!(o.status.success(), "run failed:\n{log}");
    assert_no_secret(pg, &log);
    assert!(!log.contains(SECRET_KEY), "the S3 secret leaked:\n{log}");
    log
}

/// The backup a successful run wrote, from its log.
fn written(log: &str) -> String {
    log.split_whitespace()
        .find(|w| support::scratch::is_backup_name(w))
        .unwrap_or_else(|| panic!("no backup name in:\n{log}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Case 1: two pipelines writing the same names into one place.

/// The scenario: `nightly` (days = 30) and a second pipeline (days = "1", keep_last = 1)
/// share a directory and the artifact template. Each prunes only its own backups.
#[test]
fn a_second_pipeline_in_the_same_directory_never_prunes_the_firsts_backups() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let dir = s.backups();
    let url = pg.url("app");
    let nightly = pipeline(
        &s.path().join("p"),
        "nightly",
        None,
        &local_sink(&dir),
        "[retention]\ndays = 30",
    );
    let hourly = pipeline(
        &s.path().join("p"),
        "hourly",
        None,
        &local_sink(&dir),
        "[retention]\ndays = \"1\"\nkeep_last = 1",
    );
    // A backup from before owners were recorded: nobody may delete it.
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = "backup-2020-01-01T00-00-00-000Z.sql.zst";
    std::fs::write(dir.join(legacy), "an old backup").unwrap();
    std::fs::write(
        dir.join(format!("{legacy}.sha256")),
        format!("{}  {legacy}\n", "0".repeat(64)),
    )
    .unwrap();

    // nightly ran 10, 5 and 3 days ago.
    let mut ours = Vec::new();
    for days in [10, 5, 3] {
        let o = run(
            &s,
            &["run", &nightly],
            &[
                ("DATABASE_URL", &url),
                ("PIPELINE_TEST_NOW", &at(-24 * days)),
            ],
        );
        ours.push(written(&ok(&pg, &o)));
    }
    // The manifest names its owner and still checks with `sha256sum -c --strict`.
    let manifest = std::fs::read_to_string(dir.join(format!("{}.sha256", ours[0]))).unwrap();
    assert!(manifest.ends_with("\n# pipeline: nightly\n"), "{manifest}");
    let check = Command::new("sha256sum")
        .args(["-c", "--strict"])
        .arg(format!("{}.sha256", ours[0]))
        .current_dir(&dir)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{}", logs(&check));

    // The second pipeline runs now and two and four days later (ages are measured from the
    // previous backup, so its first backup is its own to prune at the third run).
    let first = written(&ok(
        &pg,
        &run(&s, &["run", &hourly], &[("DATABASE_URL", &url)]),
    ));
    let mut log = String::new();
    let mut second = String::new();
    for hours in [48, 96] {
        let o = run(
            &s,
            &["run", &hourly],
            &[("DATABASE_URL", &url), ("PIPELINE_TEST_NOW", &at(hours))],
        );
        log = ok(&pg, &o);
        second = written(&log);
    }
    assert!(
        log.contains("3 backup(s) named like pipeline `hourly`'s")
            && log.contains("pipeline(s) `nightly` made"),
        "warns about the other pipeline: {log}"
    );
    assert_eq!(
        log.matches("pipeline(s) `nightly` made").count(),
        1,
        "once: {log}"
    );
    assert!(log.contains(&format!("pruned {first}")), "{log}");

    let now = files(&dir);
    for b in ours.iter().chain([&legacy.to_string(), &second]) {
        assert!(now.contains(b), "{b} was deleted: {now:?}");
        assert!(
            now.contains(&format!("{b}.sha256")),
            "{b}'s manifest: {now:?}"
        );
    }
    assert!(!now.contains(&first), "hourly pruned its own: {now:?}");
    assert!(!now.iter().any(|f| f.starts_with('.')), "{now:?}");

    // `list` says why the others are kept.
    let o = run(&s, &["list", &hourly], &[("DATABASE_URL", &url)]);
    let listing = stdout(&o);
    assert!(o.status.success(), "{}", logs(&o));
    assert!(
        listing.contains(
            "sink local (2 backups; also 3 of other pipelines, 1 without a recorded owner)"
        ),
        "{listing}"
    );
    assert!(
        listing.contains("kept: not this pipeline's (made by pipeline `nightly`)"),
        "{listing}"
    );
    assert!(
        listing.contains("kept: made before owners were recorded: delete by hand"),
        "{listing}"
    );
    // nightly verifies its own newest backup, not the second pipeline's newer one.
    let o = run(&s, &["verify", &nightly], &[("DATABASE_URL", &url)]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", logs(&o));
    assert!(
        out.contains(&format!("ok      sink local: {}", ours[2])),
        "{out}"
    );
}

/// The same on S3: two pipelines with one prefix.
#[test]
fn a_second_pipeline_under_the_same_s3_prefix_never_prunes_the_firsts_backups() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let url = pg.url("app");
    let env = |now: &str| {
        vec![
            ("DATABASE_URL".to_string(), url.clone()),
            ("S3_SECRET_KEY".to_string(), SECRET_KEY.to_string()),
            ("PIPELINE_TEST_NOW".to_string(), now.to_string()),
        ]
    };
    let nightly = pipeline(
        &s.path().join("p"),
        "nightly",
        None,
        &s3_sink(&s3, "shared/", ""),
        "[retention]\ndays = 30",
    );
    let hourly = pipeline(
        &s.path().join("p"),
        "hourly",
        None,
        &s3_sink(&s3, "shared/", ""),
        "[retention]\ndays = \"1\"\nkeep_last = 1",
    );
    let go = |file: &str, now: &str| {
        let e = env(now);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let o = run(&s, &["run", file], &e);
        written(&ok(&pg, &o))
    };
    let ours: Vec<String> = [10, 5, 3]
        .iter()
        .map(|d| go(&nightly, &at(-24 * d)))
        .collect();
    let first = go(&hourly, &at(0));
    go(&hourly, &at(48));
    let second = go(&hourly, &at(96));
    let objects = s3.objects("shared");
    for b in ours.iter().chain([&second]) {
        assert!(objects.contains(b), "{b} was deleted: {objects:?}");
        assert!(objects.contains(&format!("{b}.sha256")), "{objects:?}");
    }
    assert!(
        !objects.contains(&first),
        "hourly pruned its own: {objects:?}"
    );
    let manifest = std::fs::read_to_string(
        s3.bucket()
            .join("shared")
            .join(format!("{}.sha256", ours[0])),
    )
    .unwrap();
    assert!(manifest.ends_with("\n# pipeline: nightly\n"), "{manifest}");
}

// ---------------------------------------------------------------------------------------------
// Case 6: what a killed run leaves.

/// About 60 MiB of poorly compressible rows, so a dump takes long enough to be killed midway.
fn load_large(pg: &PgCluster, db: &str) {
    pg.psql(
        db,
        "SET ROLE app; CREATE TABLE noise AS SELECT i, md5(random()::text) || md5(random()::text) \
         || md5(random()::text) AS h FROM generate_series(1, 1200000) i;",
    );
}

/// Starts a run and SIGKILLs it once `ready` says it is midway; fails if it ended first.
fn kill_midway(mut cmd: Command, ready: impl Fn() -> bool) {
    let mut child: Child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pipeline");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the run ended ({status}) before it could be killed midway");
        }
        assert!(Instant::now() < deadline, "the run never got midway");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

fn partials(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| f.starts_with('.') && f.contains(".partial-"))
        .collect()
}

fn big_partial(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name().to_string_lossy().contains(".partial-")
                && e.metadata().is_ok_and(|m| m.len() > 2 << 20)
        })
    })
}

#[test]
fn a_killed_runs_partial_file_is_removed_by_the_next_run_but_not_another_projects() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_large(&pg, "app");
    let s = Scratch::new();
    let dir = s.backups();
    let url = pg.url("app");
    let nightly = pipeline(&s.path().join("p"), "nightly", None, &local_sink(&dir), "");
    // Another project's pipeline of the same name writing the same directory: a different
    // pipeline (its own file, its own lock), so its partials are not nightly's to remove.
    let other = pipeline(
        &s.path().join("other/pipelines"),
        "nightly",
        None,
        &local_sink(&dir),
        "",
    );

    kill_midway(
        command(&s, &["run", &nightly], &[("DATABASE_URL", &url)]),
        || big_partial(&dir),
    );
    let left = partials(&dir);
    assert_eq!(left.len(), 1, "{left:?}");
    let ours = left[0].clone();
    // The other one killed midway as well: its partial must survive nightly's cleanup.
    kill_midway(
        command(&s, &["run", &other], &[("DATABASE_URL", &url)]),
        || partials(&dir).len() == 2 && big_partial(&dir),
    );
    let theirs: Vec<String> = partials(&dir).into_iter().filter(|p| p != &ours).collect();
    assert_eq!(theirs.len(), 1);
    assert!(
        backups(&files(&dir)).is_empty(),
        "no partial under a backup's name"
    );
    // `list` mentions both, and whose they are.
    let o = run(&s, &["list", &nightly], &[("DATABASE_URL", &url)]);
    let listing = stdout(&o);
    assert!(o.status.success(), "{}", logs(&o));
    assert!(
        listing.contains(&ours) && listing.contains("left by a run of this pipeline"),
        "{listing}"
    );
    assert!(
        listing.contains(&theirs[0]) && listing.contains("left by another pipeline's"),
        "{listing}"
    );

    let o = run(&s, &["run", &nightly], &[("DATABASE_URL", &url)]);
    let log = ok(&pg, &o);
    assert!(
        log.contains(&format!("removed {}", dir.join(&ours).display()))
            && log.contains("an earlier run of pipeline `nightly` left"),
        "logs the removal: {log}"
    );
    assert_eq!(partials(&dir), theirs, "only nightly's partial went");
    let backup = written(&log);
    let check = Command::new("sha256sum")
        .args(["-c", "--strict"])
        .arg(format!("{backup}.sha256"))
        .current_dir(&dir)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{}", logs(&check));

    // The other project's next run removes its own.
    let log = ok(&pg, &run(&s, &["run", &other], &[("DATABASE_URL", &url)]));
    assert!(
        log.contains(&format!("removed {}", dir.join(&theirs[0]).display())),
        "{log}"
    );
    assert!(partials(&dir).is_empty(), "{:?}", partials(&dir));
}

#[test]
fn a_killed_runs_multipart_upload_is_aborted_by_the_next_run_but_not_another_pipelines() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_large(&pg, "app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let url = pg.url("app");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("S3_SECRET_KEY", SECRET_KEY),
    ];
    let sink = s3_sink(&s3, "shared/", "part_size = \"5MiB\"");
    let nightly = pipeline(&s.path().join("p"), "nightly", None, &sink, "");
    let weekly = pipeline(&s.path().join("p"), "weekly", None, &sink, "");
    let markers = || -> Vec<String> {
        s3.objects("shared")
            .into_iter()
            .filter(|o| o.starts_with('.') && o.contains(".upload-"))
            .collect()
    };

    kill_midway(command(&s, &["run", &nightly], &env), || {
        s3.pending_uploads().len() == 1 && markers().len() == 1
    });
    let ours = markers();
    kill_midway(command(&s, &["run", &weekly], &env), || {
        s3.pending_uploads().len() == 2 && markers().len() == 2
    });
    let theirs: Vec<String> = markers()
        .into_iter()
        .filter(|m| !ours.contains(m))
        .collect();
    assert_eq!(theirs.len(), 1, "{:?}", markers());
    assert!(
        !s3.objects("shared").iter().any(|o| o.ends_with(".sql.zst")),
        "no object under a backup's name: {:?}",
        s3.objects("shared")
    );
    let o = run(&s, &["list", &nightly], &env);
    let listing = stdout(&o);
    assert!(o.status.success(), "{}", logs(&o));
    assert!(
        listing.contains(&ours[0]) && listing.contains("left by a run of this pipeline"),
        "{listing}"
    );
    assert!(
        listing.contains(&theirs[0]) && listing.contains("left by another pipeline's"),
        "{listing}"
    );

    let log = ok(&pg, &run(&s, &["run", &nightly], &env));
    assert!(
        log.contains("aborted the multipart upload")
            && log.contains("an earlier run of pipeline `nightly` left"),
        "logs the abort: {log}"
    );
    assert_eq!(markers(), theirs, "weekly's marker stays");
    assert_eq!(s3.pending_uploads().len(), 1, "weekly's upload stays");
    let backup = written(&log);
    assert!(s3.objects("shared").contains(&format!("{backup}.sha256")));
    let o = run(&s, &["verify", &nightly], &env);
    assert!(o.status.success(), "{}", logs(&o));

    let log = ok(&pg, &run(&s, &["run", &weekly], &env));
    assert!(
        log.contains("an earlier run of pipeline `weekly` left"),
        "{log}"
    );
    assert!(markers().is_empty(), "{:?}", markers());
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
}

// ---------------------------------------------------------------------------------------------
// Case 7: backups dated in the future.

#[test]
fn a_copied_backup_dated_in_the_future_is_never_restored_by_default() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let dir = s.backups();
    let url = pg.url("app");
    let file = pipeline(
        &s.path().join("p"),
        "nightly",
        None,
        &local_sink(&dir),
        "[retention]\ndays = 1\nkeep_last = 1",
    );
    let real = written(&ok(
        &pg,
        &run(&s, &["run", &file], &[("DATABASE_URL", &url)]),
    ));
    // A copy named far in the future, with a manifest of this pipeline: it would be "the
    // newest" forever.
    let future = "backup-2099-01-01T00-00-00-000Z.sql.zst";
    std::fs::copy(dir.join(&real), dir.join(future)).unwrap();
    let manifest = std::fs::read_to_string(dir.join(format!("{real}.sha256"))).unwrap();
    std::fs::write(
        dir.join(format!("{future}.sha256")),
        manifest.replace(&real, future),
    )
    .unwrap();

    let o = run(&s, &["verify", &file], &[("DATABASE_URL", &url)]);
    let (out, log) = (stdout(&o), logs(&o));
    assert!(o.status.success(), "{log}");
    assert!(
        out.contains(&format!("ok      sink local: {real}")),
        "{out}"
    );
    assert!(
        log.contains(future) && log.contains("dated more than 5 minutes after now"),
        "warns: {log}"
    );

    pg.create_db("restored");
    let o = run(
        &s,
        &["restore", &file, "--to", &pg.url("restored")],
        &[("DATABASE_URL", &url)],
    );
    let log = logs(&o);
    assert!(o.status.success(), "{log}");
    assert_no_secret(&pg, &log);
    assert!(log.contains(&format!("restored {real}")), "{log}");
    assert!(log.contains("dated more than 5 minutes after now"), "{log}");

    let o = run(&s, &["list", &file], &[("DATABASE_URL", &url)]);
    let listing = stdout(&o);
    assert!(
        listing.contains(future) && listing.contains("keep (dated in the future: check the clock"),
        "{listing}"
    );
    // Named, it is used.
    let o = run(
        &s,
        &["verify", &file, "--backup", future],
        &[("DATABASE_URL", &url)],
    );
    assert!(o.status.success(), "{}", logs(&o));
    assert!(stdout(&o).contains(&format!("ok      sink local: {future}")));

    // A run keeps it and says so.
    let log = ok(&pg, &run(&s, &["run", &file], &[("DATABASE_URL", &url)]));
    assert!(log.contains(future), "{log}");
    assert!(files(&dir).contains(&future.to_string()));
}

#[test]
fn a_run_with_the_clock_two_years_ahead_deletes_nothing_a_correct_clock_keeps() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let dir = s.backups();
    let url = pg.url("app");
    let file = pipeline(
        &s.path().join("p"),
        "nightly",
        None,
        &local_sink(&dir),
        "[retention]\ndays = 7\nkeep_last = 1",
    );
    let go = |hours: i64| {
        let o = run(
            &s,
            &["run", &file],
            &[("DATABASE_URL", &url), ("PIPELINE_TEST_NOW", &at(hours))],
        );
        let log = ok(&pg, &o);
        assert!(log.contains("PIPELINE_TEST_NOW is set"), "announced: {log}");
        (written(&log), log)
    };
    let d20 = go(-24 * 20).0;
    let d10 = go(-24 * 10).0;
    let d5 = go(-24 * 5).0;
    let d1 = go(-24).0;
    // A correct clock now would keep d5 and d1 (younger than 7 days).
    let (ahead, log) = go(24 * 365 * 2);
    let kept = backups(&files(&dir));
    assert!(!kept.contains(&d10), "{kept:?}");
    for b in [&d5, &d1, &ahead] {
        assert!(
            kept.contains(b),
            "{b} was deleted by the wrong clock: {kept:?}\n{log}"
        );
    }
    assert!(!kept.contains(&d20), "{kept:?}");

    // Back to a correct clock: the stray backup is reported and kept, never restored by
    // default, and pruning goes on as before.
    let (now, log) = go(0);
    assert!(
        log.contains(&ahead) && log.contains("dated more than 5 minutes after now"),
        "{log}"
    );
    let o = run(&s, &["verify", &file], &[("DATABASE_URL", &url)]);
    assert!(
        stdout(&o).contains(&format!("ok      sink local: {now}")),
        "{}",
        logs(&o)
    );
    let (l1, _) = go(24 * 8);
    let (l2, log) = go(24 * 16);
    let kept = backups(&files(&dir));
    let mut expected = vec![l1, l2, ahead.clone()];
    expected.sort();
    assert_eq!(kept, expected, "{log}");
    assert!(
        log.contains(&format!("pruned {d1}")) && log.contains(&format!("pruned {now}")),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Case 8: the run lock.

/// Where the binary keys the lock of the pipeline in `file` (name plus a hash of its
/// canonical path).
fn lock_file(state: &Path, name: &str, file: &str) -> PathBuf {
    use sha2::Digest;
    let canonical = std::fs::canonicalize(file).expect("canonical path");
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    state.join(format!("{name}-{}.lock", hex::encode(&digest[..8])))
}

#[test]
fn a_symlink_planted_at_the_lock_path_is_refused_and_its_target_untouched() {
    let s = Scratch::new();
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let file = pipeline(
        &s.path().join("p"),
        "nightly",
        None,
        &local_sink(&s.backups()),
        "",
    );
    let victim = s.path().join("precious");
    std::fs::write(&victim, "do not truncate me").unwrap();
    let lock = lock_file(&state, "nightly", &file);
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let o = run(
        &s,
        &["run", &file],
        &[("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")],
    );
    let log = logs(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&lock.display().to_string()) && log.contains("symbolic link"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "do not truncate me"
    );
    assert!(files(&s.backups()).is_empty());
}

#[test]
fn a_state_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = pipeline(
        &s.path().join("p"),
        "nightly",
        None,
        &local_sink(&s.backups()),
        "",
    );
    let o = run(
        &s,
        &["run", &file],
        &[("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")],
    );
    let log = logs(&o);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&state.display().to_string()) && log.contains("chmod go-w"),
        "{log}"
    );
    assert!(
        std::fs::read_dir(&state).unwrap().next().is_none(),
        "no lock created"
    );
}

#[test]
fn two_projects_with_a_nightly_toml_each_do_not_block_each_other() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let url = pg.url("app");
    let a = pipeline(
        &s.path().join("a/pipelines"),
        "nightly",
        None,
        &local_sink(&s.path().join("a/backups")),
        "",
    );
    let b = pipeline(
        &s.path().join("b/pipelines"),
        "nightly",
        None,
        &local_sink(&s.path().join("b/backups")),
        "",
    );
    // A run of project a holds its lock ...
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_file(&state, "nightly", &a))
        .unwrap();
    held.lock().unwrap();
    // ... project b runs anyway,
    ok(&pg, &run(&s, &["run", &b], &[("DATABASE_URL", &url)]));
    assert_eq!(backups(&files(&s.path().join("b/backups"))).len(), 1);
    // and a second run of the same file exits 3 without doing anything.
    let o = run(&s, &["run", &a], &[("DATABASE_URL", &url)]);
    let log = logs(&o);
    assert_eq!(o.status.code(), Some(3), "{log}");
    assert!(
        log.contains("another run of pipeline `nightly` is in progress"),
        "{log}"
    );
    assert!(files(&s.path().join("a/backups")).is_empty());
    drop(held);
    ok(&pg, &run(&s, &["run", &a], &[("DATABASE_URL", &url)]));
}

/// The home directory of this user in the passwd database.
fn passwd_home() -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: getpwuid returns null or a pointer to a static entry, read at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "this user has no passwd entry");
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir).to_bytes().to_vec();
        PathBuf::from(std::ffi::OsStr::from_bytes(&dir))
    }
}

#[test]
fn without_home_the_lock_is_under_the_passwd_home_not_tmp() {
    let s = Scratch::new();
    let name = format!("faults-lock-home-{}", std::process::id());
    let file = pipeline(
        &s.path().join("p"),
        &name,
        None,
        &local_sink(&s.backups()),
        "",
    );
    let mut cmd = command(
        &s,
        &["run", &file],
        &[("DATABASE_URL", "postgresql://u@127.0.0.1:1/db")],
    );
    cmd.env_remove("PIPELINE_STATE_DIR");
    let o = cmd.output().expect("run");
    let log = logs(&o);
    // The dump fails (no server), after the lock was taken.
    assert_eq!(o.status.code(), Some(1), "{log}");
    let state = passwd_home().join(".local/state/pipeline");
    let lock = lock_file(&state, &name, &file);
    let found = lock.exists();
    let _ = std::fs::remove_file(&lock);
    assert!(found, "no lock at {}: {log}", lock.display());
    assert!(
        !std::env::temp_dir()
            .join("pipeline-state")
            .join(lock.file_name().unwrap())
            .exists()
    );
}
