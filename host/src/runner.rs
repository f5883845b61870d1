//! One backup run of a pipeline: lock, stream source → transforms → every sink at once, store
//! a checksum manifest (and its signature) beside each backup, then prune through
//! [`crate::catalog`] — only if every sink succeeded.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::bindings::{ArtifactMeta, Stored};
use crate::catalog::{self, MANIFEST_SUFFIX, OWNER_PREFIX, signature_name};
use crate::clock::now;
use crate::engine::Engine;
use crate::error::{self, Blame, RunFailed, StageFailure};
use crate::lock;
use crate::logging;
use crate::pipe::{self, PipeReader, PipeWriter, Witness};
use crate::retention;
use crate::signing::{self, Signer};
use crate::stages::component::{self, StageError};
use crate::stages::{Prepared, Ready};

/// The label of an artifact's meta that says until when the retention policy means to keep
/// it (milliseconds since the Unix epoch, UTC; [`retention::retain_until`]), set when the
/// policy bounds it in time. The `s3` sink with `object_lock` locks the object until then.
pub const RETAIN_UNTIL_LABEL: &str = "retain-until-ms";

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

/// `on_start` is called once the run holds the pipeline's lock, before anything is written.
pub fn run(engine: &Engine, p: &Prepared, on_start: &dyn Fn()) -> Result<Outcome> {
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
    on_start();
    crate::stages::create_directories(p)?;

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
                pruned += catalog::prune(engine, p, sink, policy, now, &name).map_err(|e| {
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
                if let Err(e) = catalog::list(engine, p, sink) {
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
