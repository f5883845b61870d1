//! Running a snapshot pipeline: ask the source for its entities, compare them with the
//! latest snapshots in the first sink, and record what changed in every sink. Recording
//! one change pushed by an application (`pipeline snapshot record`) takes the same path.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::Value as Json;

use crate::bindings::snapshot_sink::exports::pipeline::plugin::snapshot_sink::ChangeSet;
use crate::cli::UsageError;
use crate::engine::Engine;
use crate::lock;
use crate::logging;
use crate::runner::{self, RunFailed};
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

pub fn run(engine: &Engine, p: &Prepared) -> Result<Recorded> {
    let started = Instant::now();
    let _lock = lock::acquire(&p.pipeline.name, &p.pipeline.file)?;
    runner::create_directories(p)?;
    let first = first_sink(p)?;
    let source = &p.source;
    let config = &source
        .component()
        .ok_or_else(|| anyhow!("stage `{}` is not a component", source.label()))?
        .config;
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
    for e in inventory.entities {
        let what = format!("{} {:?} ({})", e.entity_type, e.entity_name, e.entity_id);
        if !inventory.types.contains(&e.entity_type) {
            bail!(RunFailed(format!(
                "stage `{}` reported {what}, of a type it does not cover",
                source.label()
            )));
        }
        if !seen.insert((e.entity_type.clone(), e.entity_id.clone())) {
            bail!(RunFailed(format!(
                "stage `{}` reported {what} twice: ids must be unique within a type",
                source.label()
            )));
        }
        let data: Json = serde_json::from_str(&e.data).map_err(|err| {
            RunFailed(format!(
                "stage `{}`: the data of {what} is not JSON: {err}",
                source.label()
            ))
        })?;
        current.push(Current {
            entity_type: e.entity_type,
            entity_id: e.entity_id,
            entity_name: e.entity_name,
            data,
            user: e.user,
        });
    }
    let latest = SnapshotStore::open(engine, first)
        .and_then(|mut s| s.latest(&inventory.types))
        .map_err(|e| RunFailed(format!("{e:#}")))?;
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
    let mut recorded = record_all(engine, p, &found)?;
    recorded.seconds = started.elapsed().as_secs_f64();
    Ok(recorded)
}

/// Records one change an application reports, waiting for a running pull to end first.
pub fn record_one(engine: &Engine, p: &Prepared, snapshot: &Snapshot) -> Result<Recorded> {
    let started = Instant::now();
    check_type(&snapshot.entity_type).map_err(UsageError)?;
    let _lock = lock::acquire_waiting(&p.pipeline.name, &p.pipeline.file, RECORD_WAIT)?;
    runner::create_directories(p)?;
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
    let mut recorded = Recorded {
        files: snapshots.iter().map(Snapshot::file_name).collect(),
        ..Default::default()
    };
    if snapshots.is_empty() {
        logging::info(None, "nothing changed: nothing recorded");
        return Ok(recorded);
    }
    let mut failures = Vec::new();
    for sink in &p.sinks {
        match record_in(engine, sink, snapshots) {
            Ok(ids) => {
                logging::info(
                    Some(&sink.label()),
                    &format!(
                        "recorded {} snapshot(s){}",
                        snapshots.len(),
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
    if !failures.is_empty() {
        bail!(RunFailed(failures.join("; ")));
    }
    Ok(recorded)
}

fn record_in(engine: &Engine, sink: &Ready, snapshots: &[Snapshot]) -> Result<Vec<String>> {
    let mut store = SnapshotStore::open(engine, sink)?;
    let mut sets: Vec<ChangeSet> = Vec::with_capacity(snapshots.len());
    for s in snapshots {
        let name = match store.put(s) {
            Ok(name) => name,
            Err(e) => {
                // Files stored but never committed would count as recorded next time.
                for set in &sets {
                    for f in &set.files {
                        let _ = store.remove(f);
                    }
                }
                return Err(e.context(format!(
                    "the {} snapshot file(s) stored before were removed so the next run records them again",
                    sets.len()
                )));
            }
        };
        logging::debug(Some(&sink.label()), &format!("stored {name}"));
        sets.push(ChangeSet {
            files: vec![name],
            message: s.summary(),
        });
    }
    let Some(c) = sink.component() else {
        return Ok(vec![]);
    };
    if !component::exports(engine, &c.component, "snapshot-sink") {
        return Ok(vec![]);
    }
    let mut inst = component::snapshot_sink(engine, sink)
        .map_err(|e| anyhow!("stage `{}` failed: {e}", sink.label()))?;
    inst.commit(&c.config, &sets).map_err(|e| {
        anyhow!(
            "stage `{}` stored {} snapshot file(s) but did not commit them: {e}",
            sink.label(),
            sets.len()
        )
    })
}
