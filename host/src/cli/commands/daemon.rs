//! `pipeline daemon [NAME…]`: runs scheduled pipelines in the foreground, each at the
//! times of its `[pipeline] schedule` ([`crate::schedule`]), until SIGTERM or SIGINT.
//!
//! Each run is a child process, `pipeline [global flags] run FILE` (this binary): a run
//! has its own memory, its own signal handling and its own run-wide cancellation
//! ([`crate::shutdown`] is per process), and it reads its pipeline file afresh. The daemon
//! itself runs no stage and holds no lock: a manual `pipeline run` works beside it, and
//! the pipeline's own lock keeps the two from overlapping (the later one exits 3).
//!
//! - A pipeline never overlaps itself: a time that comes while its previous run is still
//!   going is skipped and logged.
//! - After every start and every end, the pipeline's next run time is logged.
//! - Missed times (the machine was asleep, the clock jumped forward) are not made up one by
//!   one: the pipeline runs once, at once, then follows its schedule from now.
//! - On the first SIGTERM, SIGINT or SIGHUP, nothing new starts, the signal is forwarded to
//!   every running run (which stops cleanly, as `pipeline run` does), and the daemon waits
//!   for them and exits 0. A second signal is forwarded too (the runs exit at once) and the
//!   daemon exits 128 + the signal once they are gone; a run still going
//!   [`STOP_WAIT`] after the first signal is killed and the daemon exits 1.
//! - Schedules are read at start: a changed `schedule` or `timezone` needs a restart; every
//!   other change to a file is seen by its next run.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use jiff::Timestamp;

use crate::error::{Reason, RunFailed, UsageError, signal_name};
use crate::logging::{self, Format};
use crate::schedule::Schedule;
use crate::shutdown::{self, ChildHandle};
use crate::{config, error, history};

/// How long the daemon waits for its runs after the first stop signal before it kills them.
const STOP_WAIT: Duration = shutdown::SUPERVISE_WAIT;
/// The longest the daemon sleeps between looks at the clock, so a changed wall clock is
/// noticed within this time.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// A clock that goes back by more than this makes the daemon recompute every next run;
/// less, and the times already run are not run again.
const CLOCK_BACK: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

/// One scheduled pipeline file.
struct Job {
    name: String,
    file: PathBuf,
    /// Where the run's metrics go: the daemon writes them for a run that could not.
    metrics: Option<config::MetricsSettings>,
    schedule: Schedule,
    next: Option<Timestamp>,
    running: Option<Running>,
}

struct Running {
    handle: ChildHandle,
    pid: u32,
    started: Timestamp,
    clock: Instant,
}

enum Event {
    Signal(i32),
    Exited {
        job: usize,
        status: std::io::Result<ExitStatus>,
    },
}

/// How the daemon is being stopped.
struct Stopping {
    signal: i32,
    at: Instant,
    again: bool,
    killed: Vec<String>,
}

pub fn daemon(names: &[String], flags: &[String]) -> Result<()> {
    let mut jobs = select(names)?;
    let exe = std::env::current_exe()
        .context("cannot find this program's own path to start runs with")?;
    let (tx, rx) = mpsc::channel::<Event>();
    {
        let tx = tx.clone();
        shutdown::supervise(move |sig| {
            let _ = tx.send(Event::Signal(sig));
        });
    }
    logging::info(
        None,
        &format!(
            "daemon started (pid {}): {}; each run is `{} run FILE`; stop with SIGTERM or Ctrl-C",
            std::process::id(),
            jobs.iter()
                .map(|j| format!("`{}` {}", j.name, j.schedule.describe()))
                .collect::<Vec<_>>()
                .join(", "),
            exe.display()
        ),
    );
    let mut now = Timestamp::now();
    for job in &mut jobs {
        job.next = job.schedule.next_after(now);
        log_next(job, now);
    }
    let mut stopping: Option<Stopping> = None;
    loop {
        let before = now;
        now = Timestamp::now();
        if stopping.is_none() {
            if now + CLOCK_BACK < before {
                logging::warn(
                    None,
                    &format!("the clock went back from {before} to {now}: next runs recomputed"),
                );
            }
            for (i, job) in jobs.iter_mut().enumerate() {
                match plan(&job.schedule, job.next, before, now) {
                    Plan::Wait => continue,
                    Plan::Replan => {}
                    Plan::Run { due, missed_more } => {
                        start_or_skip(i, job, due, missed_more, &exe, flags, &tx);
                    }
                }
                job.next = job.schedule.next_after(now);
                log_next(job, now);
            }
        }
        let running = jobs.iter().filter(|j| j.running.is_some()).count();
        let wait = match &mut stopping {
            Some(_) if running == 0 => break,
            Some(s) => match STOP_WAIT.checked_sub(s.at.elapsed()) {
                Some(left) => left,
                None => {
                    kill_all(&mut jobs, s);
                    Duration::from_secs(1)
                }
            },
            None => jobs
                .iter()
                .filter_map(|j| j.next)
                .min()
                .map(|due| Duration::try_from(now.duration_until(due)).unwrap_or(Duration::ZERO))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP),
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Signal(sig)) => on_signal(sig, &jobs, &mut stopping),
            Ok(Event::Exited { job, status }) => {
                if let Some(j) = jobs.get_mut(job) {
                    let killed = stopping
                        .as_ref()
                        .is_some_and(|s| s.killed.contains(&j.name));
                    ended(j, status, stopping.is_none(), killed);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let Some(s) = stopping else {
        return Ok(());
    };
    if !s.killed.is_empty() {
        return Err(RunFailed(format!(
            "the daemon stopped, but the run(s) of {} did not stop within {}s of {} and were killed",
            s.killed.join(", "),
            STOP_WAIT.as_secs(),
            signal_name(s.signal)
        ))
        .into());
    }
    if s.again {
        // Exits 128 + the signal, like a run stopped by it.
        shutdown::cancel(Reason::Signal(s.signal));
        return Err(RunFailed(
            "the daemon was signalled again: its runs were made to exit at once".into(),
        )
        .into());
    }
    logging::info(
        None,
        &format!(
            "daemon stopped on {}: every run it started has ended",
            signal_name(s.signal)
        ),
    );
    Ok(())
}

/// The pipeline files the daemon runs: the named ones (each must have a schedule), or
/// every file with a schedule in `$PIPELINE_DIR` and `./pipelines` (a name in both is
/// `$PIPELINE_DIR`'s, as `pipeline run NAME` finds it).
fn select(names: &[String]) -> Result<Vec<Job>> {
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    if names.is_empty() {
        let mut dirs = Vec::new();
        if let Some(d) = std::env::var_os("PIPELINE_DIR").filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(d));
        }
        dirs.push(PathBuf::from("pipelines"));
        let mut seen = std::collections::BTreeSet::new();
        for dir in &dirs {
            for file in toml_files(dir)? {
                if let Some(stem) = file.file_stem().map(|s| s.to_os_string())
                    && seen.insert(stem)
                {
                    files.push((file, false));
                }
            }
        }
        if files.is_empty() {
            return Err(UsageError(format!(
                "no pipeline files in {}: give names, or set PIPELINE_DIR",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))
            .into());
        }
    } else {
        for name in names {
            files.push((config::find(name).map_err(UsageError)?, true));
        }
    }
    let mut jobs: Vec<Job> = Vec::new();
    for (file, named) in files {
        let file = config::absolute(&file);
        if jobs.iter().any(|j| j.file == file) {
            continue;
        }
        if config::schedule_of(&file)?.is_none() {
            if named {
                return Err(UsageError(format!(
                    "{}: no `schedule` in its [pipeline] table: the daemon runs only \
                     scheduled pipelines (e.g. schedule = \"0 2 * * *\")",
                    file.display()
                ))
                .into());
            }
            logging::debug(None, &format!("{}: no schedule, not run", file.display()));
            continue;
        }
        // The whole file is checked now (its variables too), not at its first run.
        let p = config::load(&file)?;
        logging::add_secrets(&p.secrets);
        let Some(schedule) = p.schedule else {
            continue;
        };
        jobs.push(Job {
            name: p.name,
            file,
            metrics: p.metrics,
            schedule,
            next: None,
            running: None,
        });
    }
    if jobs.is_empty() {
        return Err(UsageError(
            "no pipeline file there has a `schedule` in its [pipeline] table: nothing to run"
                .into(),
        )
        .into());
    }
    Ok(jobs)
}

/// The `*.toml` files of `dir`, sorted; none if it does not exist.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(UsageError(format!("cannot read {}: {e}", dir.display())).into()),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn log_next(job: &Job, now: Timestamp) {
    match job.next {
        Some(next) => logging::info(
            None,
            &format!(
                "pipeline `{}`: next run at {} (in {})",
                job.name,
                job.schedule.local(next),
                humanize(now.duration_until(next))
            ),
        ),
        None => logging::warn(
            None,
            &format!(
                "pipeline `{}`: its schedule {} fires no more",
                job.name,
                job.schedule.describe()
            ),
        ),
    }
}

/// What to do for one pipeline when the daemon looks at the clock.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Its next time has not come.
    Wait,
    /// Its time `due` has come (with other times after it already past too, if
    /// `missed_more`): run it once, then plan from now.
    Run { due: Timestamp, missed_more: bool },
    /// The clock went back more than [`CLOCK_BACK`]: plan from now, run nothing.
    Replan,
}

/// The plan for a pipeline with `schedule` whose next time is `next`, at `now`, when the
/// daemon last looked at `before`. Missed times are not made up one by one (cron's way):
/// however many passed, the pipeline runs once. A clock set back a little repeats nothing
/// (the planned time is awaited); set back more than [`CLOCK_BACK`], it plans anew.
fn plan(schedule: &Schedule, next: Option<Timestamp>, before: Timestamp, now: Timestamp) -> Plan {
    if now + CLOCK_BACK < before {
        return Plan::Replan;
    }
    match next {
        Some(due) if due <= now => Plan::Run {
            due,
            missed_more: schedule.next_after(due).is_some_and(|t| t <= now),
        },
        _ => Plan::Wait,
    }
}

/// A due pipeline: started, or skipped if its previous run still goes.
fn start_or_skip(
    i: usize,
    job: &mut Job,
    due: Timestamp,
    missed_more: bool,
    exe: &Path,
    flags: &[String],
    tx: &Sender<Event>,
) {
    if let Some(r) = &job.running {
        logging::warn(
            None,
            &format!(
                "pipeline `{}`: due at {}, but its run started at {} (pid {}) is still running: this time is skipped",
                job.name,
                job.schedule.local(due),
                job.schedule.local(r.started),
                r.pid
            ),
        );
        return;
    }
    if missed_more {
        logging::warn(
            None,
            &format!(
                "pipeline `{}`: was due at {} and missed later times too (the machine slept \
                 or the clock jumped): running once now",
                job.name,
                job.schedule.local(due)
            ),
        );
    }
    match spawn(i, job, exe, flags, tx) {
        Ok(r) => {
            logging::info(
                None,
                &format!(
                    "pipeline `{}`: run started (pid {}) for {}",
                    job.name,
                    r.pid,
                    job.schedule.local(due)
                ),
            );
            job.running = Some(r);
        }
        Err(e) => logging::error(
            None,
            &format!("pipeline `{}`: the run could not start: {e:#}", job.name),
        ),
    }
}

/// Starts `pipeline [flags] run FILE`. Its own process group keeps a terminal's Ctrl-C
/// from reaching it beside the daemon's forwarded signal (which it would take as a
/// second one). Its log lines are relayed with the pipeline's name.
fn spawn(i: usize, job: &Job, exe: &Path, flags: &[String], tx: &Sender<Event>) -> Result<Running> {
    let mut child = Command::new(exe)
        .args(flags)
        .arg("run")
        .arg(&job.file)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    let handle = ChildHandle::new(pid);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    if let Some(stderr) = child.stderr.take() {
        let name = job.name.clone();
        let json = logging::format() == Format::Json;
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logging::relay(&label(&line, &name, json));
                }
                let _ = done_tx.send(());
            })?;
    }
    let tx = tx.clone();
    std::thread::Builder::new()
        .name("wait".into())
        .spawn(move || {
            let status = child.wait();
            // Its last lines first (a program it left behind may hold the pipe: not long).
            let _ = done_rx.recv_timeout(Duration::from_secs(2));
            let _ = tx.send(Event::Exited { job: i, status });
        })?;
    Ok(Running {
        handle,
        pid,
        started: Timestamp::now(),
        clock: Instant::now(),
    })
}

/// A run's log line with its pipeline's name: `[name]` after the time and level of a human
/// line, a `pipeline` field in a JSON line.
fn label(line: &str, name: &str, json: bool) -> String {
    if json {
        if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(line) {
            map.insert("pipeline".into(), name.into());
            return serde_json::Value::Object(map).to_string();
        }
        return line.to_string();
    }
    // `{time} {LEVEL:<5} {message}` (logging::log).
    if let Some((time, rest)) = line.split_once(' ')
        && time.ends_with('Z')
        && time.starts_with(|c: char| c.is_ascii_digit())
        && let (Some(level), Some(message)) = (rest.get(..5), rest.get(6..))
        && level.trim_end().chars().all(|c| c.is_ascii_uppercase())
    {
        return format!("{time} {level} [{name}] {message}");
    }
    format!("[{name}] {line}")
}

/// A run ended: its outcome logged, and (unless the daemon is stopping) the next time.
/// `killed`: the daemon killed it after its wait.
fn ended(job: &mut Job, status: std::io::Result<ExitStatus>, log_next_run: bool, killed: bool) {
    let Some(r) = job.running.take() else { return };
    let took = format!("{:.1}s", r.clock.elapsed().as_secs_f64());
    let name = &job.name;
    match status {
        Err(e) => logging::error(
            None,
            &format!("pipeline `{name}`: lost track of run pid {}: {e}", r.pid),
        ),
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(0), _) => logging::info(
                None,
                &format!("pipeline `{name}`: run ended: ok, in {took}"),
            ),
            (Some(code), _) if code == i32::from(error::exit::LOCKED) => logging::warn(
                None,
                &format!(
                    "pipeline `{name}`: run not started (exit {code}): another run of it holds \
                     its lock (a manual `pipeline run`?)"
                ),
            ),
            (Some(code), _) if code > 128 => logging::warn(
                None,
                &format!("pipeline `{name}`: run stopped (exit {code}) after {took}"),
            ),
            (Some(code), _) => logging::error(
                None,
                &format!(
                    "pipeline `{name}`: run failed (exit {code}) after {took}; its log is above"
                ),
            ),
            (None, sig) => {
                let sig = sig.unwrap_or(0);
                logging::error(
                    None,
                    &format!("pipeline `{name}`: run killed by signal {sig} after {took}"),
                );
                record_killed(job, &r, sig, killed);
            }
        },
    }
    if log_next_run {
        log_next(job, Timestamp::now());
    }
}

fn on_signal(sig: i32, jobs: &[Job], stopping: &mut Option<Stopping>) {
    let name = signal_name(sig);
    let running: Vec<&Job> = jobs.iter().filter(|j| j.running.is_some()).collect();
    match stopping {
        None => {
            logging::warn(
                None,
                &format!(
                    "received {name}: starting no more runs; stopping {} running run(s) and \
                     waiting for them (at most {}s); send it again to make them exit at once",
                    running.len(),
                    STOP_WAIT.as_secs()
                ),
            );
            *stopping = Some(Stopping {
                signal: sig,
                at: Instant::now(),
                again: false,
                killed: Vec::new(),
            });
        }
        Some(s) => {
            logging::warn(
                None,
                &format!("received {name} again: the running runs exit at once"),
            );
            s.again = true;
        }
    }
    for job in running {
        if let Some(r) = &job.running {
            r.handle.signal(sig);
        }
    }
}

/// A run that died by a signal recorded nothing itself (it turns every stop signal it can
/// catch into an exit code after recording): the daemon records it as failed, so that
/// `pipeline status`, the metrics and the next run see it rather than the run before.
fn record_killed(job: &Job, r: &Running, sig: i32, by_daemon: bool) {
    let key = crate::lock::key(&job.name, &job.file);
    let why = if by_daemon {
        format!(
            "killed by the daemon (signal {sig}): the run did not stop within {}s of the stop \
             signal; it recorded nothing itself",
            STOP_WAIT.as_secs()
        )
    } else if sig == libc::SIGKILL {
        format!(
            "killed by signal {sig}, not sent by the daemon (the kernel's out-of-memory \
             killer, or a `kill -9`); it recorded nothing itself"
        )
    } else {
        format!("ended by signal {sig}; it recorded nothing itself")
    };
    // Whether it was a backup or a snapshot run is the engine's to say: the last record's.
    let mode = history::path(&key)
        .and_then(|path| history::read_file(&path))
        .ok()
        .and_then(|loaded| loaded.records.last().map(|last| last.mode.clone()))
        .unwrap_or_else(|| "backup".into());
    let record = history::Record {
        pipeline: job.name.clone(),
        file: std::fs::canonicalize(&job.file).unwrap_or_else(|_| job.file.clone()),
        started: r.started,
        ended: Timestamp::now(),
        outcome: history::Outcome::Failed,
        exit_code: u8::try_from(128 + sig).unwrap_or(u8::MAX),
        mode,
        artifact: None,
        size: None,
        sha256: None,
        sinks: Vec::new(),
        pruned: 0,
        snapshots: None,
        seconds: r.clock.elapsed().as_secs_f64(),
        error: Some(why),
    };
    crate::metrics::record_run(
        &key,
        record,
        job.metrics.as_ref(),
        &format!("pipeline `{}`: the killed run's", job.name),
    );
}

/// The runs still going [`STOP_WAIT`] after the first signal: killed.
fn kill_all(jobs: &mut [Job], s: &mut Stopping) {
    for job in jobs.iter() {
        if let Some(r) = &job.running
            && !s.killed.contains(&job.name)
        {
            logging::error(
                None,
                &format!(
                    "pipeline `{}`: its run (pid {}) did not stop within {}s: killing it",
                    job.name,
                    r.pid,
                    STOP_WAIT.as_secs()
                ),
            );
            r.handle.signal(libc::SIGKILL);
            s.killed.push(job.name.clone());
        }
    }
}

/// A duration for people: `6h26m`, `59s`.
fn humanize(d: jiff::SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_line_is_labelled_with_its_pipeline() {
        assert_eq!(
            label(
                "2026-12-01T19:33:21.123Z INFO  [sink local] stored",
                "nightly",
                false
            ),
            "2026-12-01T19:33:21.123Z INFO  [nightly] [sink local] stored"
        );
        assert_eq!(
            label("2026-12-01T19:33:21.123Z ERROR run failed: x", "n", false),
            "2026-12-01T19:33:21.123Z ERROR [n] run failed: x"
        );
        assert_eq!(label("thread panicked", "n", false), "[n] thread panicked");
        let json = label(r#"{"level":"info","message":"m"}"#, "n", true);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["pipeline"].as_str(), v["message"].as_str()),
            (Some("n"), Some("m"))
        );
        assert_eq!(label("not json", "n", true), "not json");
    }

    #[test]
    fn missed_times_run_once_and_a_clock_set_back_repeats_nothing() {
        let daily = Schedule::parse("0 2 * * *", jiff::tz::TimeZone::UTC).unwrap();
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let due = t("2026-12-02T02:00:00Z");
        // Not yet.
        let before = t("2026-12-02T01:59:00Z");
        assert_eq!(plan(&daily, Some(due), before, before), Plan::Wait);
        // On time: one run.
        assert_eq!(
            plan(&daily, Some(due), before, t("2026-12-02T02:00:00.1Z")),
            Plan::Run {
                due,
                missed_more: false
            }
        );
        // Asleep for three days: one run, saying later times were missed too; the daemon
        // then plans from now (the next 02:00), not from the missed ones.
        let woke = t("2026-12-05T09:00:00Z");
        assert_eq!(
            plan(&daily, Some(due), before, woke),
            Plan::Run {
                due,
                missed_more: true
            }
        );
        assert_eq!(daily.next_after(woke), Some(t("2026-12-06T02:00:00Z")));
        // Run at 02:00, then the clock goes back 30 minutes: the planned time (tomorrow)
        // stays, so 02:00 does not run twice.
        let tomorrow = t("2026-12-03T02:00:00Z");
        let back = t("2026-12-02T01:45:00Z");
        assert_eq!(
            plan(&daily, Some(tomorrow), t("2026-12-02T02:15:00Z"), back),
            Plan::Wait
        );
        // Back by a day (a clock that was wrong is fixed): plan anew from the new time.
        assert_eq!(
            plan(
                &daily,
                Some(tomorrow),
                t("2026-12-02T02:15:00Z"),
                t("2026-12-01T02:15:00Z")
            ),
            Plan::Replan
        );
    }

    #[test]
    fn durations_read_like_people_say_them() {
        let d = jiff::SignedDuration::from_secs;
        assert_eq!(humanize(d(59)), "59s");
        assert_eq!(humanize(d(6 * 3600 + 26 * 60 + 5)), "6h26m");
        assert_eq!(humanize(d(90)), "1m30s");
        assert_eq!(humanize(d(-3)), "0s");
        assert_eq!(humanize(d(3 * 86400 + 7200)), "3d2h");
    }
}
