//! Restore and verify: stream a stored backup back out of a sink, check it against the
//! SHA-256 recorded at backup time while it streams, undo the transforms, and hand it to
//! the source plugin's inverse. A mismatch fails the stream before the restore commits.
//! The stream reaching the restore ends cleanly only when every byte matched and decoded
//! to something: the plugin commits on that clean end and on nothing else.

mod path_target;
mod target;

pub use target::Target;

use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use sha2::{Digest, Sha256};

pub use crate::bindings::restorable::exports::pipeline::plugin::restore::{Report, RestoreOptions};
use crate::capabilities::Grants;
use crate::catalog::{self, Listed, MANIFEST_SUFFIX};
use crate::engine::Engine;
use crate::error::{self, Blame, RunFailed, StageFailure, UsageError};
use crate::logging;
use crate::naming;
use crate::pipe::{self, PipeReader, PipeWriter, Witness};
use crate::progress::{self, Meter, ReadMeters};
use crate::signing::{self, Checker};
use crate::stages::component::{self, StageError};
use crate::stages::{Prepared, Ready};

/// Which backup to use.
#[derive(Debug, Default, Clone)]
pub struct Pick {
    /// An exact backup name.
    pub backup: Option<String>,
    /// The newest backup created at or before this time.
    pub at: Option<jiff::Timestamp>,
    /// Only this sink.
    pub from: Option<String>,
}

/// Parses `--at`: an RFC 3339 time, a date (midnight UTC), or a backup name's time format.
pub fn parse_at(s: &str) -> Result<jiff::Timestamp, UsageError> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Some(t) = naming::parse_time(s) {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>()
        && let Ok(z) = d.to_zoned(jiff::tz::TimeZone::UTC)
    {
        return Ok(z.timestamp());
    }
    Err(UsageError(format!(
        "--at {s}: not a time; write e.g. 2025-12-10T12:00:00Z, 2025-12-10, or a backup's time 2025-12-10T12-00-00-000Z"
    )))
}

/// `listed` is newest first. A name picks any backup; otherwise only backups
/// [chosen by default](Listed::chosen_by_default) are candidates: never another pipeline's,
/// never one dated in the future (which would otherwise stay "the newest" forever).
fn choose<'a>(listed: &'a [Listed], pick: &Pick) -> Option<&'a Listed> {
    let mut candidates = listed.iter().filter(|l| l.chosen_by_default());
    match (&pick.backup, pick.at) {
        (Some(name), _) => listed.iter().find(|l| &l.name == name),
        (None, Some(at)) => candidates.find(|l| l.created <= at),
        (None, None) => candidates.next(),
    }
}

fn sinks<'a>(p: &'a Prepared, pick: &Pick) -> Result<Vec<&'a Ready>> {
    match &pick.from {
        Some(name) => {
            let s = p
                .sinks
                .iter()
                .find(|s| &s.stage.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = p.sinks.iter().map(|s| s.stage.name.as_str()).collect();
                    UsageError(format!(
                        "--from {name}: no such sink (this pipeline has: {})",
                        names.join(", ")
                    ))
                })?;
            Ok(vec![s])
        }
        None => Ok(p.sinks.iter().collect()),
    }
}

fn what(pick: &Pick) -> String {
    match (&pick.backup, pick.at) {
        (Some(n), _) => format!("backup {n}"),
        (None, Some(at)) => format!("a backup made at or before {at}"),
        (None, None) => "a backup".into(),
    }
}

/// A backup's manifest, as far as it was checked before the backup is read.
struct Manifest {
    /// The SHA-256 it records, in lower-case hex.
    sha: String,
    /// Who signed it, when a signer is configured (and so required).
    signed: Option<signing::Good>,
}

/// Reads the small checksum manifest beside a backup and, when `checker` is given (a
/// signer is configured), its signature: the signature must be there, be made by a key the
/// allowed signers give the principal, and match the manifest byte for byte, and the
/// manifest must name this backup — all before its SHA-256 is trusted.
fn manifest(
    engine: &Engine,
    sink: &Ready,
    listed: &Listed,
    checker: Option<&Checker>,
) -> Result<Manifest> {
    let c = &sink.run;
    let name = &listed.name;
    let manifest_name = format!("{name}{MANIFEST_SUFFIX}");
    let no_manifest = || {
        anyhow!(
            "{name} in sink `{}` has no checksum manifest ({manifest_name}): the run that wrote it did not finish, \
             or the manifest was removed; it cannot be verified",
            sink.stage.name
        )
    };
    let Some(stored) = &listed.manifest else {
        return Err(no_manifest());
    };
    let mut inst = component::sink(engine, sink)?;
    // The manifest is one line; more than 4 KiB is not ours.
    let got = inst.get_bytes(&c.config, stored, 4096);
    let bytes = got.map_err(|e| match e {
        // Removed since the listing.
        StageError::Plugin(crate::bindings::PluginError::NotFound(_)) => no_manifest(),
        e => anyhow!(
            "reading {manifest_name} from sink `{}`: {e}",
            sink.stage.name
        ),
    })?;
    if bytes.len() > 4096 {
        bail!(
            "{manifest_name} in sink `{}` is not a checksum manifest",
            sink.stage.name
        );
    }
    let signed = match checker {
        Some(checker) => {
            let sig_name = catalog::signature_name(name);
            let sig = match &listed.signature {
                None => None,
                Some(stored) => match inst.get_bytes(&c.config, stored, signing::MAX_SIGNATURE_LEN)
                {
                    Ok(b) => Some(b),
                    // Removed since the listing.
                    Err(StageError::Plugin(crate::bindings::PluginError::NotFound(_))) => None,
                    Err(e) => bail!("reading {sig_name} from sink `{}`: {e}", sink.stage.name),
                },
            };
            let refused = |why: String| {
                anyhow!(
                    "{name} in sink `{}` fails its signature check ({manifest_name}, \
                     {sig_name}): {why}; the backup was not used",
                    sink.stage.name
                )
            };
            let good = checker.check(&bytes, sig.as_deref()).map_err(refused)?;
            // A signed manifest of another backup (an older one renamed to look newer)
            // proves nothing about this one.
            let text = String::from_utf8_lossy(&bytes);
            match signing::manifest_file_name(&text) {
                Some(n) if n == name => {}
                other => {
                    return Err(refused(format!(
                        "the signed manifest is for {}, not for this backup",
                        other.unwrap_or("no file")
                    )));
                }
            }
            Some(good)
        }
        None => None,
    };
    let text = String::from_utf8_lossy(&bytes);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{manifest_name} in sink `{}` holds no SHA-256",
            sink.stage.name
        );
    }
    Ok(Manifest { sha: hex, signed })
}

/// Streams `name` out of `sink` into `out`, checking size and SHA-256 on the way; `out` is
/// finished only if both match. With `read_all`, a reader of `out` that stops early does
/// not stop the check: the rest is read and hashed, so a corrupt backup is reported as
/// corrupt rather than as whatever the corruption made the next stage say.
fn checked_stream(
    engine: &Engine,
    sink: &Ready,
    listed: &Listed,
    sha: &str,
    out: PipeWriter,
    read_all: bool,
    witness: &Witness,
) -> Result<(u64, f64), String> {
    let started = Instant::now();
    let c = &sink.run;
    // Reading and checking are one stage: both ends are its own.
    let (w, mut r) =
        pipe::pipe_between(&format!("{} → checksum", sink.stage.name), witness, witness);
    std::thread::scope(|scope| {
        let get = scope.spawn(|| {
            component::sink(engine, sink)
                .and_then(|mut i| i.get(&c.config, &listed.stored, w))
                .map_err(|e| {
                    format!(
                        "reading {} from sink `{}`: {e}",
                        listed.name, sink.stage.name
                    )
                })
        });
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut downstream: Result<(), String> = Ok(());
        let copied: Result<(), String> = (|| {
            while let Some(chunk) = r.recv_blocking().map_err(|e| e.to_string())? {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                if downstream.is_ok()
                    && let Err(e) = out.send_blocking(chunk)
                {
                    downstream = Err(e.to_string());
                    if !read_all {
                        break;
                    }
                }
            }
            Ok(())
        })();
        drop(r);
        let got = get
            .join()
            .unwrap_or_else(|_| Err("the reading thread panicked".into()));
        if downstream.is_err() && !read_all {
            return downstream.map(|_| (size, 0.0));
        }
        got?;
        copied?;
        let actual = hex::encode(hasher.finalize());
        if actual != sha {
            return Err(format!(
                "checksum mismatch: {} in sink `{}` has sha256 {actual}, its manifest records {sha}; \
                 the backup is corrupt",
                listed.name, sink.stage.name
            ));
        }
        if size != listed.size {
            return Err(format!(
                "{} in sink `{}`: read {size} bytes, the sink lists {}",
                listed.name, sink.stage.name, listed.size
            ));
        }
        if size == 0 {
            return Err(format!(
                "{} in sink `{}` is empty (0 bytes), although its manifest matches: it holds no backup",
                listed.name, sink.stage.name
            ));
        }
        downstream?;
        out.finish().map_err(|e| e.to_string())?;
        Ok((size, started.elapsed().as_secs_f64()))
    })
}

/// A stage running on a scoped thread, by label, with the witness of its pipe ends.
type Running<'s> = Vec<(
    String,
    Witness,
    std::thread::ScopedJoinHandle<'s, Result<(), String>>,
)>;

/// Undoes the transforms, last first, each on its own thread. `next` witnesses `input`'s
/// reader; the result's reader is witnessed by the returned witness.
fn decode_chain<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    engine: &'s Engine,
    p: &'s Prepared,
    mut input: PipeReader,
    mut next: Witness,
) -> (PipeReader, Witness, Running<'s>) {
    let mut handles = Vec::new();
    for t in p.transforms.iter().rev() {
        let own = std::mem::take(&mut next);
        let (w, next_r) = pipe::pipe_between(&format!("{} decode", t.stage.name), &own, &next);
        let r = std::mem::replace(&mut input, next_r);
        let h = scope.spawn(move || t.decode(engine, r, w));
        handles.push((t.label(), own, h));
    }
    (input, next, handles)
}

/// Forwards the decoded backup to `out` (or drops it, for verify), counting its bytes
/// (also on `meter`, for the progress line). A backup that decodes to nothing fails
/// instead of ending cleanly: restored, it would commit an empty transaction and report
/// success.
fn count_decoded(
    mut input: PipeReader,
    out: Option<PipeWriter>,
    meter: &Meter,
) -> Result<u64, String> {
    let mut n = 0u64;
    while let Some(chunk) = input.recv_blocking().map_err(|e| e.to_string())? {
        n += chunk.len() as u64;
        meter.add(chunk.len() as u64);
        if let Some(out) = &out {
            out.send_blocking(chunk).map_err(|e| e.to_string())?;
        }
    }
    if n == 0 {
        return Err(
            "the backup decodes to nothing (0 bytes): it holds no dump and cannot be restored"
                .into(),
        );
    }
    if let Some(out) = out {
        out.finish().map_err(|e| e.to_string())?;
    }
    Ok(n)
}

/// Arguments of `pipeline restore`.
pub struct RestoreArgs {
    pub pick: Pick,
    /// The target; None means the pipeline's own database (needs `yes`).
    pub to: Option<String>,
    /// Where `to` came from, for messages: `--to`, `--restore-into` or a variable's name.
    pub to_option: String,
    /// Replacing the pipeline's own database is allowed; `None` for a command that never
    /// allows it (`verify --restore-into`).
    pub yes: Option<bool>,
    pub allow_non_empty: bool,
}

/// What the source backs up (its database), as its plugin says (`restore.source-target`):
/// the host does not know the keys of a source's configuration. None when the plugin
/// cannot say (a plugin built for contract 0.2). It may hold a password: it is registered
/// as a secret before anything can log it.
fn source_target(engine: &Engine, p: &Prepared) -> Result<Option<String>> {
    let source = &p.source;
    let c = &source.run;
    let target = component::source_target(engine, &c.component, &source.label(), &c.config)
        .map_err(|e| match e {
            StageError::Plugin(pe) => anyhow!(p.pipeline.error_at(
                Some(source.stage.loc),
                &source.stage.path,
                crate::bindings::describe_error(&pe)
            )),
            e => anyhow!("{e}"),
        })?;
    // A connection string (`scheme://…`, `key=value`); a path (`sqlite`, `files`) is no
    // secret, and masking it would hide it in every message.
    if let Some(t) = target
        .as_ref()
        .filter(|t| t.contains("://") || t.contains('='))
    {
        let mut secrets = crate::redact::Redactor::default();
        secrets.add(t);
        logging::add_secrets(&secrets);
    }
    Ok(target)
}

/// Checks a restore target before anything runs: it must be a connection string (a bare
/// word would make psql use the default socket), and the pipeline's own database only with
/// `--yes` — compared by identity (server, port, database), however either is spelled. For
/// a source that restores into a path (its restore plan asks for `{restore-target}`
/// markers), a path that is not what the source backs up, nor holds it or lies inside it.
/// `option` names where the target came from; `yes` is `None` where no `--yes` exists.
pub fn check_target(
    engine: &Engine,
    p: &Prepared,
    option: &str,
    to: &str,
    yes: Option<bool>,
) -> Result<()> {
    let into_path = path_target::wanted(&plan_restore(engine, p)?);
    let unless = match yes {
        Some(_) => "pass --yes if that is what you want, or restore somewhere else",
        None => "verify restores only into a scratch database; give an empty one",
    };
    if into_path {
        let target = path_target::resolve(option, to)?;
        if yes == Some(true) {
            return Ok(());
        }
        return match source_target(engine, p)? {
            Some(source) if path_target::overlaps(&target, &source) => Err(UsageError(format!(
                "{option} names {}, which is what the source backs up (or holds it, or lies \
                 inside it): restoring there replaces what it holds now; {unless}",
                target.display()
            ))
            .into()),
            _ => Ok(()),
        };
    }
    let target = target::Target::parse(to).map_err(|e| UsageError(format!("{option}: {e}")))?;
    if yes == Some(true) {
        return Ok(());
    }
    let Some(source) = source_target(engine, p)? else {
        return Ok(());
    };
    let source_id = target::Target::parse_source(&source)
        .ok()
        .and_then(|t| t.identity());
    match (target.identity(), source_id) {
        (Some(to_id), Some(source_id)) => {
            if to_id.same_database(&source_id) {
                return Err(UsageError(format!(
                    "{option} names the pipeline's own database ({}, the database the source \
                     backs up): restoring into it replaces what it holds now; {unless}",
                    to_id.describe()
                ))
                .into());
            }
            Ok(())
        }
        _ => Err(UsageError(format!(
            "{option}: cannot tell whether it names the pipeline's own database (a `service` \
             entry, in it or in what the source backs up, hides the server and database); {unless}"
        ))
        .into()),
    }
}

/// What a restore did.
pub struct Restored {
    pub backup: String,
    pub sink: String,
    pub report: Report,
    pub seconds: f64,
}

/// The source's plan for restoring (the programs and directories it needs), an error at
/// the source's table when the plugin refuses its configuration.
fn plan_restore(engine: &Engine, p: &Prepared) -> Result<crate::bindings::Plan> {
    let source = &p.source;
    let c = &source.run;
    component::plan_restore(engine, &c.component, &source.label(), &c.config).map_err(|e| match e {
        StageError::Plugin(pe) => anyhow!(p.pipeline.error_at(
            Some(source.stage.loc),
            &source.stage.path,
            crate::bindings::describe_error(&pe)
        )),
        e => anyhow!("{e}"),
    })
}

pub fn restore(engine: &Engine, p: &Prepared, args: &RestoreArgs) -> Result<Restored> {
    let checker = Checker::load(&p.pipeline)?;
    let source = &p.source;
    let c = &source.run;
    // Grants for the inverse, checked like a dump's before anything runs.
    let mut plan = plan_restore(engine, p)?;
    let into_path = path_target::wanted(&plan);
    let target = match (&args.to, args.yes) {
        (Some(t), yes) => {
            // A connection string may hold a password; a path is no secret (and masking
            // it would mask it in every message).
            if !into_path {
                let mut secrets = crate::redact::Redactor::default();
                secrets.add(t);
                logging::add_secrets(&secrets);
            }
            check_target(engine, p, &args.to_option, t, yes)?;
            t.clone()
        }
        (None, Some(true)) => match source_target(engine, p)? {
            Some(url) => url,
            None => bail!(UsageError(
                "the source plugin does not say what it backs up: give the target with --to".into()
            )),
        },
        (None, _) => bail!(UsageError(
            "restoring into the pipeline's own database replaces what it holds now: pass --yes to do that, \
             or --to URL (or PIPELINE_RESTORE_TO) to restore somewhere else"
                .into()
        )),
    };

    // A file or directory target: the plugin gets the path the user typed, resolved, and
    // the markers of its plan become that path (see `path_target`).
    let (target, typed) = if into_path {
        let path = path_target::resolve(&args.to_option, &target)?;
        let typed = path_target::substitute(&mut plan, &path);
        (path.display().to_string(), typed)
    } else {
        (target, Vec::new())
    };
    let mut secrets = p.secrets.clone();
    let config: serde_json::Value = serde_json::from_str(&c.config).unwrap_or_default();
    let mut grants: Grants =
        crate::stages::grant(&p.pipeline, &source.stage, &config, &plan, &mut secrets)?;
    path_target::grant_typed(&mut grants, typed);
    logging::add_secrets(&secrets);

    let (sink, listed) = find(engine, p, &args.pick)?;
    let m = manifest(engine, sink, &listed, checker.as_ref())?;
    let sha = m.sha;
    let signed = m
        .signed
        .map(|g| format!(", manifest {g}"))
        .unwrap_or_default();
    logging::info(
        None,
        &format!(
            "restoring {} from sink `{}` (sha256 {sha}{signed})",
            listed.name, sink.stage.name
        ),
    );

    // Only directories normalized and granted above, only for this restore.
    for dir in &grants.filesystem.create {
        crate::capabilities::filesystem::create(dir).map_err(|e| {
            RunFailed(format!(
                "{}: cannot create directory {}: {e}",
                source.label(),
                dir.display()
            ))
        })?;
    }
    let started = Instant::now();
    let options = RestoreOptions {
        target,
        allow_non_empty: args.allow_non_empty,
    };
    type Outcome = (String, Result<Option<Report>, String>, Blame);
    let meters = ReadMeters::new("restore");
    let shown = progress::show(progress::Counters::Read(meters.clone()));
    let results: Vec<Outcome> = std::thread::scope(|scope| {
        let checking = Witness::new();
        let decoding = Witness::new();
        let (w, r) = pipe::pipe_between("checksum → decode", &checking, &decoding);
        let check = {
            let checking = checking.clone();
            let (listed, sha) = (&listed, &sha);
            scope.spawn(move || {
                checked_stream(engine, sink, listed, sha, w, false, &checking).map(|_| None)
            })
        };
        // What was read and checked, counted as the decoding takes it.
        let r = r.metered(&meters.read);
        let (last, counting, decoders) = decode_chain(scope, engine, p, r, decoding);
        let restoring = Witness::new();
        let (w, decoded) = pipe::pipe_between("decoded backup → restore", &counting, &restoring);
        let meter = &meters.decoded;
        let counted = scope.spawn(move || count_decoded(last, Some(w), meter).map(|_| None));
        let restore = scope.spawn(|| {
            component::restorable(
                engine,
                &c.component,
                &source.label(),
                &grants,
                &source.stage.limits,
            )
            .and_then(|i| i.restore(&c.config, &options, decoded))
            .map(Some)
            .map_err(|e| e.to_string())
        });
        let mut out = vec![outcome(
            format!("sink {}", sink.stage.name),
            &checking,
            check,
        )];
        out.extend(decoders.into_iter().map(|(l, w, h)| {
            let (l, r, b) = outcome(l, &w, h);
            (l, r.map(|()| None), b)
        }));
        out.push(outcome("the decoded backup".into(), &counting, counted));
        out.push(outcome(source.label(), &restoring, restore));
        out
    });
    drop(shown);
    let report = results
        .iter()
        .find_map(|(_, r, _)| r.as_ref().ok().and_then(|x| x.clone()));
    let failures: Vec<StageFailure> = results
        .iter()
        .filter_map(|(l, r, b)| r.as_ref().err().map(|e| failure(l.clone(), e.clone(), *b)))
        .collect();
    if !failures.is_empty() {
        // What became of the target is the restore stage's to say, even when it only
        // stopped because the backup failed: a transaction rolled back, or a cluster left
        // half-restored that must be discarded.
        let target = source.label();
        let aftermath = failures
            .iter()
            .find(|f| f.stage == target && f.blame == Blame::Consequence)
            .map(|f| format!("; then {target}: {}", f.message))
            .unwrap_or_default();
        bail!(RunFailed(format!(
            "restore of {} from sink `{}` failed: {}{aftermath}",
            listed.name,
            sink.stage.name,
            describe_failures(&failures)
        )));
    }
    let report = report.ok_or_else(|| anyhow!("the restore reported nothing"))?;
    Ok(Restored {
        backup: listed.name.clone(),
        sink: sink.stage.name.clone(),
        report,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, String>>) -> Result<T, String> {
    h.join().unwrap_or_else(|_| Err("a stage panicked".into()))
}

/// A finished stage: its label, result, and whether a failure was its own.
fn outcome<T>(
    label: String,
    witness: &Witness,
    h: std::thread::ScopedJoinHandle<'_, Result<T, String>>,
) -> (String, Result<T, String>, Blame) {
    let result = join(h);
    let blame = witness.blame(&label);
    (label, result, blame)
}

/// The sink and listing of the backup `pick` names: the first sink that has it.
fn find<'a>(engine: &Engine, p: &'a Prepared, pick: &Pick) -> Result<(&'a Ready, Listed)> {
    let mut looked = Vec::new();
    for sink in sinks(p, pick)? {
        let listed = catalog::list(engine, p, sink)?;
        if let Some(l) = choose(&listed, pick) {
            return Ok((sink, l.clone()));
        }
        looked.push(format!("`{}` ({} backups)", sink.stage.name, listed.len()));
    }
    bail!(RunFailed(format!(
        "no sink has {}: looked in {}",
        what(pick),
        looked.join(", ")
    )))
}

/// One line of `pipeline verify`.
pub struct Checked {
    pub sink: String,
    pub backup: Option<String>,
    pub result: Result<String, String>,
}

/// Checks the chosen backup in every sink: present, complete (manifest), size and SHA-256.
pub fn verify(engine: &Engine, p: &Prepared, pick: &Pick) -> Result<Vec<Checked>> {
    let checker = Checker::load(&p.pipeline)?;
    let mut out = Vec::new();
    for sink in sinks(p, pick)? {
        let name = sink.stage.name.clone();
        let listed = match catalog::list(engine, p, sink) {
            Ok(l) => l,
            Err(e) => {
                out.push(Checked {
                    sink: name,
                    backup: None,
                    result: Err(format!("cannot list: {e:#}")),
                });
                continue;
            }
        };
        let Some(l) = choose(&listed, pick) else {
            out.push(Checked {
                sink: name,
                backup: None,
                result: Err(format!("no {} here ({} backups)", what(pick), listed.len())),
            });
            continue;
        };
        let result = manifest(engine, sink, l, checker.as_ref())
            .map_err(|e| format!("{e:#}"))
            .and_then(|m| {
                let signed = m
                    .signed
                    .map(|g| format!("; manifest {g}"))
                    .unwrap_or_default();
                read_back(engine, p, sink, l, &m.sha).map(|ok| format!("{ok}{signed}"))
            });
        out.push(Checked {
            sink: name,
            backup: Some(l.name.clone()),
            result,
        });
    }
    Ok(out)
}

/// Reads a backup back the way a restore would, without restoring: every byte against the
/// manifest's SHA-256, and every transform undone (as `restic check --read-data` does), so
/// a backup whose bytes match but that cannot be decoded, or decodes to nothing, fails.
fn read_back(
    engine: &Engine,
    p: &Prepared,
    sink: &Ready,
    listed: &Listed,
    sha: &str,
) -> Result<String, String> {
    let started = Instant::now();
    let meters = ReadMeters::new(&format!("verify {}", sink.stage.name));
    let shown = progress::show(progress::Counters::Read(meters.clone()));
    let (checked, decoders, decoded) = std::thread::scope(|scope| {
        let checking = Witness::new();
        let decoding = Witness::new();
        let (w, r) = pipe::pipe_between("verify → decode", &checking, &decoding);
        let check = {
            let checking = checking.clone();
            scope.spawn(move || checked_stream(engine, sink, listed, sha, w, true, &checking))
        };
        let r = r.metered(&meters.read);
        let (last, counting, decoders) = decode_chain(scope, engine, p, r, decoding);
        let decoded = count_decoded(last, None, &meters.decoded);
        let decoded = (decoded, counting.blame("decoding"));
        let decoders: Vec<_> = decoders
            .into_iter()
            .map(|(l, w, h)| outcome(l, &w, h))
            .collect();
        (
            outcome("reading".into(), &checking, check),
            decoders,
            decoded,
        )
    });
    drop(shown);
    // A checksum mismatch (or a read error) explains whatever decoding said about the same
    // bytes. Otherwise every byte was read and matched (`read_all`), and the decoders'
    // errors are the finding.
    let mut failures: Vec<StageFailure> = Vec::new();
    let size = match checked {
        (_, Ok((size, _)), _) => size,
        (_, Err(e), Blame::Cause) => return Err(e),
        (label, Err(e), blame) => {
            failures.push(failure(label, e, blame));
            listed.size
        }
    };
    failures.extend(
        decoders
            .into_iter()
            .filter_map(|(l, r, b)| r.err().map(|e| failure(l, e, b)))
            .chain(
                decoded
                    .0
                    .as_ref()
                    .err()
                    .map(|e| failure("decoding".into(), e.clone(), decoded.1)),
            ),
    );
    if !failures.is_empty() {
        return Err(format!(
            "sha256 {sha} matches its manifest, but the backup does not decode: {}",
            describe_failures(&failures)
        ));
    }
    let decoded = decoded.0.unwrap_or_default();
    let chain: Vec<String> = p.transforms.iter().rev().map(|t| t.label()).collect();
    let undone = if chain.is_empty() {
        String::new()
    } else {
        format!(" (undoing {})", chain.join(", "))
    };
    Ok(format!(
        "{size} bytes, sha256 {sha} matches its manifest; decodes to {decoded} bytes{undone} ({:.1}s)",
        started.elapsed().as_secs_f64()
    ))
}

/// A stage's failure, a cause or a consequence as its pipes saw it ([`Witness::blame`]).
fn failure(stage: String, message: String, blame: Blame) -> StageFailure {
    StageFailure {
        stage,
        message,
        blame,
    }
}

/// `stage: error; …` for the causes among `failures`.
fn describe_failures(failures: &[StageFailure]) -> String {
    error::root_causes(failures)
        .iter()
        .map(|f| format!("{}: {}", f.stage, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_accepts_the_usual_forms() {
        let t = parse_at("2025-12-10T12:00:00Z").unwrap();
        assert_eq!(parse_at("2025-12-10T12-00-00-000Z").unwrap(), t);
        assert_eq!(
            parse_at("2025-12-10").unwrap(),
            "2025-12-10T00:00:00Z".parse::<jiff::Timestamp>().unwrap()
        );
        assert!(
            parse_at("yesterday")
                .unwrap_err()
                .to_string()
                .contains("not a time")
        );
    }

    fn listed(name: &str, at: &str) -> Listed {
        Listed {
            name: name.into(),
            size: 1,
            created: at.parse().unwrap(),
            stored: crate::bindings::Stored {
                name: name.into(),
                size: 1,
                created_ms: 0,
                locked_until_ms: None,
            },
            manifest: None,
            signature: None,
            owner: catalog::Owner::This,
            future: false,
        }
    }

    #[test]
    fn choose_picks_newest_named_or_before() {
        let l = vec![
            listed("c", "2025-01-03T00:00:00Z"),
            listed("b", "2025-01-02T00:00:00Z"),
            listed("a", "2025-01-01T00:00:00Z"),
        ];
        assert_eq!(choose(&l, &Pick::default()).unwrap().name, "c");
        assert_eq!(
            choose(
                &l,
                &Pick {
                    backup: Some("a".into()),
                    ..Default::default()
                }
            )
            .unwrap()
            .name,
            "a"
        );
        let at = Pick {
            at: Some("2025-01-02T12:00:00Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(choose(&l, &at).unwrap().name, "b");
        let before = Pick {
            at: Some("2024-01-01T00:00:00Z".parse().unwrap()),
            ..Default::default()
        };
        assert!(choose(&l, &before).is_none());
    }

    #[test]
    fn choose_skips_future_and_other_pipelines_unless_named() {
        let mut future = listed("future", "2099-01-01T00:00:00Z");
        future.future = true;
        let mut theirs = listed("theirs", "2025-01-04T00:00:00Z");
        theirs.owner = catalog::Owner::Other("weekly".into());
        let mut old = listed("old", "2025-01-01T00:00:00Z");
        old.owner = catalog::Owner::Unrecorded;
        let l = vec![future, theirs, listed("ours", "2025-01-03T00:00:00Z"), old];
        assert_eq!(choose(&l, &Pick::default()).unwrap().name, "ours");
        let at = Pick {
            at: Some("2025-01-05T00:00:00Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(choose(&l, &at).unwrap().name, "ours");
        let before = Pick {
            at: Some("2025-01-02T00:00:00Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(choose(&l, &before).unwrap().name, "old");
        for name in ["future", "theirs"] {
            let named = Pick {
                backup: Some(name.into()),
                ..Default::default()
            };
            assert_eq!(choose(&l, &named).unwrap().name, name);
        }
    }
}
