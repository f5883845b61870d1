//! Fault matrix: lifecycle. A run stopped from outside (SIGTERM, SIGINT, SIGKILL) or by a
//! stage's time limit while that stage waits in a host call stops cleanly: its programs
//! are gone, no partial artifact stays, the lock is free, earlier backups are intact.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::processes::{assert_no_pg_dump, programs, programs_with};
use crate::support::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use crate::support::scratch::{Scratch, assert_no_secret, is_backup_name, stderr};
use crate::support::{self, PgCluster};

fn misbehave_wasm() -> String {
    Path::new(env!("PIPELINE_BUILTIN_WASM_DIR"))
        .join("pipeline_misbehave.wasm")
        .display()
        .to_string()
}

/// About 8 MiB once compressed: two parts of 5 MiB.
fn load_big(pg: &PgCluster, db: &str) {
    support::load_noise(pg, db, 200000);
}

/// postgres → zstd → misbehave (`$MODE`) → `sink`; the source's time limit is `$TIMEOUT`.
fn pipeline(s: &Scratch, sink: &str) -> String {
    let file = s.path().join("lifecycle.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\
             limits = {{ timeout = \"${{env:TIMEOUT:-1h}}\" }}\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[transform]]\nname = \"misbehave\"\nplugin = \"{}\"\nmode = \"${{env:MODE:-nosy}}\"\n\n\
             {sink}\n",
            misbehave_wasm()
        ),
    )
    .expect("write the pipeline file");
    file.display().to_string()
}

fn local_sink(s: &Scratch) -> String {
    format!(
        "[[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n",
        s.backups().display()
    )
}

fn s3_sink(s3: &S3Server) -> String {
    format!(
        "[[sink]]\nname = \"s3\"\nplugin = \"s3\"\nbucket = \"{BUCKET}\"\nprefix = \"big/\"\n\
         endpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
         secret_access_key = \"${{env:S3_SECRET_KEY}}\"\npart_size = \"5MiB\"\n",
        s3.endpoint()
    )
}

fn env<'a>(pg_url: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![("DATABASE_URL", pg_url), ("S3_SECRET_KEY", SECRET_KEY)];
    v.extend_from_slice(extra);
    v
}

fn succeed(s: &Scratch, file: &str, env: &[(&str, &str)]) {
    let out = s.run(&["run", file], env);
    assert!(out.status.success(), "run failed:\n{}", stderr(&out));
}

/// Waits for `child` at most `limit`; kills it and panics if it is still running then.
fn wait_bounded(mut child: Child, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let t = std::thread::spawn(move || {
            let _ = out.read_to_end(&mut o);
            o
        });
        let _ = err.read_to_end(&mut e);
        (t.join().unwrap_or_default(), e)
    });
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().expect("wait for pipeline") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (_, e) = reader.join().unwrap_or_default();
            panic!(
                "pipeline still ran after {limit:?}:\n{}",
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let (stdout, stderr) = reader.join().expect("read the output");
    (
        Output {
            status,
            stdout,
            stderr,
        },
        elapsed,
    )
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal the pipeline");
}

/// The psql that restores a plain dump: the one reading its stdin (the plugin also runs
/// psql with `-c` for single queries, and the test's own session has `-f -`).
fn restoring_psql(pg: &PgCluster) -> Vec<u32> {
    let others: Vec<u32> = ["-c", "-f"]
        .iter()
        .flat_map(|flag| programs_with("psql", pg, flag))
        .collect();
    programs_with("psql", pg, "-q")
        .into_iter()
        .filter(|p| !others.contains(p))
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A psql session that holds `LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE` (or runs other
/// SQL in an open transaction) until dropped.
struct Session {
    child: Child,
}

impl Session {
    fn open(pg: &PgCluster, db: &str, sql: &str) -> Session {
        let mut child = Command::new(pg.bin_dir().join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .arg(pg.url(db))
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start psql");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "BEGIN; {sql};").expect("write to psql");
        stdin.flush().expect("flush");
        // Keep stdin open: the transaction stays open until the session is dropped.
        std::mem::forget(stdin);
        wait_until(
            "the session to hold its lock",
            Duration::from_secs(30),
            || {
                pg.psql(
                    "postgres",
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction';",
                )
                .trim()
                    == "1"
            },
        );
        Session { child }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn partials(dir: &Path) -> Vec<String> {
    support::scratch::list(dir)
        .into_iter()
        .filter(|n| n.contains(".partial"))
        .collect()
}

#[test]
fn a_source_blocked_on_a_lock_is_stopped_at_its_time_limit_and_its_pg_dump_with_it() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let file = pipeline(&s, &local_sink(&s));
    let url = pg.url("app");
    succeed(&s, &file, &env(&url, &[]));
    let before = s.files();
    assert_eq!(before.len(), 2, "{before:?}");

    let lock = Session::open(&pg, "app", "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE");
    for attempt in ["first", "second, right after"] {
        let child = s.spawn(&["run", &file], &env(&url, &[("TIMEOUT", "3s")]));
        let (out, took) = wait_bounded(child, Duration::from_secs(40));
        let err = stderr(&out);
        // Exit 1 (a failed run), not 3: the first run released the pipeline's lock.
        assert_eq!(out.status.code(), Some(1), "{attempt} run:\n{err}");
        assert!(
            err.contains("stage `source` ran longer than its time limit (3s)")
                && err.contains("limits.timeout"),
            "{attempt} run names the stage and the limit:\n{err}"
        );
        assert!(
            took < Duration::from_secs(25),
            "{attempt} run took {took:?}"
        );
        assert_no_pg_dump(&pg);
        // pg_dump got SIGTERM, on which it cancels its query: no backend waits for the
        // lock any more, although the session still holds it.
        wait_until(
            "no query waiting for the lock",
            Duration::from_secs(5),
            || {
                pg.psql(
                    "postgres",
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock';",
                )
                .trim()
                    == "0"
            },
        );
        assert_no_secret(&pg, &err);
        assert_eq!(
            s.files(),
            before,
            "nothing stored, no partial, nothing lost"
        );
    }
    drop(lock);
    succeed(&s, &file, &env(&url, &[]));
    assert_eq!(s.files().len(), 4, "{:?}", s.files());
}

#[test]
fn a_stage_asleep_in_a_host_call_is_stopped_at_its_time_limit_and_the_stages_before_it_too() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s = Scratch::new();
    let file = s.path().join("sleep.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"misbehave\"\nplugin = \"{}\"\nmode = \"sleep\"\n\
             limits = {{ timeout = \"2s\" }}\n\n{}",
            misbehave_wasm(),
            local_sink(&s)
        ),
    )
    .expect("write");
    let file = file.display().to_string();
    let url = pg.url("app");
    let child = s.spawn(&["run", &file], &env(&url, &[]));
    let (out, took) = wait_bounded(child, Duration::from_secs(40));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stage `transform misbehave`")
            && err.contains("ran longer than its time limit (2s)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(25), "took {took:?}");
    // pg_dump was stalled writing into a full pipe: it is gone too.
    assert_no_pg_dump(&pg);
    assert!(partials(&s.backups()).is_empty(), "{:?}", s.files());
    assert!(
        !s.files().iter().any(|f| is_backup_name(f)),
        "{:?}",
        s.files()
    );
}

/// Starts a slow run (the trickle transform) to a local sink, signals it once its partial
/// file holds data, and checks the clean stop.
fn stop_local_run_with(sig: i32, code: i32, name: &str) {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s = Scratch::new();
    let file = pipeline(&s, &local_sink(&s));
    let url = pg.url("app");
    succeed(&s, &file, &env(&url, &[]));
    let before = s.files();
    assert_eq!(before.len(), 2, "{before:?}");

    let child = s.spawn(&["run", &file], &env(&url, &[("MODE", "trickle")]));
    let backups = s.backups();
    wait_until("a partial file with data", Duration::from_secs(30), || {
        partials(&backups)
            .iter()
            .any(|p| std::fs::metadata(backups.join(p)).is_ok_and(|m| m.len() > 256 * 1024))
    });
    assert!(!programs("pg_dump", &pg).is_empty(), "pg_dump runs");
    signal(&child, sig);
    let (out, took) = wait_bounded(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(
        err.contains(&format!("received {name}: stopping the run")),
        "the log says why:\n{err}"
    );
    assert!(err.contains("run stopped: received"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(s.files(), before, "no partial left, earlier backup intact");
    assert_no_pg_dump(&pg);
    assert_no_secret(&pg, &err);
    // The lock is free: the next run works.
    succeed(&s, &file, &env(&url, &[]));
}

#[test]
fn sigterm_mid_run_removes_the_partial_file_stops_pg_dump_and_exits_143() {
    stop_local_run_with(libc::SIGTERM, 143, "SIGTERM");
}

#[test]
fn sigint_mid_run_stops_cleanly_and_exits_130() {
    stop_local_run_with(libc::SIGINT, 130, "SIGINT");
}

#[test]
fn sigterm_mid_upload_aborts_the_multipart_upload_and_exits_143() {
    let pg = PgCluster::start();
    pg.create_db("app");
    load_big(&pg, "app");
    let s3 = S3Server::start();
    let s = Scratch::new();
    let file = pipeline(&s, &s3_sink(&s3));
    let url = pg.url("app");
    succeed(&s, &file, &env(&url, &[]));
    let before = s3.objects("big");
    assert_eq!(before.len(), 2, "{before:?}");

    let child = s.spawn(&["run", &file], &env(&url, &[("MODE", "trickle")]));
    wait_until(
        "a pending multipart upload",
        Duration::from_secs(30),
        || !s3.pending_uploads().is_empty(),
    );
    signal(&child, libc::SIGTERM);
    let (out, _) = wait_bounded(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(err.contains("received SIGTERM: stopping the run"), "{err}");
    assert!(err.contains("aborted the upload"), "{err}");
    assert!(
        s3.pending_uploads().is_empty(),
        "{:?}",
        s3.pending_uploads()
    );
    assert_eq!(s3.objects("big"), before, "earlier backup intact");
    assert_no_pg_dump(&pg);
    assert!(!err.contains(SECRET_KEY), "{err}");
    assert_no_secret(&pg, &err);
}

#[test]
fn sigkill_of_pipeline_leaves_no_pg_dump_running() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let file = pipeline(&s, &local_sink(&s));
    let url = pg.url("app");
    succeed(&s, &file, &env(&url, &[]));
    let before = s.files();

    let lock = Session::open(&pg, "app", "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE");
    let mut child = s.spawn(&["run", &file], &env(&url, &[]));
    wait_until("pg_dump to start", Duration::from_secs(30), || {
        !programs("pg_dump", &pg).is_empty()
    });
    // Let it block on the lock.
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGKILL);
    let _ = child.wait();
    assert_no_pg_dump(&pg);
    drop(lock);
    // SIGKILL leaves the partial name of the local sink (`.name.partial-…`, never listed
    // as a backup); no file under a backup's name appears.
    let now: Vec<String> = s
        .files()
        .into_iter()
        .filter(|f| !f.contains(".partial"))
        .collect();
    assert_eq!(now, before);
}

#[test]
fn sigterm_during_restore_exits_143_and_commits_nothing() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let file = pipeline(&s, &local_sink(&s));
    let url = pg.url("app");
    succeed(&s, &file, &env(&url, &[]));
    pg.create_db("target");
    // An open transaction that created the dump's first type: the restore's CREATE TYPE
    // waits for it, so the restore is in progress when the signal comes.
    let session = Session::open(&pg, "target", "CREATE TYPE mood AS ENUM ('x')");
    let target = pg.url("target");
    let child = s.spawn(&["restore", &file, "--to", &target], &env(&url, &[]));
    wait_until("psql to start restoring", Duration::from_secs(30), || {
        !restoring_psql(&pg).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGTERM);
    let (out, took) = wait_bounded(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(err.contains("received SIGTERM: stopping the run"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    wait_until(
        "the restoring psql to be gone",
        Duration::from_secs(5),
        || restoring_psql(&pg).is_empty(),
    );
    drop(session);
    let tables = pg.psql(
        "target",
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public';",
    );
    assert_eq!(tables.trim(), "0", "nothing was committed");
    assert_no_secret(&pg, &err);
}

#[test]
fn a_program_grant_does_not_let_a_plugin_set_ld_preload() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let marker = s.path().join("ran");
    let file = s.path().join("preload.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"preload\"\nplugin = \"{}\"\nmode = \"preload\"\n\
             program = \"touch\"\nfile = \"{}\"\nallow = {{ programs = [\"touch\"] }}\n\n{}",
            misbehave_wasm(),
            marker.display(),
            local_sink(&s)
        ),
    )
    .expect("write");
    let out = s.run(
        &["run", file.to_str().expect("utf-8")],
        &env(&pg.url("app"), &[]),
    );
    let err = stderr(&out);
    // The plugin handled the refusal; the run itself succeeds.
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("probe program touch with LD_PRELOAD: denied"),
        "the plugin saw an error:\n{err}"
    );
    assert!(
        err.contains(
            "denied: stage `transform preload` may not set the environment variable `LD_PRELOAD`"
        ),
        "the host's log names the stage and the variable:\n{err}"
    );
    assert!(!marker.exists(), "the program did not run");
    assert_no_secret(&pg, &err);
}

#[test]
fn sighup_mid_run_stops_cleanly_and_exits_129() {
    stop_local_run_with(libc::SIGHUP, 129, "SIGHUP");
}

#[test]
fn a_second_sigterm_exits_at_once_when_a_stage_does_not_stop() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    // The transform sleeps in a host call: the first signal cannot interrupt it.
    let file = misbehaving(&s, "sleep");
    let child = s.spawn(&["run", &file], &env(&pg.url("app"), &[]));
    let backups = s.backups();
    wait_until("the sink's partial file", Duration::from_secs(30), || {
        !partials(&backups).is_empty()
    });
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let second = Instant::now();
    signal(&child, libc::SIGTERM);
    let (out, _) = wait_bounded(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "exited at once: {err}"
    );
    assert!(err.contains("received SIGTERM: stopping the run"), "{err}");
    assert!(err.contains("received SIGTERM again: exiting now"), "{err}");
    assert_no_pg_dump(&pg);
    // The sink saw its stream fail and removed its partial before the second signal.
    assert!(partials(&backups).is_empty(), "{:?}", s.files());
    assert_no_secret(&pg, &err);
}

/// postgres → misbehave in `mode` → local, no time limit.
fn misbehaving(s: &Scratch, mode: &str) -> String {
    let file = s.path().join(format!("{mode}.toml"));
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"misbehave\"\nplugin = \"{}\"\nmode = \"{mode}\"\n\n{}",
            misbehave_wasm(),
            local_sink(s)
        ),
    )
    .expect("write");
    file.display().to_string()
}

#[test]
fn sigterm_stops_a_plugin_looping_in_wasm_after_the_few_seconds_a_sink_gets_to_clean_up() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let file = misbehaving(&s, "spin");
    let child = s.spawn(&["run", &file], &env(&pg.url("app"), &[]));
    let backups = s.backups();
    wait_until("the sink's partial file", Duration::from_secs(30), || {
        !partials(&backups).is_empty()
    });
    signal(&child, libc::SIGTERM);
    let (out, took) = wait_bounded(child, Duration::from_secs(30));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    // Trapped after TRAP_AFTER (5 s), well before the 15 s grace exit.
    assert!(took < Duration::from_secs(12), "took {took:?}: {err}");
    assert!(
        err.contains("stage `transform misbehave` (plugin ")
            && err.contains("was stopped: the run was stopped: received SIGTERM"),
        "{err}"
    );
    assert!(!err.contains("did not stop within"), "{err}");
    assert_no_pg_dump(&pg);
    assert!(partials(&backups).is_empty(), "{:?}", s.files());
    assert!(
        !s.files().iter().any(|f| is_backup_name(f)),
        "{:?}",
        s.files()
    );
}
