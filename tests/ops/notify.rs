//! `[[notify]]`: the built-in HTTP notifiers tell a real HTTP receiver of runs, and
//! whatever a notifier does, the run's outcome and exit code stay what they were.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::PgCluster;
use crate::support::receiver::{Answer, Receiver};
use crate::support::scratch::{Scratch, assert_no_secret, stderr};

/// PostgreSQL → zstd → local, with `notify` (TOML tables) appended.
fn pipeline(s: &Scratch, notify: &str) -> String {
    let file = s.path().join("alerts.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"./backups\"\n\n{notify}"
        ),
    )
    .unwrap();
    file.display().to_string()
}

fn builtin_wasm(name: &str) -> String {
    Path::new(env!("PIPELINE_BUILTIN_WASM_DIR"))
        .join(format!("pipeline_{name}.wasm"))
        .display()
        .to_string()
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_failing_run_tells_every_notifier_and_keeps_its_exit_code() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let hook = Receiver::start(Answer::Status(200));
    let hc = Receiver::start(Answer::Status(200));
    let slack = Receiver::start(Answer::Status(200));
    let s = Scratch::new();
    let file = pipeline(
        &s,
        &format!(
            "[[notify]]\nplugin = \"webhook\"\nurl = \"{}\"\nbearer_token = \"${{env:HOOK_TOKEN}}\"\non = [\"start\", \"success\", \"failure\"]\n\n\
             [[notify]]\nplugin = \"healthchecks\"\nurl = \"{}\"\non = [\"start\", \"success\", \"failure\"]\n\n\
             [[notify]]\nplugin = \"slack\"\nurl = \"{}\"\nmention_on_failure = \"<!channel>\"\n",
            hook.url("/hook"),
            hc.url("/ping/check-uuid"),
            slack.url("/services/T0/B0/XYZ"),
        ),
    );
    // A database that does not exist: the dump fails, exit 1.
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("missing")),
            ("HOOK_TOKEN", "token-123456789"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");

    let got = hook.wait_for(2, WAIT);
    assert_eq!(got.len(), 2, "start and failure: {got:?}");
    assert_eq!(got[0].json()["event"], "start");
    let failure = got[1].json();
    assert_eq!(failure["event"], "failure", "{failure}");
    assert_eq!(failure["pipeline"], "alerts");
    assert_eq!(failure["exit_code"], 1);
    assert!(
        failure["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing")),
        "the error says why: {failure}"
    );
    assert!(
        failure["summary"]
            .as_str()
            .is_some_and(|t| t.contains("FAILED"))
    );
    assert!(failure["artifact"].is_null());
    assert_eq!(got[1].method, "POST");
    assert_eq!(got[1].path, "/hook");
    assert_eq!(got[1].header("content-type"), Some("application/json"));
    assert_eq!(
        got[1].header("authorization"),
        Some("Bearer token-123456789")
    );

    let pings = hc.wait_for(2, WAIT);
    let paths: Vec<&str> = pings.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/ping/check-uuid/start", "/ping/check-uuid/fail"]);
    assert!(pings[1].text().contains("FAILED"), "{}", pings[1].text());

    // `on` defaults to success and failure: no start message.
    let posted = slack.wait_for(1, WAIT);
    assert_eq!(posted.len(), 1, "{posted:?}");
    let text = posted[0].json()["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        text.starts_with(":x: <!channel> pipeline `alerts`"),
        "{text}"
    );

    // Nothing secret left the machine or reached the log.
    for r in got.iter().chain(&pings).chain(&posted) {
        assert_no_secret(&pg, &r.text());
    }
    assert!(!err.contains("token-123456789"), "{err}");
    assert!(!err.contains("XYZ"), "the webhook URL is a secret: {err}");
}

#[test]
fn a_successful_run_reports_the_backup_it_made() {
    let pg = PgCluster::start();
    pg.create_db("app");
    crate::support::load_sample(&pg, "app");
    let hook = Receiver::start(Answer::Status(204));
    let hc = Receiver::start(Answer::Status(200));
    let s = Scratch::new();
    let file = pipeline(
        &s,
        &format!(
            "[[notify]]\nname = \"ops-hook\"\nplugin = \"webhook\"\nurl = \"{}\"\n\n\
             [[notify]]\nplugin = \"healthchecks\"\nurl = \"{}\"\non = [\"start\", \"success\"]\n",
            hook.url("/hook"),
            hc.url("/ping/abc"),
        ),
    );
    let out = s.run(&["run", &file], &[("DATABASE_URL", &pg.url("app"))]);
    assert!(out.status.success(), "{}", stderr(&out));

    let got = hook.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "success only (the default): {got:?}");
    let r = got[0].json();
    assert_eq!(r["event"], "success");
    assert_eq!(r["exit_code"], 0);
    let artifact = r["artifact"].as_str().expect("the artifact").to_string();
    let stored = s.backups().join(&artifact);
    let size = std::fs::metadata(&stored)
        .expect("the reported backup exists")
        .len();
    assert_eq!(r["size"], size);
    let manifest = std::fs::read_to_string(s.backups().join(format!("{artifact}.sha256"))).unwrap();
    assert!(
        manifest.starts_with(r["sha256"].as_str().expect("sha256")),
        "{manifest} vs {r}"
    );
    assert_eq!(r["sinks"], serde_json::json!(["local"]));
    assert!(r["duration_seconds"].as_f64().is_some_and(|d| d > 0.0));
    assert!(r["error"].is_null());

    let pings = hc.wait_for(2, WAIT);
    let paths: Vec<&str> = pings.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/ping/abc/start", "/ping/abc"]);
}

#[test]
fn a_notifier_that_fails_or_hangs_never_changes_the_run() {
    let pg = PgCluster::start();
    pg.create_db("app");
    crate::support::load_sample(&pg, "app");
    let refusing = Receiver::start(Answer::Status(500));
    let hanging = Receiver::start(Answer::Hang);
    let s = Scratch::new();
    let file = pipeline(
        &s,
        &format!(
            "[[notify]]\nname = \"refused\"\nplugin = \"webhook\"\nurl = \"{}\"\n\n\
             [[notify]]\nname = \"stuck\"\nplugin = \"webhook\"\nurl = \"{}\"\non = [\"start\", \"success\"]\n\
             limits = {{ timeout = \"3s\" }}\n",
            refusing.url("/x"),
            hanging.url("/y"),
        ),
    );
    let started = Instant::now();
    let out = s.run(&["run", &file], &[("DATABASE_URL", &pg.url("app"))]);
    let took = started.elapsed();
    let err = stderr(&out);
    assert!(out.status.success(), "the backup run succeeds: {err}");
    assert_eq!(
        crate::support::scratch::list(&s.backups()).len(),
        2,
        "the backup and its manifest"
    );
    assert!(
        err.contains("notify refused") && err.contains("500"),
        "the refusal is logged with the notifier's name:\n{err}"
    );
    assert!(
        err.contains("notify stuck") && err.contains("could not tell of the run's start"),
        "the hung notifier is named:\n{err}"
    );
    assert!(err.contains("the run's outcome is unchanged"), "{err}");
    // Two waits of 3 s (start and success) and the run itself, not minutes.
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert_eq!(refusing.received().len(), 1, "told once, of the success");
}

#[test]
fn a_notifier_file_reaches_only_the_hosts_the_pipeline_grants() {
    let pg = PgCluster::start();
    pg.create_db("app");
    crate::support::load_sample(&pg, "app");
    let hook = Receiver::start(Answer::Status(200));
    let s = Scratch::new();
    let host = format!("127.0.0.1:{}", hook.port());
    let table = format!(
        "[[notify]]\nname = \"mine\"\nplugin = \"{}\"\nurl = \"{}\"\n",
        builtin_wasm("webhook"),
        hook.url("/mine")
    );

    let refused = pipeline(&s, &table);
    let out = s.run(&["validate", &refused], &[("DATABASE_URL", &pg.url("app"))]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("notify[0]") && err.contains(&format!("allow = {{ hosts = [\"{host}\"] }}")),
        "names the stage and the grant to add:\n{err}"
    );

    let granted = pipeline(&s, &format!("{table}allow = {{ hosts = [\"{host}\"] }}\n"));
    let out = s.run(&["run", &granted], &[("DATABASE_URL", &pg.url("app"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hook.wait_for(1, WAIT).len(), 1);
}

#[test]
fn a_bad_notify_table_is_refused_naming_its_line() {
    let s = Scratch::new();
    let file = pipeline(
        &s,
        "[[notify]]\nplugin = \"webhook\"\nurl = \"https://h.example/x\"\non = [\"sucess\"]\n",
    );
    let out = s.run(
        &["validate", &file],
        &[("DATABASE_URL", "postgresql://x@127.0.0.1/db")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("alerts.toml:16:") && err.contains("notify[0].on") && err.contains("`sucess`"),
        "{err}"
    );

    let file = pipeline(&s, "[[notify]]\nplugin = \"local\"\npath = \"./x\"\n");
    let out = s.run(
        &["validate", &file],
        &[("DATABASE_URL", "postgresql://x@127.0.0.1/db")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is a sink plugin and cannot be used as a notifier"),
        "{err}"
    );
}

#[test]
fn a_run_stopped_by_sigterm_still_reports_its_failure() {
    let pg = PgCluster::start();
    pg.create_db("app");
    crate::support::load_noise(&pg, "app", 200000);
    let hook = Receiver::start(Answer::Status(200));
    let s = Scratch::new();
    let misbehave = builtin_wasm("misbehave");
    let file = s.path().join("stopped.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[transform]]\nname = \"slow\"\nplugin = \"{misbehave}\"\nmode = \"trickle\"\n\n\
             [[sink]]\nplugin = \"local\"\npath = \"./backups\"\n\n\
             [[notify]]\nplugin = \"webhook\"\nurl = \"{}\"\non = [\"start\", \"failure\"]\n",
            hook.url("/stop")
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let child = s.spawn(&["run", &file], &[("DATABASE_URL", &pg.url("app"))]);
    assert_eq!(
        hook.wait_for(1, Duration::from_secs(30)).len(),
        1,
        "the start"
    );
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    let got = hook.wait_for(2, WAIT);
    assert_eq!(got.len(), 2, "start and failure: {err}");
    let r = got[1].json();
    assert_eq!(r["event"], "failure");
    assert_eq!(r["exit_code"], 143);
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("SIGTERM")),
        "{r}"
    );
}
