//! `[[notify]]`: telling a pipeline's notifiers of a run's start and end.
//!
//! Each notifier is a component (`wit/notifier.wit`) with its stage's own grants and time
//! limit (30 s unless its `limits.timeout` says otherwise). The notifiers of one event run
//! at once, each on its own thread, and the run waits for them. Whatever they do — fail,
//! hang, trap — is a warning in the log: the run's outcome, history and exit code are
//! decided before and never change.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::NotifyOn;
use crate::contract::{Event, RunReport};
use crate::engine::Engine;
use crate::history::{Outcome, Record};
use crate::logging;
use crate::stages::{Prepared, component};

/// The report of a run that took its lock and begins.
pub fn started(p: &Prepared, started: jiff::Timestamp) -> RunReport {
    RunReport {
        pipeline: p.pipeline.name.clone(),
        event: Event::Start,
        mode: mode(p).into(),
        hostname: crate::machine::host_name().unwrap_or_default(),
        started_ms: millis(started),
        duration_ms: None,
        artifact: None,
        size: None,
        sha256: None,
        sinks: Vec::new(),
        pruned: 0,
        snapshots: None,
        error: None,
        exit_code: None,
    }
}

/// The report of a run that ended, from its history record.
pub fn ended(r: &Record) -> RunReport {
    let event = match r.outcome {
        Outcome::Ok => Event::Success,
        Outcome::Failed | Outcome::Stopped => Event::Failure,
    };
    RunReport {
        pipeline: r.pipeline.clone(),
        event,
        mode: r.mode.clone(),
        hostname: crate::machine::host_name().unwrap_or_default(),
        started_ms: millis(r.started),
        duration_ms: Some((r.seconds * 1000.0).round() as u64),
        artifact: r.artifact.clone(),
        size: r.size,
        sha256: r.sha256.clone(),
        sinks: r.sinks.clone(),
        pruned: u32::try_from(r.pruned).unwrap_or(u32::MAX),
        snapshots: r.snapshots.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        error: r.error.clone(),
        exit_code: Some(r.exit_code),
    }
}

/// Tells `report` to every notifier whose `on` list holds its event, all at once, and
/// waits for them, each at most its time limit: one that has not answered by then is
/// named in the log and left behind (it ends with the process). Never fails: a notifier's
/// failure is logged.
pub fn send(engine: &Engine, p: &Prepared, report: &RunReport) {
    let on = match report.event {
        Event::Start => NotifyOn::Start,
        Event::Success => NotifyOn::Success,
        Event::Failure => NotifyOn::Failure,
    };
    let event = on.as_str();
    let (tx, rx) = mpsc::channel();
    let mut waiting: Vec<String> = Vec::new();
    let mut until = Instant::now();
    for n in p.notifiers.iter().filter(|n| n.on.contains(&on)) {
        let label = n.ready.label();
        let mut inst = match component::notifier(engine, &n.ready) {
            Ok(inst) => inst,
            Err(e) => {
                failed(&label, event, &e.to_string());
                continue;
            }
        };
        let (config, report, tx) = (n.ready.run.config.clone(), report.clone(), tx.clone());
        let name = label.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("notify {label}"))
            .spawn(move || {
                let r = inst.notify(&config, &report);
                drop(inst);
                _ = tx.send((name, r));
            });
        match spawned {
            Ok(_) => {
                // The plugin traps at its deadline; the host waits a moment longer.
                until = until.max(Instant::now() + n.ready.stage.limits.timeout + SLACK);
                waiting.push(label);
            }
            Err(e) => failed(&label, event, &format!("cannot start a thread: {e}")),
        }
    }
    drop(tx);
    while !waiting.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((label, r)) => {
                waiting.retain(|w| *w != label);
                match r {
                    Ok(()) => logging::debug(Some(&label), &format!("told of the run's {event}")),
                    Err(e) => failed(&label, event, &e.to_string()),
                }
            }
            Err(_) => {
                for label in waiting.drain(..) {
                    failed(
                        &label,
                        event,
                        "it did not answer within its time limit (limits.timeout)",
                    );
                }
            }
        }
    }
}

/// How much longer than a notifier's time limit the host waits for its answer.
const SLACK: Duration = Duration::from_secs(2);

fn failed(label: &str, event: &str, why: &str) {
    logging::warn(
        Some(label),
        &format!("could not tell of the run's {event}: {why} (the run's outcome is unchanged)"),
    );
}

fn mode(p: &Prepared) -> &'static str {
    match p.mode {
        crate::stages::Mode::Snapshot => "snapshot",
        crate::stages::Mode::Backup => "backup",
    }
}

fn millis(t: jiff::Timestamp) -> u64 {
    u64::try_from(t.as_millisecond()).unwrap_or(0)
}
