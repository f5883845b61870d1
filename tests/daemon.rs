//! `pipeline daemon`: scheduled pipelines run at their times, in child processes, never
//! two runs of one pipeline at once, and a SIGTERM stops the daemon cleanly whether a run
//! is going or not. Against a real PostgreSQL, with the real binary.

mod support;

use std::io::Read;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::PgCluster;
use support::processes::{assert_no_pg_dump, programs};
use support::scratch::{Scratch, assert_no_secret, stderr};

/// Every 2 seconds (the 6-field form has a leading seconds field).
const EVERY_2S: &str = "*/2 * * * * *";

/// Writes `pipelines/NAME.toml`: PostgreSQL → zstd → (`extra` stages) → the scratch's
/// backups, with `head` (the `[pipeline]` table) on top.
fn write_pipeline(s: &Scratch, name: &str, head: &str, extra: &str) {
    let dir = s.path().join("pipelines");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "{head}\n[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n{extra}\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n",
            s.backups().display()
        ),
    )
    .unwrap();
}

/// The test-only transform, passing data on at a trickle when `MODE=trickle`, untouched
/// (`nosy`) otherwise.
fn trickle_when_asked() -> String {
    format!(
        "[[transform]]\nname = \"misbehave\"\nplugin = \"{}\"\nmode = \"${{env:MODE:-nosy}}\"\n",
        support::misbehave_wasm().display()
    )
}

fn scheduled(schedule: &str) -> String {
    format!("[pipeline]\nschedule = \"{schedule}\"\n")
}

/// A running daemon whose log (stderr) is collected as it comes.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut all = vec!["daemon"];
        all.extend_from_slice(args);
        let mut child = s.spawn(&all, env);
        let mut err = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Daemon {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `cond` holds for the log; panics with the log after `limit`.
    fn wait_for(&mut self, what: &str, limit: Duration, cond: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while !cond(&self.log()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the daemon exited ({status}) before {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < limit,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal the daemon");
    }

    /// Sends `sig` and waits at most `limit` for the daemon to exit: its status, how long
    /// it took, its whole log.
    fn stop(mut self, sig: i32, limit: Duration) -> (ExitStatus, Duration, String) {
        self.signal(sig);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the daemon still ran {limit:?} after the signal:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status, took, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_json(s: &Scratch, name: &str, env: &[(&str, &str)]) -> (serde_json::Value, String) {
    let out = s.run(&["status", name, "--json"], env);
    assert!(out.status.success(), "status --json: {}", stderr(&out));
    let json = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    (json, stderr(&out))
}

fn artifacts(s: &Scratch) -> Vec<String> {
    s.files()
        .into_iter()
        .filter(|f| f.ends_with(".sql.zst"))
        .collect()
}

#[test]
fn the_daemon_runs_a_pipeline_on_its_schedule_one_run_at_a_time_and_stops_on_sigterm() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    write_pipeline(&s, "ticker", &scheduled(EVERY_2S), "");
    // No schedule: the daemon leaves it alone.
    write_pipeline(&s, "manual", "", "");
    let url = pg.url("app");
    let dir = s.path().join("pipelines");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PIPELINE_DIR", dir.to_str().unwrap()),
    ];

    let mut daemon = Daemon::start(&s, &[], &env);
    daemon.wait_for("two runs ended", Duration::from_secs(90), |log| {
        log.matches("pipeline `ticker`: run ended: ok").count() >= 2
    });
    let (status, took, log) = daemon.stop(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{log}");
    assert!(
        log.contains("daemon started") && log.contains("`ticker` `*/2 * * * * *` (UTC)"),
        "{log}"
    );
    assert!(log.contains("pipeline `ticker`: next run at "), "{log}");
    assert!(
        log.contains("pipeline `ticker`: run started (pid "),
        "{log}"
    );
    // The runs' own lines, labelled with their pipeline.
    assert!(
        log.contains("[ticker] pipeline `ticker` succeeded"),
        "{log}"
    );
    assert!(log.contains("daemon stopped on SIGTERM"), "{log}");
    assert!(!log.contains("`manual`"), "not scheduled, not run:\n{log}");
    assert_no_secret(&pg, &log);

    // The runs stored whole backups, each with its manifest, and left no partial file
    // (the signal may have stopped one more run: it leaves nothing under a backup's name).
    let files = s.files();
    for f in &files {
        assert!(
            f.ends_with(".sql.zst") || f.ends_with(".sql.zst.sha256"),
            "only backups and manifests: {files:?}"
        );
    }
    let complete = artifacts(&s)
        .into_iter()
        .filter(|a| files.contains(&format!("{a}.sha256")))
        .count();
    assert!(complete >= 2, "{files:?}");

    // The history has the runs, and no two of them overlapped.
    let (json, _) = status_json(&s, "ticker", &[]);
    let runs = json[0]["runs"].as_array().expect("runs");
    let ok: Vec<&serde_json::Value> = runs.iter().filter(|r| r["outcome"] == "ok").collect();
    assert!(ok.len() >= 2, "{json}");
    let mut spans: Vec<(jiff::Timestamp, jiff::Timestamp)> = runs
        .iter()
        .map(|r| {
            (
                r["started"].as_str().unwrap().parse().unwrap(),
                r["ended"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "runs overlapped: {w:?}");
    }

    // status knows the schedule: on time right after the last success, behind it an
    // hour later (its last two scheduled runs did not succeed).
    let schedule = &json[0]["schedule"];
    assert_eq!(schedule["expression"], EVERY_2S, "{json}");
    assert_eq!(schedule["timezone"], "UTC", "{json}");
    let last = json[0]["last_success"].as_str().unwrap().to_string();
    let (on_time, err) = status_json(&s, "ticker", &[("PIPELINE_TEST_NOW", &last)]);
    assert_eq!(on_time[0]["schedule"]["overdue"], false, "{on_time}");
    assert!(!err.contains("behind its schedule"), "{err}");
    let later = (last.parse::<jiff::Timestamp>().unwrap() + jiff::SignedDuration::from_hours(1))
        .to_string();
    let (late, err) = status_json(&s, "ticker", &[("PIPELINE_TEST_NOW", &later)]);
    assert_eq!(late[0]["schedule"]["overdue"], true, "{late}");
    assert!(
        late[0]["schedule"]["success_due_since"].is_string(),
        "{late}"
    );
    assert!(
        err.contains("`ticker` is behind its schedule `*/2 * * * * *` (UTC)"),
        "{err}"
    );
    // The table warns too, and its exit code stays 0 (that is what --max-age is for).
    let table = s.run(&["status"], &[("PIPELINE_TEST_NOW", &later)]);
    assert_eq!(table.status.code(), Some(0));
    assert!(
        stderr(&table).contains("behind its schedule"),
        "{}",
        stderr(&table)
    );
}

/// A scheduled pipeline `name` (every 2 s) with one good backup, and a daemon whose run of
/// it passes the dump on at a trickle: returned once that run's partial file holds data.
struct MidRun {
    pg: PgCluster,
    s: Scratch,
    daemon: Daemon,
    /// The backup directory's files before the daemon started.
    before: Vec<String>,
    /// `DATABASE_URL` and `PIPELINE_DIR` for a `pipeline run` of it.
    url: String,
    dir: String,
}

impl MidRun {
    /// `more`: tables after `[pipeline]` (e.g. `[metrics]`), given the scratch directory.
    fn start(name: &str, more: impl Fn(&Scratch) -> String) -> MidRun {
        let pg = PgCluster::start();
        pg.create_db("app");
        // About 15 MiB once compressed: the trickle transform takes some 5 s to pass it on.
        support::load_noise(&pg, "app", 400_000);
        let s = Scratch::new();
        let head = format!("{}\n{}", scheduled(EVERY_2S), more(&s));
        write_pipeline(&s, name, &head, &trickle_when_asked());
        let url = pg.url("app");
        let dir = s.path().join("pipelines").display().to_string();
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("PIPELINE_DIR", dir.as_str()),
        ];
        let first = s.run(&["run", name], &env);
        assert!(first.status.success(), "{}", stderr(&first));
        let before = s.files();
        assert_eq!(before.len(), 2, "{before:?}");

        let mut daemon = Daemon::start(&s, &[name], &[env[0], env[1], ("MODE", "trickle")]);
        let backups = s.backups();
        daemon.wait_for("a partial file with data", Duration::from_secs(60), |_| {
            support::scratch::list(&backups).iter().any(|p| {
                p.contains(".partial")
                    && std::fs::metadata(backups.join(p)).is_ok_and(|m| m.len() > 256 * 1024)
            })
        });
        MidRun {
            pg,
            s,
            daemon,
            before,
            url,
            dir,
        }
    }
}

#[test]
fn sigterm_mid_run_stops_the_run_cleanly_and_the_daemon_exits_0() {
    let MidRun {
        pg,
        s,
        mut daemon,
        before,
        ..
    } = MidRun::start("slow", |_| String::new());
    // The run outlasts the 2 s to its next time: that time is skipped, not overlapped.
    daemon.wait_for("a skipped time", Duration::from_secs(10), |log| {
        log.contains("is still running: this time is skipped")
    });
    let (status, took, log) = daemon.stop(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(15), "took {took:?}:\n{log}");
    assert!(
        log.contains("received SIGTERM: starting no more runs; stopping 1 running run(s)"),
        "{log}"
    );
    // The run got the signal and stopped the way `pipeline run` does.
    assert!(
        log.contains("[slow] received SIGTERM: stopping the run"),
        "{log}"
    );
    assert!(
        log.contains("pipeline `slow`: run stopped (exit 143)"),
        "{log}"
    );
    assert!(log.contains("daemon stopped on SIGTERM"), "{log}");
    assert_eq!(
        log.matches("pipeline `slow`: run started").count(),
        1,
        "one run, never two:\n{log}"
    );
    assert_eq!(
        s.files(),
        before,
        "no partial left, the earlier backup intact"
    );
    assert_no_secret(&pg, &log);
    let (json, _) = status_json(&s, "slow", &[]);
    assert_eq!(json[0]["runs"][0]["outcome"], "stopped", "{json}");
    assert_eq!(json[0]["runs"][0]["exit_code"], 143, "{json}");
}

#[test]
fn an_idle_daemon_stops_at_once_and_leaves_manual_runs_alone() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    write_pipeline(&s, "yearly", &scheduled("0 0 1 1 *"), "");
    write_pipeline(&s, "plain", "", "");
    write_pipeline(&s, "broken", &scheduled("0 24 * * *"), "");
    let url = pg.url("app");
    let dir = s.path().join("pipelines");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PIPELINE_DIR", dir.to_str().unwrap()),
    ];

    // Usage and configuration errors: exit 2, nothing runs.
    let out = s.run(&["daemon", "plain"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no `schedule`"), "{}", stderr(&out));
    let out = s.run(&["daemon", "broken"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("broken.toml:2:12: pipeline.schedule: hour field `24`"),
        "{}",
        stderr(&out)
    );
    // Without names, every file is checked at start: one broken file stops it too.
    let out = s.run(&["daemon"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("broken.toml:2:12"),
        "{}",
        stderr(&out)
    );

    // validate shows the next run times.
    let out = s.run(&["validate", "yearly"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("schedule: `0 0 1 1 *` (UTC)") && text.contains("-01-01 00:00:00 UTC"),
        "{text}"
    );

    let mut daemon = Daemon::start(&s, &["yearly"], &env);
    daemon.wait_for("the next run time", Duration::from_secs(30), |log| {
        log.contains("pipeline `yearly`: next run at ") && log.contains("-01-01 00:00:00 UTC")
    });
    // The daemon holds no lock: a manual run of the same pipeline works beside it.
    let manual = s.run(&["run", "yearly"], &env);
    assert!(manual.status.success(), "{}", stderr(&manual));
    let (status, took, log) = daemon.stop(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(took < Duration::from_secs(2), "took {took:?}:\n{log}");
    assert!(
        log.contains("stopping 0 running run(s)") && log.contains("daemon stopped on SIGTERM"),
        "{log}"
    );
    assert!(!log.contains("run started"), "{log}");
    assert_eq!(artifacts(&s).len(), 1, "the manual run's: {:?}", s.files());
}

#[test]
fn a_second_sigterm_makes_the_runs_exit_at_once_and_the_daemon_exit_143() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    // The transform sleeps in a host call: the first signal cannot interrupt it.
    let extra = format!(
        "[[transform]]\nname = \"misbehave\"\nplugin = \"{}\"\nmode = \"sleep\"\n",
        support::misbehave_wasm().display()
    );
    write_pipeline(&s, "sleepy", &scheduled(EVERY_2S), &extra);
    let url = pg.url("app");
    let dir = s.path().join("pipelines");
    let mut daemon = Daemon::start(
        &s,
        &["sleepy"],
        &[
            ("DATABASE_URL", &url),
            ("PIPELINE_DIR", dir.to_str().unwrap()),
        ],
    );
    let backups = s.backups();
    daemon.wait_for("the sink's partial file", Duration::from_secs(60), |_| {
        support::scratch::list(&backups)
            .iter()
            .any(|p| p.contains(".partial"))
    });
    daemon.signal(libc::SIGTERM);
    daemon.wait_for("the run told to stop", Duration::from_secs(10), |log| {
        log.contains("[sleepy] received SIGTERM: stopping the run")
    });
    let (status, took, log) = daemon.stop(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "{log}");
    assert!(
        took < Duration::from_secs(5),
        "exited at once: {took:?}\n{log}"
    );
    assert!(log.contains("received SIGTERM again"), "{log}");
    assert!(
        log.contains("[sleepy] received SIGTERM again: exiting now"),
        "{log}"
    );
    assert!(
        log.contains("the daemon was signalled again"),
        "the last line says why: {log}"
    );
    assert_no_secret(&pg, &log);
}

fn metrics_file(s: &Scratch) -> std::path::PathBuf {
    s.path().join("frozen.prom")
}

#[test]
fn a_run_that_cannot_stop_is_killed_after_the_daemons_wait_and_the_next_run_cleans_up() {
    let MidRun {
        pg,
        s,
        mut daemon,
        before,
        url,
        dir,
    } = MidRun::start("frozen", |s| {
        format!("[metrics]\ntextfile = \"{}\"\n", metrics_file(s).display())
    });
    let run_pid = |log: &str, nth: usize| -> i32 {
        log.split("pipeline `frozen`: run started (pid ")
            .nth(nth)
            .and_then(|rest| rest.split(')').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no run pid number {nth} in the log:\n{log}"))
    };
    let partial_with_data = |other_than: &str| {
        support::scratch::list(&s.backups()).into_iter().find(|p| {
            p.contains(".partial")
                && p != other_than
                && std::fs::metadata(s.backups().join(p)).is_ok_and(|m| m.len() > 256 * 1024)
        })
    };
    // Killed from outside (as by the kernel's out-of-memory killer): the daemon records the
    // run it could not, and goes on to the next time.
    let first = partial_with_data("").expect("MidRun waits for the partial");
    let pid = run_pid(&daemon.log(), 1);
    // SAFETY: kill(2) on the daemon's child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill the run");
    daemon.wait_for(
        "the next run's partial file",
        Duration::from_secs(60),
        |log| {
            log.contains("pipeline `frozen`: run killed by signal 9")
                && log.matches("pipeline `frozen`: run started (pid ").count() == 2
                && partial_with_data(&first).is_some()
        },
    );
    let (json, _) = status_json(&s, "frozen", &[]);
    let newest = &json[0]["runs"][0];
    assert_eq!(newest["outcome"], "failed", "{json}");
    assert_eq!(newest["exit_code"], 137, "{json}");
    assert!(
        newest["error"].as_str().is_some_and(|e| e.contains(
            "killed by signal 9, not sent by the daemon (the kernel's out-of-memory killer"
        )),
        "{json}"
    );

    // A run that cannot act on the signal (as one stuck in the kernel): stopped by the test.
    let pid = run_pid(&daemon.log(), 2);
    // SAFETY: kill(2) on the daemon's child, which runs until the daemon kills it.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "stop the run");
    // Should an assertion fail before the daemon kills it, the stopped run must not linger.
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) only sends a signal; a pid already gone gets nothing.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let stopped = KillOnDrop(pid);
    assert!(!programs("pg_dump", &pg).is_empty(), "pg_dump runs");

    let (status, took, log) = daemon.stop(libc::SIGTERM, Duration::from_secs(40));
    if log
        .matches("pipeline `frozen`: run killed by signal 9")
        .count()
        == 2
    {
        // Killed and reaped by the daemon: its pid may be another process's by now.
        std::mem::forget(stopped);
    }
    assert_eq!(status.code(), Some(1), "{log}");
    // It waited its 20 s for the run, and not much longer.
    assert!(
        took >= Duration::from_secs(19) && took < Duration::from_secs(30),
        "took {took:?}:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "pipeline `frozen`: its run (pid {pid}) did not stop within 20s: killing it"
        )),
        "{log}"
    );
    assert!(
        log.contains("pipeline `frozen`: run killed by signal 9"),
        "{log}"
    );
    assert!(
        log.contains(
            "the daemon stopped, but the run(s) of frozen did not stop within 20s of SIGTERM \
             and were killed"
        ),
        "the last line says why: {log}"
    );
    // The run's programs died with it; no file under a backup's name appeared.
    assert_no_pg_dump(&pg);
    let kept: Vec<String> = s
        .files()
        .into_iter()
        .filter(|f| !f.contains(".partial"))
        .collect();
    assert_eq!(kept, before, "the earlier backup intact, nothing new");
    let partial = s
        .files()
        .into_iter()
        .find(|f| f.contains(".partial"))
        .unwrap_or_else(|| panic!("a killed run leaves its partial file: {:?}", s.files()));
    assert_no_secret(&pg, &log);
    // The run could not record itself: the daemon did, so status and the metrics show it,
    // not the one before.
    let metrics = std::fs::read_to_string(metrics_file(&s)).expect("the metrics file");
    assert!(
        metrics.contains("pipeline_last_run_exit_code{pipeline=\"frozen\"} 137")
            && metrics.contains("pipeline_consecutive_failures{pipeline=\"frozen\"} 2"),
        "{metrics}"
    );
    let (json, _) = status_json(&s, "frozen", &[]);
    let newest = &json[0]["runs"][0];
    assert_eq!(newest["outcome"], "failed", "{json}");
    assert_eq!(newest["exit_code"], 137, "{json}");
    assert!(
        newest["error"].as_str().is_some_and(
            |e| e.contains("killed by the daemon (signal 9): the run did not stop within 20s")
        ),
        "{json}"
    );
    assert_eq!(
        json[0]["runs"][1]["exit_code"], 137,
        "the run killed before: {json}"
    );
    assert_eq!(
        json[0]["runs"][2]["outcome"], "ok",
        "the first run's record: {json}"
    );

    // The next run removes the killed run's partial file and stores a good backup.
    let next = s.run(
        &["run", "frozen"],
        &[("DATABASE_URL", &url), ("PIPELINE_DIR", &dir)],
    );
    assert!(next.status.success(), "{}", stderr(&next));
    assert!(
        stderr(&next).contains(&format!("removed {}", s.backups().join(&partial).display())),
        "{}",
        stderr(&next)
    );
    let after = s.files();
    assert!(
        !after.iter().any(|f| f.contains(".partial")),
        "no partial left: {after:?}"
    );
    assert_eq!(artifacts(&s).len(), 2, "{after:?}");
}
