//! Unattended operation: every run is recorded in the pipeline's history (`pipeline status`)
//! and, with `[metrics]`, in a Prometheus textfile that `promtool` accepts; notifiers are
//! told of runs (`ops/notify.rs`).

mod support;

#[path = "ops/notify.rs"]
mod notify;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::PgCluster;
use support::scratch::{Scratch, assert_no_secret, stderr};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A pipeline `ops` (PostgreSQL → zstd → local) with a `[metrics]` textfile in the scratch.
fn ops_pipeline(s: &Scratch) -> (PathBuf, PathBuf) {
    let file = s.path().join("ops.toml");
    std::fs::write(
        &file,
        "[source]\nplugin = \"postgres\"\nurl = \"${env:DATABASE_URL}\"\n\n\
         [[transform]]\nplugin = \"zstd\"\n\n\
         [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"./backups\"\n\n\
         [metrics]\ntextfile = \"./textfile/ops.prom\"\n",
    )
    .unwrap();
    let prom = s.path().join("textfile/ops.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    (file, prom)
}

/// The one history file of the scratch's state directory.
fn history_file(s: &Scratch) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(s.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".history.jsonl"))
        .collect();
    assert_eq!(found.len(), 1, "one history file: {found:?}");
    found.into_iter().next().unwrap()
}

fn promtool_check(prom: &Path) {
    let text = std::fs::read(prom).unwrap();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed ({e}): install Debian's `prometheus` package, or run \
                 scripts/install-prerequisites.sh --tests"
            )
        });
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused {}:\n{}{}\n{}",
        prom.display(),
        stdout(&out),
        stderr(&out),
        String::from_utf8_lossy(&text)
    );
}

fn status_json(s: &Scratch, name: &str) -> serde_json::Value {
    let out = s.run(&["status", name, "--json"], &[]);
    assert!(out.status.success(), "status --json: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("status --json prints JSON")
}

#[test]
fn successful_and_failed_runs_are_in_status_and_metrics() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let (file, prom) = ops_pipeline(&s);
    let file = file.to_str().unwrap();

    let ok = s.run(&["run", file], &[("DATABASE_URL", &pg.url("app"))]);
    assert!(ok.status.success(), "run: {}", stderr(&ok));
    promtool_check(&prom);
    let after_ok = std::fs::read_to_string(&prom).unwrap();
    assert!(
        after_ok.contains("pipeline_last_run_success{pipeline=\"ops\"} 1"),
        "{after_ok}"
    );

    // A database that does not exist: the run fails (exit 1) and is recorded as such.
    let failed = s.run(&["run", file], &[("DATABASE_URL", &pg.url("missing"))]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));

    let table = s.run(&["status"], &[]);
    let text = stdout(&table);
    assert!(table.status.success(), "status: {}", stderr(&table));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("PIPELINE"), "{text}");
    assert!(
        lines[1].starts_with("ops") && lines[1].contains("failed (1)"),
        "newest first: {text}"
    );
    assert!(
        lines[2].contains(" ok ") && lines[2].contains(".sql.zst"),
        "{text}"
    );
    assert!(text.contains("ops: last run failed:"), "the reason: {text}");

    let json = status_json(&s, "ops");
    let runs = json[0]["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{json}");
    assert_eq!(runs[0]["outcome"], "failed");
    assert_eq!(runs[0]["exit_code"], 1);
    assert!(
        runs[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing"))
    );
    assert_eq!(runs[1]["outcome"], "ok");
    let backups = support::scratch::list(&s.backups());
    assert!(
        backups
            .iter()
            .any(|b| Some(b.as_str()) == runs[1]["artifact"].as_str()),
        "the recorded artifact is the stored one: {backups:?} {json}"
    );
    assert!(runs[1]["size"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(json[0]["last_success"], runs[1]["ended"]);
    // By the file's path too, without the variables the file needs.
    assert_eq!(status_json(&s, file)[0]["runs"], json[0]["runs"]);

    // The metrics keep the last success's time after the failure.
    promtool_check(&prom);
    let metrics = std::fs::read_to_string(&prom).unwrap();
    let ended: jiff::Timestamp = runs[1]["ended"].as_str().unwrap().parse().unwrap();
    let expected = format!(
        "pipeline_last_success_timestamp_seconds{{pipeline=\"ops\"}} {}",
        ended.as_millisecond() as f64 / 1000.0
    );
    assert!(
        metrics.lines().any(|l| l == expected),
        "{expected} in:\n{metrics}"
    );
    assert!(
        metrics.contains("pipeline_last_run_success{pipeline=\"ops\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("pipeline_last_success_sink_stored_bytes{pipeline=\"ops\",sink=\"local\"}"),
        "{metrics}"
    );

    // No secret in the history, the metrics or what status prints.
    assert_no_secret(&pg, &std::fs::read_to_string(history_file(&s)).unwrap());
    assert_no_secret(&pg, &metrics);
    assert_no_secret(&pg, &text);
    assert_no_secret(&pg, &json.to_string());

    // --max-age: a check for monitoring that fails once the last success is too old.
    let fresh = s.run(&["status", "--max-age", "1d"], &[]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    let later = (ended + jiff::SignedDuration::from_hours(30)).to_string();
    let stale = s.run(
        &["status", "--max-age", "1d"],
        &[("PIPELINE_TEST_NOW", &later)],
    );
    assert_eq!(stale.status.code(), Some(1), "{}", stderr(&stale));
    assert!(
        stderr(&stale).contains("`ops` last succeeded 30h ago"),
        "{}",
        stderr(&stale)
    );
    assert!(
        stdout(&stale).contains("failed (1)"),
        "the table is still printed"
    );

    // A pipeline never run is an error that says where it looked.
    let none = s.run(&["status", "other"], &[]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("no run of pipeline `other`"),
        "{}",
        stderr(&none)
    );
}

#[test]
fn an_unsafe_or_corrupt_history_is_warned_about_and_runs_go_on() {
    use std::os::unix::fs::PermissionsExt;
    let pg = PgCluster::start();
    pg.create_db("app");
    let s = Scratch::new();
    let (file, prom) = ops_pipeline(&s);
    let file = file.to_str().unwrap();
    let url = pg.url("app");
    let first = s.run(&["run", file], &[("DATABASE_URL", &url)]);
    assert!(first.status.success(), "{}", stderr(&first));
    let history = history_file(&s);
    let mode = std::fs::metadata(&history).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the history is private");

    // Writable by others: not trusted, not replaced; the run still succeeds.
    std::fs::set_permissions(&history, std::fs::Permissions::from_mode(0o666)).unwrap();
    let before = std::fs::read_to_string(&history).unwrap();
    let second = s.run(&["run", file], &[("DATABASE_URL", &url)]);
    let err = stderr(&second);
    assert!(second.status.success(), "{err}");
    assert!(
        err.contains("history was not recorded") && err.contains("writable by group or others"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&history).unwrap(),
        before,
        "left alone"
    );
    // The metrics are still written, from this run alone.
    promtool_check(&prom);
    let status = s.run(&["status"], &[]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        stderr(&status).contains("skipped a history file") && stderr(&status).contains("writable"),
        "{}",
        stderr(&status)
    );

    // Corrupt: the unreadable line is dropped with a warning, the good records kept.
    std::fs::set_permissions(&history, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&history, format!("{before}{{\"half a rec\n")).unwrap();
    let status = s.run(&["status", "ops", "--json"], &[]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        stderr(&status).contains("unreadable line"),
        "{}",
        stderr(&status)
    );
    let third = s.run(&["run", file], &[("DATABASE_URL", &url)]);
    let err = stderr(&third);
    assert!(third.status.success(), "{err}");
    assert!(err.contains("1 unreadable line(s), dropped"), "{err}");
    let json = status_json(&s, "ops");
    let runs = json[0]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "the first and third runs: {json}");
    assert!(runs.iter().all(|r| r["outcome"] == "ok"));
    let status = s.run(&["status"], &[]);
    assert!(
        !stderr(&status).contains("unreadable"),
        "rewritten clean: {}",
        stderr(&status)
    );
}

/// A real `prometheus-pushgateway` on a free port, stopped on drop.
struct Pushgateway {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Pushgateway {
    fn start() -> Pushgateway {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "prometheus-pushgateway is needed ({e}): install Debian's \
                     `prometheus-pushgateway` package, or run \
                     scripts/install-prerequisites.sh --tests"
                )
            });
        let g = Pushgateway {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if g.get("/-/ready")
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return g;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the Pushgateway did not become ready on port {port}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The whole HTTP response to a GET, or None if it could not connect.
    fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_reach_a_real_pushgateway_and_a_dead_one_only_warns() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let gw = Pushgateway::start();
    let s = Scratch::new();
    let file = s.path().join("pushed.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"./backups\"\n\n\
             [metrics]\npushgateway = \"{}\"\njob = \"backups\"\n",
            gw.url()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let url = pg.url("app");
    let out = s.run(&["run", file], &[("DATABASE_URL", &url)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("WARN"), "{}", stderr(&out));
    let metrics = gw.get("/metrics").expect("read the Pushgateway back");
    let pushed = |name: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains("job=\"backups\"")
                    && l.contains("pipeline=\"pushed\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(
        pushed("pipeline_last_run_success").as_deref(),
        Some("1"),
        "{metrics}"
    );
    let json = status_json(&s, "pushed");
    let ended: jiff::Timestamp = json[0]["runs"][0]["ended"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let at: f64 = pushed("pipeline_last_success_timestamp_seconds")
        .expect("pushed")
        .parse()
        .unwrap();
    assert!(
        (at - ended.as_millisecond() as f64 / 1000.0).abs() < 0.001,
        "{at} vs {ended}"
    );

    // A Pushgateway that is down: a warning, and the run's own exit code.
    drop(gw);
    let out = s.run(&["run", file], &[("DATABASE_URL", &url)]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the run's metrics were not written: Pushgateway http://127.0.0.1:"),
        "{err}"
    );
    assert_no_secret(&pg, &err);
}

/// Polls `cond` every 100 ms for up to 30 s.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_run_stopped_by_sigterm_is_recorded_as_stopped() {
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.psql("app", "CREATE TABLE t (x int); ALTER TABLE t OWNER TO app;");
    let s = Scratch::new();
    let (file, prom) = ops_pipeline(&s);
    let file = file.to_str().unwrap();
    let url = pg.url("app");
    std::thread::scope(|scope| {
        // Another session holds the table: pg_dump waits for it, so the run is surely
        // still going when it is signalled.
        scope.spawn(|| {
            pg.psql(
                "app",
                "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;",
            )
        });
        wait_until("the table lock", || {
            pg.psql(
                "app",
                "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass \
                 AND mode = 'AccessExclusiveLock' AND granted",
            )
            .trim()
                == "1"
        });
        let child = s.spawn(&["run", file], &[("DATABASE_URL", &url)]);
        wait_until("pg_dump waiting on the lock", || {
            pg.psql(
                "app",
                "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass AND NOT granted",
            )
            .trim()
                != "0"
        });
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    });
    let json = status_json(&s, "ops");
    let run = &json[0]["runs"][0];
    assert_eq!(run["outcome"], "stopped", "{json}");
    assert_eq!(run["exit_code"], 143, "{json}");
    assert!(json[0]["last_success"].is_null(), "{json}");
    let table = stdout(&s.run(&["status"], &[]));
    assert!(table.contains("stopped (143)"), "{table}");
    promtool_check(&prom);
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics.contains("pipeline_last_run_exit_code{pipeline=\"ops\"} 143"),
        "{metrics}"
    );
}
