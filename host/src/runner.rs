//! One run of a pipeline: lock, stream source → transforms → every sink at once, record a
//! checksum manifest beside each stored backup, then prune — only if every sink succeeded.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::bindings::{ArtifactMeta, PluginError, Stored};
use crate::engine::Engine;
use crate::error::{self, Blame, RunFailed, StageFailure, UsageError};
use crate::lock;
use crate::logging;
use crate::naming;
use crate::pipe::{self, PipeReader, PipeWriter, Witness};
use crate::retention::{self, Backup};
use crate::signing::{self, Signer};
use crate::stages::component::{self, StageError};
use crate::stages::{Prepared, Ready};

/// Suffix of the checksum manifest written beside each backup, in `sha256sum` format so
/// that `sha256sum -c backup-….sql.zst.sha256` checks it without this tool.
pub const MANIFEST_SUFFIX: &str = ".sha256";

/// The line after the checksum in a manifest that names the pipeline that made the backup.
/// `sha256sum -c` (even with `--strict`) skips lines starting with `#`, so the manifest still
/// checks with the standard tool; the first line stays exactly `<sha256>  <name>`.
pub const OWNER_PREFIX: &str = "# pipeline: ";

/// The name of a backup's manifest signature: `NAME.sha256.sig`.
pub fn signature_name(backup: &str) -> String {
    format!("{backup}{MANIFEST_SUFFIX}{}", signing::SIGNATURE_SUFFIX)
}

/// The label of an artifact's meta that says until when the retention policy means to keep
/// it (milliseconds since the Unix epoch, UTC; [`retention::retain_until`]), set when the
/// policy bounds it in time. The `s3` sink with `object_lock` locks the object until then.
pub const RETAIN_UNTIL_LABEL: &str = "retain-until-ms";

/// The current time, or `PIPELINE_TEST_NOW` (an RFC 3339 time) when set. That variable exists
/// only so tests can play a run with a wrong clock; it is announced loudly every time.
pub fn now() -> jiff::Timestamp {
    static ANNOUNCED: OnceLock<()> = OnceLock::new();
    let real = jiff::Timestamp::now();
    let Some(v) = std::env::var_os("PIPELINE_TEST_NOW") else {
        return real;
    };
    match v.to_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
        Some(t) => {
            ANNOUNCED.get_or_init(|| {
                logging::warn(
                    None,
                    &format!(
                        "PIPELINE_TEST_NOW is set: using {t} as the current time (a test-only \
                         variable; unset it outside tests)"
                    ),
                );
            });
            t
        }
        None => {
            ANNOUNCED.get_or_init(|| {
                logging::warn(
                    None,
                    "PIPELINE_TEST_NOW is set but is not an RFC 3339 time; using the clock",
                );
            });
            real
        }
    }
}

/// Logs `message` as a warning once per process (one run), however often it comes up.
fn warn_once(stage: Option<&str>, message: String) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !seen.contains(&message) {
        logging::warn(stage, &message);
        seen.push(message);
    }
}

/// What a successful run did.
#[derive(Debug)]
pub struct Outcome {
    pub artifact: String,
    pub size: u64,
    pub sha256: String,
    pub sinks: Vec<String>,
    pub pruned: usize,
    pub seconds: f64,
}

/// The checksum the fan-out computed, available to sinks once the stream has ended.
type Digest32 = Arc<OnceLock<(String, u64)>>;

pub fn run(engine: &Engine, p: &Prepared) -> Result<Outcome> {
    let started = Instant::now();
    // The signing key is read (and checked against the allowed signers, if any) before
    // anything is written: a key that cannot sign, or whose signatures `verify` would
    // refuse, is a configuration error.
    let signer = signing::run_signer(&p.pipeline)?;
    if let Some(s) = &signer {
        logging::info(
            None,
            &format!(
                "manifests are signed with {} (namespace {})",
                s.fingerprint(),
                signing::NAMESPACE
            ),
        );
    }
    let _lock = lock::acquire(&p.pipeline.name, &p.pipeline.file)?;
    create_directories(p)?;

    let now = now();
    let name = p.names.render(now);
    let mut labels = vec![
        ("pipeline".into(), p.pipeline.name.clone()),
        (
            "pipeline-id".into(),
            lock::key(&p.pipeline.name, &p.pipeline.file),
        ),
    ];
    // How long retention means to keep this backup: sinks that lock objects lock it until then.
    if let Some(until) = p
        .pipeline
        .retention
        .as_ref()
        .and_then(|policy| retention::retain_until(policy, now))
    {
        labels.push((
            RETAIN_UNTIL_LABEL.into(),
            until.as_millisecond().to_string(),
        ));
    }
    let meta = ArtifactMeta {
        name: name.clone(),
        content_type: p
            .transforms
            .last()
            .map_or(&p.source.plan, |t| &t.plan)
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into()),
        created_ms: u64::try_from(now.as_millisecond()).unwrap_or(0),
        size: None,
        labels,
    };
    logging::info(
        None,
        &format!(
            "pipeline `{}`: writing {name} to {}",
            p.pipeline.name,
            sink_names(p)
        ),
    );

    let results = stream(engine, p, &meta, signer.as_ref());
    let failures: Vec<StageFailure> = results
        .iter()
        .filter_map(|(label, r, blame)| {
            r.as_ref().err().map(|e| StageFailure {
                stage: label.clone(),
                message: e.clone(),
                blame: *blame,
            })
        })
        .collect();
    if !failures.is_empty() {
        let shown = error::root_causes(&failures);
        for f in &failures {
            if !shown.iter().any(|s| s.stage == f.stage) {
                logging::debug(
                    Some(&f.stage),
                    &format!("stopped as a consequence: {}", f.message),
                );
            }
        }
        let kept: Vec<&str> = results
            .iter()
            .filter(|(l, r, _)| r.is_ok() && p.sinks.iter().any(|s| &s.label() == l))
            .map(|(l, _, _)| l.as_str())
            .collect();
        let mut msg = shown
            .iter()
            .map(|f| format!("stage `{}` failed: {}", f.stage, f.message))
            .collect::<Vec<_>>()
            .join("; ");
        if kept.is_empty() {
            msg.push_str(&format!("; no sink kept {name}"));
        } else {
            msg.push_str(&format!("; {name} was stored by {} only", kept.join(", ")));
        }
        msg.push_str("; nothing was pruned");
        return Err(RunFailed(msg).into());
    }

    let (sha256, size) = results
        .iter()
        .find_map(|(_, r, _)| r.as_ref().ok().and_then(|d| d.clone()))
        .ok_or_else(|| anyhow!("internal error: no checksum recorded"))?;
    logging::info(
        None,
        &format!(
            "stored {name} ({size} bytes, sha256 {sha256}) in {}",
            sink_names(p)
        ),
    );

    let mut pruned = 0;
    match &p.pipeline.retention {
        Some(policy) => {
            for sink in &p.sinks {
                pruned += prune(engine, p, sink, policy, now, &name).map_err(|e| {
                    RunFailed(format!(
                        "{name} was stored, but pruning sink `{}` failed: {e:#}",
                        sink.stage.name
                    ))
                })?;
            }
        }
        // Nothing to prune, but list anyway: the listing warns about backups dated in the
        // future and about other pipelines sharing this sink's names.
        None => {
            for sink in &p.sinks {
                if let Err(e) = list(engine, p, sink) {
                    logging::warn(
                        Some(&sink.label()),
                        &format!("{name} was stored, but listing the sink failed: {e:#}"),
                    );
                }
            }
        }
    }
    Ok(Outcome {
        artifact: name,
        size,
        sha256,
        sinks: p.sinks.iter().map(|s| s.stage.name.clone()).collect(),
        pruned,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn sink_names(p: &Prepared) -> String {
    p.sinks
        .iter()
        .map(|s| s.stage.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stage's label, result, and whether a failure was its own.
type StageResult = (String, Result<Option<(String, u64)>, String>, Blame);

/// Runs every stage on its own thread, linked by bounded pipes; returns each stage's result
/// in chain order (sinks' Ok carries the checksum).
fn stream(
    engine: &Engine,
    p: &Prepared,
    meta: &ArtifactMeta,
    signer: Option<&Signer>,
) -> Vec<StageResult> {
    let digest: Digest32 = Arc::new(OnceLock::new());
    std::thread::scope(|scope| {
        // One witness per stage: what its pipe ends saw tells whether its failure is its own.
        let mut handles = Vec::new();
        let first = p
            .transforms
            .first()
            .map_or("sinks".to_string(), |t| t.stage.name.clone());
        let source = &p.source;
        let own = Witness::new();
        // The witness of the stage that reads `r`: the next transform, or the fan-out.
        let mut next = Witness::new();
        let (w, mut r) = pipe::pipe_between(&format!("source → {first}"), &own, &next);
        handles.push((
            source.label(),
            own,
            scope.spawn(move || run_source(engine, source, meta, w).map(|_| None)),
        ));

        for (i, t) in p.transforms.iter().enumerate() {
            let after = p
                .transforms
                .get(i + 1)
                .map_or("sinks".to_string(), |n| n.stage.name.clone());
            let own = std::mem::take(&mut next);
            let (w, next_r) =
                pipe::pipe_between(&format!("{} → {after}", t.stage.name), &own, &next);
            let input = std::mem::replace(&mut r, next_r);
            handles.push((
                t.label(),
                own,
                scope.spawn(move || t.encode(engine, input, w).map(|_| None)),
            ));
        }

        let fan = next;
        let mut sink_writers = Vec::new();
        for s in &p.sinks {
            let own = Witness::new();
            let (w, sr) = pipe::pipe_between(&format!("fan-out → {}", s.stage.name), &fan, &own);
            sink_writers.push((s.stage.name.clone(), w));
            let d = digest.clone();
            handles.push((
                s.label(),
                own,
                scope.spawn(move || run_sink(engine, s, meta, sr, &d, signer)),
            ));
        }
        let d = digest.clone();
        handles.push((
            "fan-out".into(),
            fan,
            scope.spawn(move || fan_out(r, sink_writers, &d).map(|_| None)),
        ));

        handles
            .into_iter()
            .map(|(label, witness, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(format!("stage `{label}` panicked")));
                if let Err(e) = &r {
                    logging::debug(Some(&label), &format!("failed: {e}"));
                }
                let blame = witness.blame(&label);
                (label, r, blame)
            })
            .collect()
    })
}

fn stage_err(e: StageError) -> String {
    e.to_string()
}

fn run_source(
    engine: &Engine,
    s: &Ready,
    meta: &ArtifactMeta,
    out: PipeWriter,
) -> Result<(), String> {
    component::source(engine, s)
        .and_then(|i| i.dump(&s.run.config, meta, out))
        .map_err(stage_err)
}

/// Stores the artifact, then its manifest, then (with a signer) the manifest's signature.
/// Each is written only after the one before is complete, so an artifact without a
/// manifest was never finished, and a signature always covers a whole manifest: it is
/// made from the manifest's final text, which exists only once the stream has ended.
fn run_sink(
    engine: &Engine,
    s: &Ready,
    meta: &ArtifactMeta,
    input: PipeReader,
    digest: &Digest32,
    signer: Option<&Signer>,
) -> Result<Option<(String, u64)>, String> {
    let c = &s.run;
    let mut inst = component::sink(engine, s).map_err(stage_err)?;
    let stored: Stored = inst.put(&c.config, meta, input).map_err(stage_err)?;
    let (sha, size) = digest
        .get()
        .cloned()
        .ok_or("the stream ended without a checksum")?;
    if stored.size != size {
        return Err(format!(
            "stored {} bytes of {} but {size} were sent",
            stored.size, meta.name
        ));
    }
    // Which pipeline made it: retention deletes only its own pipeline's backups.
    let owner = meta
        .labels
        .iter()
        .find(|(k, _)| k == "pipeline")
        .map(|(_, v)| format!("{OWNER_PREFIX}{v}\n"))
        .unwrap_or_default();
    let manifest = format!("{sha}  {}\n{owner}", meta.name);
    let mmeta = ArtifactMeta {
        name: format!("{}{MANIFEST_SUFFIX}", meta.name),
        content_type: "text/plain".into(),
        size: Some(manifest.len() as u64),
        ..meta.clone()
    };
    inst.put_bytes(&c.config, &mmeta, Bytes::from(manifest.clone()))
        .map_err(|e| {
            format!(
                "{} was stored but its checksum manifest was not: {}",
                meta.name,
                stage_err(e)
            )
        })?;
    if let Some(signer) = signer {
        let signature = signer.sign(manifest.as_bytes())?;
        let smeta = ArtifactMeta {
            name: signature_name(&meta.name),
            content_type: "text/plain".into(),
            size: Some(signature.len() as u64),
            ..meta.clone()
        };
        inst.put_bytes(&c.config, &smeta, Bytes::from(signature))
            .map_err(|e| {
                format!(
                    "{} and its manifest were stored but the manifest's signature was not: {}",
                    meta.name,
                    stage_err(e)
                )
            })?;
    }
    logging::info(
        Some(&s.label()),
        &format!("stored {} ({size} bytes)", meta.name),
    );
    Ok(Some((sha, size)))
}

/// Creates the directories the stages' plans asked to exist before a run.
pub fn create_directories(p: &Prepared) -> Result<(), RunFailed> {
    for (stage, c) in p.components() {
        for dir in &c.grants.filesystem.create {
            crate::capabilities::filesystem::create(dir).map_err(|e| {
                RunFailed(format!(
                    "stage `{}`: cannot create directory {}: {e}",
                    stage.label(),
                    dir.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// Copies the last stage's output to every sink, hashing it on the way. A sink that stops
/// does not stop the others; the stream ends cleanly for the sinks only if it ended cleanly here.
fn fan_out(
    mut input: PipeReader,
    mut sinks: Vec<(String, PipeWriter)>,
    digest: &Digest32,
) -> Result<(), String> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match input.recv_blocking() {
            Ok(Some(chunk)) => {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                sinks.retain(|(_, w)| w.send_blocking(chunk.clone()).is_ok());
                if sinks.is_empty() {
                    return Err(pipe::EVERY_SINK.to_string());
                }
            }
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let _ = digest.set((hex::encode(hasher.finalize()), size));
    for (_, w) in sinks {
        let _ = w.finish();
    }
    Ok(())
}

/// Who made a backup, as its manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This pipeline: retention may delete it.
    This,
    /// Another pipeline (named) writing the same names to the same place: never touched.
    Other(String),
    /// A manifest without an owner line: made before owners were recorded, or by another
    /// tool. Never deleted; restored and verified by default, as before.
    Unrecorded,
    /// No manifest at all: the run that wrote it did not finish. Never deleted.
    Unfinished,
}

/// A backup as listed from a sink.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub created: jiff::Timestamp,
    /// The backup as the sink listed it: what its `get` and `delete` are handed.
    pub stored: Stored,
    /// Its checksum manifest as the sink listed it, if there is one.
    pub manifest: Option<Stored>,
    /// The manifest's signature as the sink listed it, if there is one.
    pub signature: Option<Stored>,
    pub owner: Owner,
    /// Dated more than [`retention::FUTURE_TOLERANCE`] after now: never chosen by default.
    pub future: bool,
}

impl Listed {
    pub fn has_manifest(&self) -> bool {
        self.manifest.is_some()
    }

    /// Whether `restore`/`verify` may choose it without being given its name: not another
    /// pipeline's and not dated in the future.
    pub fn chosen_by_default(&self) -> bool {
        !self.future && !matches!(self.owner, Owner::Other(_))
    }
}

/// The owner a manifest names: the first `# pipeline: NAME` line after the checksum line.
pub fn manifest_owner(text: &str) -> Option<&str> {
    text.lines()
        .skip(1)
        .find_map(|l| l.strip_prefix(OWNER_PREFIX))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Every backup in one sink named like this pipeline's (other files are never returned),
/// newest first, with who made it. Warns about backups dated in the future and, once per
/// run, about other pipelines' backups under the same names.
pub fn list(engine: &Engine, p: &Prepared, sink: &Ready) -> Result<Vec<Listed>> {
    let c = &sink.run;
    let now = now();
    let mut inst = component::sink(engine, sink)?;
    let stored = inst
        .list(&c.config, p.names.prefix())
        .map_err(|e| anyhow!("{}", stage_err(e)))?;
    let manifests: std::collections::HashMap<&str, &Stored> = stored
        .iter()
        .filter_map(|s| s.name.strip_suffix(MANIFEST_SUFFIX).map(|b| (b, s)))
        .collect();
    let signatures: std::collections::HashMap<&str, &Stored> = stored
        .iter()
        .filter_map(|s| {
            s.name
                .strip_suffix(signing::SIGNATURE_SUFFIX)
                .and_then(|m| m.strip_suffix(MANIFEST_SUFFIX))
                .map(|b| (b, s))
        })
        .collect();
    let mut out = Vec::new();
    for s in &stored {
        let Some(created) = p.names.matches(&s.name) else {
            continue;
        };
        let manifest = manifests.get(s.name.as_str()).map(|m| (*m).clone());
        let owner = match &manifest {
            Some(m) => read_owner(&mut inst, &c.config, m, &p.pipeline.name)
                .map_err(|e| anyhow!("sink `{}`: {e}", sink.stage.name))?,
            None => Owner::Unfinished,
        };
        out.push(Listed {
            name: s.name.clone(),
            size: s.size,
            created,
            stored: s.clone(),
            manifest,
            signature: signatures.get(s.name.as_str()).map(|m| (*m).clone()),
            owner,
            future: retention::is_future(created, now),
        });
    }
    out.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));

    let future: Vec<&str> = out
        .iter()
        .filter(|l| l.future && !matches!(l.owner, Owner::Other(_)))
        .map(|l| l.name.as_str())
        .collect();
    if !future.is_empty() {
        warn_once(
            Some(&sink.label()),
            format!(
                "{} dated more than {} minutes after now ({}): a run with a wrong clock made it, \
                 or it was copied here; it is never restored or verified unless named with \
                 --backup, and retention keeps it; check the clock, then delete it by hand",
                future.join(", "),
                retention::FUTURE_TOLERANCE.as_mins(),
                naming::format_time(now)
            ),
        );
    }
    let mut others: Vec<&str> = out
        .iter()
        .filter_map(|l| match &l.owner {
            Owner::Other(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        let count = out
            .iter()
            .filter(|l| matches!(l.owner, Owner::Other(_)))
            .count();
        warn_once(
            Some(&sink.label()),
            format!(
                "this sink also holds {count} backup(s) named like pipeline `{}`'s ({}) that \
                 pipeline(s) {} made; they are never pruned, restored or verified by this \
                 pipeline, but sharing names is fragile: give each pipeline its own directory, \
                 prefix or `artifact` template",
                p.pipeline.name,
                p.names.render(now),
                others
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(out)
}

/// Reads a backup's `manifest` for its owner.
fn read_owner(
    inst: &mut component::Instance<crate::contract::Sink>,
    config: &str,
    manifest: &Stored,
    this: &str,
) -> Result<Owner> {
    let manifest_name = &manifest.name;
    match inst.get_bytes(config, manifest, 4096) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            Ok(match manifest_owner(&text) {
                Some(o) if o == this => Owner::This,
                Some(o) => Owner::Other(o.to_string()),
                None => Owner::Unrecorded,
            })
        }
        // Deleted since the listing.
        Err(StageError::Plugin(PluginError::NotFound(_))) => Ok(Owner::Unfinished),
        Err(e) => Err(anyhow!("reading {manifest_name}: {}", stage_err(e))),
    }
}

/// What an unfinished write left in a sink: a partial file or an upload marker.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub name: String,
    pub size: u64,
    /// This pipeline's (its hash is in the name): its next run removes it.
    pub ours: bool,
}

/// The short hash of a pipeline's [lock key](lock::key) that sinks put in partial files and
/// upload markers (FNV-1a, 32 bits). The guest SDK's `artifact::owner_hash` computes the
/// same from the `pipeline-id` label; both test the same vectors, so they cannot drift.
pub fn owner_tag(id: &str) -> String {
    let h = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

/// Partial files and upload markers of names like this pipeline's backups, as the sink lists
/// them for a prefix starting with `.` (sinks that keep none list nothing).
pub fn leftovers(engine: &Engine, p: &Prepared, sink: &Ready) -> Result<Vec<Leftover>> {
    let c = &sink.run;
    let tag = owner_tag(&lock::key(&p.pipeline.name, &p.pipeline.file));
    let mut inst = component::sink(engine, sink)?;
    let stored = inst
        .list(&c.config, &format!(".{}", p.names.prefix()))
        .map_err(|e| anyhow!("{}", stage_err(e)))?;
    let mut out: Vec<Leftover> = stored
        .into_iter()
        .filter(|s| s.name.contains(".partial-") || s.name.contains(".upload-"))
        .map(|s| Leftover {
            ours: s.name.contains(&format!(".partial-{tag}-"))
                || s.name.ends_with(&format!(".upload-{tag}")),
            name: s.name,
            size: s.size,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What retention decides for this pipeline's own backups in `listed`: ages are measured from
/// [`retention::age_reference`], so a clock that ran ahead cannot make real backups old.
pub fn decide(
    listed: &[Listed],
    policy: &retention::Policy,
    now: jiff::Timestamp,
    just_written: Option<&str>,
) -> Vec<retention::Decision> {
    let own: Vec<Backup> = listed
        .iter()
        .filter(|l| l.owner == Owner::This)
        .map(|l| Backup {
            name: l.name.clone(),
            created: l.created,
        })
        .collect();
    let from = retention::age_reference(&own, now, just_written);
    retention::decide_at(&own, policy, now, from, just_written)
}

fn prune(
    engine: &Engine,
    p: &Prepared,
    sink: &Ready,
    policy: &retention::Policy,
    now: jiff::Timestamp,
    just_written: &str,
) -> Result<usize> {
    let listed = list(engine, p, sink)?;
    let unowned = listed
        .iter()
        .filter(|l| matches!(l.owner, Owner::Unrecorded | Owner::Unfinished))
        .count();
    if unowned > 0 && !policy.keeps_everything() {
        warn_once(
            Some(&sink.label()),
            format!(
                "{unowned} backup(s) here have no recorded owner (made before owners were \
                 recorded, by another tool, or by a run that did not finish); retention never \
                 deletes them: see `pipeline list {}` and delete them by hand",
                p.pipeline.name
            ),
        );
    }
    let decisions = decide(&listed, policy, now, Some(just_written));
    let by_name: std::collections::HashMap<&str, &Listed> =
        listed.iter().map(|l| (l.name.as_str(), l)).collect();
    let c = &sink.run;
    let mut inst = component::sink(engine, sink)?;
    let mut deleted = 0;
    let mut refused: Vec<(&retention::Decision, String)> = Vec::new();
    for d in decisions.iter().filter(|d| d.delete()) {
        // Never the backup just written, whatever the policy computed.
        if d.name == just_written {
            continue;
        }
        // Decisions are made over `listed`: each names one of its entries.
        let Some(l) = by_name.get(d.name.as_str()) else {
            continue;
        };
        match inst.delete(&c.config, &l.stored) {
            Ok(()) => {}
            // The store holds it under a lock (an Object Lock until a date): it stays, and the
            // run goes on; the lock is doing its job, not failing the run. Any other refusal
            // (a permission) fails the prune: retention that silently stops is a full disk.
            Err(StageError::Plugin(PluginError::Locked(why))) => {
                refused.push((d, why));
                continue;
            }
            Err(e) => return Err(anyhow!("deleting {}: {}", d.name, stage_err(e))),
        }
        // Then its manifest and the manifest's signature (absent when unsigned).
        for (what, file) in [
            ("manifest", &l.manifest),
            ("manifest signature", &l.signature),
        ] {
            let Some(file) = file else {
                continue;
            };
            match inst.delete(&c.config, file) {
                Ok(()) | Err(StageError::Plugin(PluginError::NotFound(_))) => {}
                Err(StageError::Plugin(PluginError::Locked(why))) => {
                    logging::info(
                        Some(&sink.label()),
                        &format!(
                            "pruned {}, but its {what} stays: it is locked: {why}",
                            d.name
                        ),
                    );
                }
                Err(e) => {
                    return Err(anyhow!(
                        "deleting the {what} of {}: {}",
                        d.name,
                        stage_err(e)
                    ));
                }
            }
        }
        logging::info(
            Some(&sink.label()),
            &format!(
                "pruned {} (created {}, no retention rule keeps it)",
                d.name,
                naming::format_time(d.created)
            ),
        );
        deleted += 1;
    }
    report_kept(sink, &refused);
    Ok(deleted)
}

/// Reports the backups retention would delete but the store holds under a lock (`locked`,
/// e.g. an Object Lock that has not ended): they are kept. Each is a line; when several are, they
/// go to the debug log and one line sums them up (a lock longer than retention may hold
/// back many at every run).
fn report_kept(sink: &Ready, refused: &[(&retention::Decision, String)]) {
    let line = |d: &retention::Decision, why: &str| {
        format!(
            "kept {} (created {}; no retention rule keeps it): it is locked: {why}; retention \
             tries again on later runs",
            d.name,
            naming::format_time(d.created)
        )
    };
    match refused {
        [] => {}
        [(d, why)] => logging::info(Some(&sink.label()), &line(d, why)),
        [.., (oldest, why)] => {
            for (d, why) in refused {
                logging::debug(Some(&sink.label()), &line(d, why));
            }
            logging::info(
                Some(&sink.label()),
                &format!(
                    "kept {} backups that no retention rule keeps: they are locked; retention \
                     tries again on later runs (-v lists each); the oldest: {}: {why}",
                    refused.len(),
                    oldest.name
                ),
            );
        }
    }
}

/// Loads a pipeline file and prepares it, registering its secrets with the log.
pub fn load(engine: &Engine, name_or_path: &str) -> Result<Prepared> {
    let file = crate::config::find(name_or_path).map_err(UsageError)?;
    let pipeline = crate::config::load(&file)?;
    logging::add_secrets(&pipeline.secrets);
    let prepared = crate::stages::prepare(engine, pipeline)?;
    logging::add_secrets(&prepared.secrets);
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    #[test]
    fn owner_tag_matches_the_sdks_owner_hash() {
        // The vectors of plugins/sdk/src/artifact.rs (FNV-1a of "" and "a").
        assert_eq!(super::owner_tag(""), "811c9dc5");
        assert_eq!(super::owner_tag("a"), "e40c292c");
    }

    #[test]
    fn a_manifest_signature_is_never_taken_for_a_backup() {
        let t = crate::naming::NameTemplate::parse("backup-{time}", &["sql", "zst"]).unwrap();
        let name = "backup-2025-12-10T02-00-00-000Z.sql.zst";
        assert!(t.matches(name).is_some());
        let sig = super::signature_name(name);
        assert_eq!(sig, format!("{name}.sha256.sig"));
        assert!(t.matches(&sig).is_none());
        assert!(sig.strip_suffix(super::MANIFEST_SUFFIX).is_none());
    }
}
