//! Running a snapshot pipeline: ask the source for its entities, compare them with the
//! latest snapshots in the first sink, and record what changed in every sink. Recording
//! one change pushed by an application (`pipeline snapshot record`) takes the same path.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::Value as Json;

use crate::bindings::snapshot_sink::exports::pipeline::plugin::snapshot_sink::ChangeSet;
use crate::engine::Engine;
use crate::error::{RunFailed, UsageError};
use crate::lock;
use crate::logging;
use crate::stages::component;
use crate::stages::{Prepared, Ready};

use super::changes::{self, Current};
use super::document::{Snapshot, check_type};
use super::store::SnapshotStore;

/// What a snapshot run did.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The file name of each recorded snapshot.
    pub files: Vec<String>,
    /// The commit ids each snapshot sink made.
    pub commits: Vec<(String, Vec<String>)>,
    pub seconds: f64,
}

/// How long `pipeline snapshot record` waits for a running pull of the same pipeline.
const RECORD_WAIT: Duration = Duration::from_secs(120);

/// `on_start` is called once the pull holds the pipeline's lock, before anything is written.
pub fn run(engine: &Engine, p: &Prepared, on_start: &dyn Fn()) -> Result<Recorded> {
    let started = Instant::now();
    let _lock = lock::acquire(&p.pipeline.name, &p.pipeline.file)?;
    on_start();
    crate::stages::create_directories(p)?;
    let first = first_sink(p)?;
    let source = &p.source;
    let config = &source.run.config;
    let mut inst = component::snapshot_source(engine, source)
        .map_err(|e| RunFailed(format!("stage `{}` failed: {e}", source.label())))?;
    let inventory = inst
        .entities(config)
        .map_err(|e| RunFailed(format!("stage `{}` failed: {e}", source.label())))?;
    let mut current = Vec::with_capacity(inventory.entities.len());
    let mut seen = std::collections::HashSet::new();
    for t in &inventory.types {
        check_type(t).map_err(|e| RunFailed(format!("stage `{}`: {e}", source.label())))?;
    }
    // One entity that cannot be recorded must not stop the others: it is left out of this
    // run (neither changed nor deleted), named at the end, and the run fails.
    let mut failures: Vec<String> = Vec::new();
    let mut skipped: std::collections::HashSet<(String, String)> = Default::default();
    for e in inventory.entities {
        let what = format!(
            "{} {:?} ({})",
            e.entity_type,
            shorten(&e.entity_name),
            shorten(&e.entity_id)
        );
        if !inventory.types.contains(&e.entity_type) {
            failures.push(format!(
                "stage `{}` reported {what}, of a type it does not cover",
                source.label()
            ));
            continue;
        }
        if !seen.insert((e.entity_type.clone(), e.entity_id.clone())) {
            failures.push(format!(
                "stage `{}` reported {what} twice: ids must be unique within a type",
                source.label()
            ));
            skipped.insert((e.entity_type, e.entity_id));
            continue;
        }
        let data: Json = match serde_json::from_str(&e.data) {
            Ok(d) => d,
            Err(err) => {
                failures.push(format!(
                    "stage `{}`: the data of {what} is not JSON: {err}",
                    source.label()
                ));
                skipped.insert((e.entity_type, e.entity_id));
                continue;
            }
        };
        current.push(Current {
            entity_type: e.entity_type,
            entity_id: e.entity_id,
            entity_name: e.entity_name,
            data,
            user: e.user,
        });
    }
    current.retain(|c| !skipped.contains(&(c.entity_type.clone(), c.entity_id.clone())));
    let mut latest = SnapshotStore::open(engine, first)
        .and_then(|mut s| s.latest(&inventory.types))
        .map_err(|e| RunFailed(format!("{e:#}")))?;
    // A skipped entity is still there: not reporting it must not record it as deleted.
    latest.retain(|s| !skipped.contains(&(s.entity_type.clone(), s.entity_id.clone())));
    let found = changes::detect(&latest, &current, &inventory.types, jiff::Timestamp::now());
    logging::info(
        None,
        &format!(
            "pipeline `{}`: {} entities, {} known, {} changed",
            p.pipeline.name,
            current.len(),
            latest.len(),
            found.len()
        ),
    );
    let recorded = record_all(engine, p, &found);
    for f in &failures {
        logging::error(None, f);
    }
    let mut recorded = match (recorded, failures.len()) {
        (Ok(r), 0) => r,
        (Ok(r), n) => bail!(RunFailed(format!(
            "{n} entit{} could not be recorded ({} snapshot(s) of the others were): {}",
            if n == 1 { "y" } else { "ies" },
            r.files.len(),
            list_failures(&failures)
        ))),
        (Err(e), 0) => return Err(e),
        (Err(e), n) => bail!(RunFailed(format!(
            "{e:#}; and {n} entit{} could not be recorded: {}",
            if n == 1 { "y" } else { "ies" },
            list_failures(&failures)
        ))),
    };
    recorded.seconds = started.elapsed().as_secs_f64();
    Ok(recorded)
}

/// A name or id as an error quotes it: whole up to 80 characters, then cut with `…`.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}

/// Records one change an application reports, waiting for a running pull to end first.
pub fn record_one(engine: &Engine, p: &Prepared, snapshot: &Snapshot) -> Result<Recorded> {
    let started = Instant::now();
    check_type(&snapshot.entity_type).map_err(UsageError)?;
    let _lock = lock::acquire_waiting(&p.pipeline.name, &p.pipeline.file, RECORD_WAIT)?;
    crate::stages::create_directories(p)?;
    let mut recorded = record_all(engine, p, std::slice::from_ref(snapshot))?;
    recorded.seconds = started.elapsed().as_secs_f64();
    Ok(recorded)
}

fn first_sink(p: &Prepared) -> Result<&Ready> {
    p.sinks.first().ok_or_else(|| {
        anyhow!(UsageError(format!(
            "pipeline `{}` has no sink to record snapshots in",
            p.pipeline.name
        )))
    })
}

/// Stores every snapshot in every sink, then lets each snapshot sink commit them (one
/// change set per snapshot; a sink may combine them). A failing sink does not stop the
/// others; the run fails if any failed.
fn record_all(engine: &Engine, p: &Prepared, snapshots: &[Snapshot]) -> Result<Recorded> {
    let mut recorded = Recorded::default();
    if snapshots.is_empty() {
        logging::info(None, "nothing changed: nothing recorded");
        return Ok(recorded);
    }
    let mut failures = Vec::new();
    let mut stored_everywhere: Vec<bool> = vec![true; snapshots.len()];
    for sink in &p.sinks {
        match record_in(engine, sink, snapshots) {
            Ok((ids, stored, refused)) => {
                for (i, e) in refused {
                    stored_everywhere[i] = false;
                    let s = &snapshots[i];
                    let msg = format!(
                        "the {} snapshot of {} {:?} ({}) could not be stored: {e:#}",
                        s.action,
                        s.entity_type,
                        shorten(&s.entity_name),
                        shorten(&s.entity_id)
                    );
                    logging::error(Some(&sink.label()), &msg);
                    failures.push(msg);
                }
                logging::info(
                    Some(&sink.label()),
                    &format!(
                        "recorded {} snapshot(s){}",
                        stored,
                        if ids.is_empty() {
                            String::new()
                        } else {
                            format!(" in {} commit(s)", ids.len())
                        }
                    ),
                );
                recorded.commits.push((sink.label(), ids));
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    recorded.files = snapshots
        .iter()
        .zip(&stored_everywhere)
        .filter(|(_, ok)| **ok)
        .map(|(s, _)| s.file_name())
        .collect();
    if !failures.is_empty() {
        bail!(RunFailed(list_failures(&failures)));
    }
    Ok(recorded)
}

/// The commits made, how many snapshots were stored, and the ones that could not be (by
/// index, with why): one snapshot that a sink refuses does not stop the others.
type InSink = (Vec<String>, usize, Vec<(usize, anyhow::Error)>);

fn record_in(engine: &Engine, sink: &Ready, snapshots: &[Snapshot]) -> Result<InSink> {
    let mut store = SnapshotStore::open(engine, sink)?;
    let mut sets: Vec<ChangeSet> = Vec::with_capacity(snapshots.len());
    let mut refused = Vec::new();
    for (i, s) in snapshots.iter().enumerate() {
        let name = match store.put(s) {
            Ok(name) => name,
            Err(e) => {
                refused.push((i, e));
                continue;
            }
        };
        logging::debug(Some(&sink.label()), &format!("stored {name}"));
        sets.push(ChangeSet {
            files: vec![name],
            message: s.summary(),
        });
    }
    let stored = sets.len();
    let c = &sink.run;
    if sets.is_empty() || !component::exports(engine, &c.component, "snapshot-sink") {
        return Ok((vec![], stored, refused));
    }
    let mut inst = component::snapshot_sink(engine, sink)
        .map_err(|e| anyhow!("stage `{}` failed: {e}", sink.label()))?;
    let ids = inst.commit(&c.config, &sets).map_err(|e| {
        anyhow!(
            "stage `{}` stored {} snapshot file(s) but did not commit them: {e}",
            sink.label(),
            sets.len()
        )
    })?;
    Ok((ids, stored, refused))
}

/// The failures of a run, the first few in full: one bad sink can refuse every snapshot.
fn list_failures(failures: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = failures
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if failures.len() > SHOWN {
        text.push_str(&format!(
            "; and {} more (see the log)",
            failures.len() - SHOWN
        ));
    }
    text
}
