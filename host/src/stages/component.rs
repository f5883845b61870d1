//! Calls into plugin components: one fresh store per call site, with the stage's grants.

use anyhow::{Context, Result};
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use crate::bindings::restorable::exports::pipeline::plugin::restore::{Report, RestoreOptions};
use crate::bindings::snapshot_sink::exports::pipeline::plugin::snapshot_sink::ChangeSet;
use crate::bindings::snapshot_source::exports::pipeline::plugin::snapshot_source::Inventory;
use crate::bindings::{ArtifactMeta, Plan, PluginError, PluginInfo, Stored};
use crate::capabilities::{Grants, StoreState};
use crate::config::{Limits, Role, Stage};
// One type per world, whatever contract version the plugin was built against.
use crate::contract::{
    Notifier as NotifierPlugin, Restorable as RestorableSourcePlugin, Sink as SinkPlugin,
    SnapshotSink as SnapshotSinkPlugin, SnapshotSource as SnapshotSourcePlugin,
    Source as SourcePlugin, Transform as TransformPlugin,
};
use crate::engine::{Engine, describe_trap};
use crate::logging;
use crate::pipe::{PipeReader, PipeWriter};
use crate::stages::{ComponentStage, Ready};

/// Why a stage failed: the plugin said so, or it trapped (crash, limit).
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{}", crate::bindings::describe_error(.0))]
    Plugin(PluginError),
    #[error("{0}")]
    Host(String),
}

impl From<PluginError> for StageError {
    fn from(e: PluginError) -> Self {
        StageError::Plugin(e)
    }
}

/// An instance of one plugin for describe/plan: no grants at all, so planning cannot
/// have side effects.
enum AnyPlugin {
    Source(SourcePlugin),
    SnapshotSource(SnapshotSourcePlugin),
    Transform(TransformPlugin),
    Sink(SinkPlugin),
    Notifier(NotifierPlugin),
}

fn instantiate(
    engine: &Engine,
    component: &Component,
    role: Role,
    store: &mut Store<StoreState>,
) -> Result<AnyPlugin> {
    let l = engine.linker();
    Ok(match role {
        Role::Source if is_snapshot_source(engine, component) => AnyPlugin::SnapshotSource(
            SnapshotSourcePlugin::instantiate(&mut *store, component, l)?,
        ),
        Role::Source => AnyPlugin::Source(SourcePlugin::instantiate(&mut *store, component, l)?),
        Role::Transform => {
            AnyPlugin::Transform(TransformPlugin::instantiate(&mut *store, component, l)?)
        }
        Role::Sink => AnyPlugin::Sink(SinkPlugin::instantiate(&mut *store, component, l)?),
        Role::Notifier => {
            AnyPlugin::Notifier(NotifierPlugin::instantiate(&mut *store, component, l)?)
        }
    })
}

/// Whether `component` exports the interface `name` (`snapshot-source`) of any
/// version of the package.
pub fn exports(engine: &Engine, component: &Component, name: &str) -> bool {
    let prefix = format!("pipeline:plugin/{name}@");
    component
        .component_type()
        .exports(engine.wasmtime())
        .any(|(export, _)| export.starts_with(&prefix))
}

/// The kind of plugin `component` is, from the interfaces it exports; none if it
/// exports none of the kinds' interfaces.
pub fn kind_of(engine: &Engine, component: &Component) -> Option<crate::bindings::PluginKind> {
    use crate::bindings::PluginKind;
    [
        ("source", PluginKind::Source),
        ("snapshot-source", PluginKind::Source),
        ("transform", PluginKind::Transform),
        ("sink", PluginKind::Sink),
        ("notifier", PluginKind::Notifier),
    ]
    .into_iter()
    .find(|(name, _)| exports(engine, component, name))
    .map(|(_, kind)| kind)
}

/// A source that reports entities for snapshots rather than dumping a stream.
pub fn is_snapshot_source(engine: &Engine, component: &Component) -> bool {
    exports(engine, component, "snapshot-source")
}

fn plain_store(engine: &Engine, stage: &str) -> Result<Store<StoreState>> {
    engine.store(
        stage,
        &Grants::default(),
        &Limits {
            timeout: std::time::Duration::from_secs(60),
            ..Limits::default()
        },
    )
}

/// Calls a function of the `plugin` interface, which each world binds as its own type.
macro_rules! call_plugin {
    ($p:expr, $store:expr, $method:ident $(, $arg:expr)*) => {
        match $p {
            AnyPlugin::Source(p) => p.$method($store $(, $arg)*),
            AnyPlugin::SnapshotSource(p) => p.$method($store $(, $arg)*),
            AnyPlugin::Transform(p) => p.$method($store $(, $arg)*),
            AnyPlugin::Sink(p) => p.$method($store $(, $arg)*),
            AnyPlugin::Notifier(p) => p.$method($store $(, $arg)*),
        }
    };
}

pub fn describe(
    engine: &Engine,
    component: &Component,
    role: Role,
    stage: &str,
) -> Result<PluginInfo> {
    let mut store = plain_store(engine, stage)?;
    let p = instantiate(engine, component, role, &mut store).with_context(|| {
        format!(
            "it does not fit the {} world of pipeline:plugin",
            role.as_str()
        )
    })?;
    Ok(call_plugin!(&p, &mut store, call_describe)?)
}

pub fn plan(
    engine: &Engine,
    component: &Component,
    role: Role,
    stage: &str,
    config: &str,
) -> Result<Result<Plan, PluginError>> {
    let mut store = plain_store(engine, stage)?;
    let p = instantiate(engine, component, role, &mut store)?;
    let r = call_plugin!(&p, &mut store, call_plan, config);
    flush_plugin_output(&store);
    Ok(r?)
}

/// Logs what the plugin printed itself (a panic message, say), redacted.
fn flush_plugin_output(store: &Store<StoreState>) {
    let out = store.data().stderr.contents();
    for line in String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        logging::warn(Some(&store.data().stage), line);
    }
}

/// Maps the outcome of a plugin call to the stage's result.
fn outcome<T>(
    store: &Store<StoreState>,
    limits: &Limits,
    r: wasmtime::Result<Result<T, PluginError>>,
) -> Result<T, StageError> {
    flush_plugin_output(store);
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StageError::Plugin(e)),
        Err(trap) => Err(StageError::Host(describe_trap(
            &store.data().stage,
            store.data().plugin.as_deref(),
            limits,
            &trap.into(),
        ))),
    }
}

/// A plugin instance for a run, with its grants.
pub struct Instance<P> {
    store: Store<StoreState>,
    plugin: P,
    limits: Limits,
}

fn host_err(e: impl Into<anyhow::Error>) -> StageError {
    StageError::Host(format!("{:#}", e.into()))
}

/// A fresh instance of a component with exactly `grants` and `limits`.
fn instance<P>(
    engine: &Engine,
    c: &Component,
    stage: &str,
    grants: &Grants,
    limits: &Limits,
    make: impl FnOnce(&mut Store<StoreState>, &Component, &Linker<StoreState>) -> wasmtime::Result<P>,
) -> Result<Instance<P>, StageError> {
    let mut store = engine.store(stage, grants, limits).map_err(host_err)?;
    let plugin = make(&mut store, c, engine.linker()).map_err(host_err)?;
    Ok(Instance {
        store,
        plugin,
        limits: *limits,
    })
}

/// An instance of a stage's component with the stage's own grants and limits.
fn of_stage<P>(
    engine: &Engine,
    stage: &Stage,
    c: &ComponentStage,
    make: impl FnOnce(&mut Store<StoreState>, &Component, &Linker<StoreState>) -> wasmtime::Result<P>,
) -> Result<Instance<P>, StageError> {
    let mut inst = instance(
        engine,
        &c.component,
        &stage.label(),
        &c.grants,
        &stage.limits,
        make,
    )?;
    inst.store.data_mut().plugin = Some(stage.plugin.to_string());
    Ok(inst)
}

pub fn source(engine: &Engine, ready: &Ready) -> Result<Instance<SourcePlugin>, StageError> {
    of_stage(engine, &ready.stage, &ready.run, |s, c, l| {
        SourcePlugin::instantiate(s, c, l)
    })
}

/// The component of a transform stage (see [`crate::stages::Codec`]).
pub fn transform(
    engine: &Engine,
    stage: &Stage,
    c: &ComponentStage,
) -> Result<Instance<TransformPlugin>, StageError> {
    of_stage(engine, stage, c, |s, c, l| {
        TransformPlugin::instantiate(s, c, l)
    })
}

pub fn sink(engine: &Engine, ready: &Ready) -> Result<Instance<SinkPlugin>, StageError> {
    of_stage(engine, &ready.stage, &ready.run, |s, c, l| {
        SinkPlugin::instantiate(s, c, l)
    })
}

/// A notifier's instance. Unlike every other stage it also starts after the run was
/// stopped (a signal, a time limit): the failure is what it reports.
pub fn notifier(engine: &Engine, ready: &Ready) -> Result<Instance<NotifierPlugin>, StageError> {
    let stage = &ready.stage;
    let c = &ready.run;
    let mut store = engine
        .store_after_stop(&stage.label(), &c.grants, &stage.limits)
        .map_err(host_err)?;
    store.data_mut().plugin = Some(stage.plugin.to_string());
    let plugin =
        NotifierPlugin::instantiate(&mut store, &c.component, engine.linker()).map_err(host_err)?;
    Ok(Instance {
        store,
        plugin,
        limits: stage.limits,
    })
}

impl Instance<NotifierPlugin> {
    pub fn notify(
        &mut self,
        config: &str,
        report: &crate::contract::RunReport,
    ) -> Result<(), StageError> {
        let r = self.plugin.call_notify(&mut self.store, config, report);
        outcome(&self.store, &self.limits, r)
    }
}

pub fn snapshot_source(
    engine: &Engine,
    ready: &Ready,
) -> Result<Instance<SnapshotSourcePlugin>, StageError> {
    of_stage(engine, &ready.stage, &ready.run, |s, c, l| {
        SnapshotSourcePlugin::instantiate(s, c, l)
    })
}

pub fn snapshot_sink(
    engine: &Engine,
    ready: &Ready,
) -> Result<Instance<SnapshotSinkPlugin>, StageError> {
    of_stage(engine, &ready.stage, &ready.run, |s, c, l| {
        SnapshotSinkPlugin::instantiate(s, c, l)
    })
}

impl Instance<SnapshotSourcePlugin> {
    pub fn entities(&mut self, config: &str) -> Result<Inventory, StageError> {
        let r = self.plugin.call_entities(&mut self.store, config);
        outcome(&self.store, &self.limits, r)
    }
}

impl Instance<SnapshotSinkPlugin> {
    pub fn commit(
        &mut self,
        config: &str,
        changes: &[ChangeSet],
    ) -> Result<Vec<String>, StageError> {
        let r = self.plugin.call_commit(&mut self.store, config, changes);
        outcome(&self.store, &self.limits, r)
    }
}

impl Instance<SourcePlugin> {
    /// Runs the dump into `out`, finishing the stream only if the plugin succeeded.
    pub fn dump(
        mut self,
        config: &str,
        meta: &ArtifactMeta,
        out: PipeWriter,
    ) -> Result<(), StageError> {
        let res = self
            .store
            .data_mut()
            .table
            .push(out.clone().into_output_stream())
            .map_err(host_err)?;
        let r = self.plugin.call_dump(&mut self.store, config, meta, res);
        let r = outcome(&self.store, &self.limits, r);
        drop(self.store);
        r?;
        out.finish().map_err(|e| StageError::Host(e.to_string()))
    }
}

/// An instance of a source for restoring; an error if the plugin cannot restore.
pub fn restorable(
    engine: &Engine,
    c: &Component,
    stage: &str,
    grants: &Grants,
    limits: &Limits,
) -> Result<Instance<RestorableSourcePlugin>, StageError> {
    instance(engine, c, stage, grants, limits, |s, c, l| {
        RestorableSourcePlugin::instantiate(s, c, l)
    }).map_err(|e| {
        StageError::Host(format!(
            "the source plugin of `{stage}` cannot restore (it exports no pipeline:plugin/restore): {e}"
        ))
    })
}

/// What restoring needs, asked of the plugin without grants.
pub fn plan_restore(
    engine: &Engine,
    c: &Component,
    stage: &str,
    config: &str,
) -> Result<Plan, StageError> {
    let mut inst = restorable(engine, c, stage, &Grants::default(), &Limits::default())?;
    let r = inst.plugin.call_plan_restore(&mut inst.store, config);
    outcome(&inst.store, &inst.limits, r)
}

/// What the source's configuration backs up (its database), in the terms of a restore
/// target, asked of the plugin without grants; none when it cannot say (a plugin built
/// for contract 0.2 never can).
pub fn source_target(
    engine: &Engine,
    c: &Component,
    stage: &str,
    config: &str,
) -> Result<Option<String>, StageError> {
    let mut inst = restorable(engine, c, stage, &Grants::default(), &Limits::default())?;
    let r = inst.plugin.call_source_target(&mut inst.store, config);
    outcome(&inst.store, &inst.limits, r)
}

impl Instance<RestorableSourcePlugin> {
    pub fn restore(
        mut self,
        config: &str,
        options: &RestoreOptions,
        input: PipeReader,
    ) -> Result<Report, StageError> {
        let i = self
            .store
            .data_mut()
            .table
            .push(input.into_input_stream())
            .map_err(host_err)?;
        let r = self
            .plugin
            .call_restore(&mut self.store, config, options, i);
        outcome(&self.store, &self.limits, r)
    }
}

impl Instance<TransformPlugin> {
    pub fn encode(
        self,
        config: &str,
        input: PipeReader,
        out: PipeWriter,
    ) -> Result<(), StageError> {
        self.code(Direction::Encode, config, input, out)
    }

    pub fn decode(
        self,
        config: &str,
        input: PipeReader,
        out: PipeWriter,
    ) -> Result<(), StageError> {
        self.code(Direction::Decode, config, input, out)
    }

    /// Runs encode or decode from `input` to `out`, finishing `out` only on success.
    fn code(
        mut self,
        dir: Direction,
        config: &str,
        input: PipeReader,
        out: PipeWriter,
    ) -> Result<(), StageError> {
        let t = &mut self.store.data_mut().table;
        let i = t.push(input.into_input_stream()).map_err(host_err)?;
        let o = t.push(out.clone().into_output_stream()).map_err(host_err)?;
        let guest = &self.plugin;
        let r = match dir {
            Direction::Encode => guest.call_encode(&mut self.store, config, i, o),
            Direction::Decode => guest.call_decode(&mut self.store, config, i, o),
        };
        let r = outcome(&self.store, &self.limits, r);
        drop(self.store);
        r?;
        out.finish().map_err(|e| StageError::Host(e.to_string()))
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encode,
    Decode,
}

impl Instance<SinkPlugin> {
    pub fn put(
        &mut self,
        config: &str,
        meta: &ArtifactMeta,
        input: PipeReader,
    ) -> Result<Stored, StageError> {
        let i = self
            .store
            .data_mut()
            .table
            .push(input.into_input_stream())
            .map_err(host_err)?;
        let r = self.plugin.call_put(&mut self.store, config, meta, i);
        outcome(&self.store, &self.limits, r)
    }

    pub fn list(&mut self, config: &str, prefix: &str) -> Result<Vec<Stored>, StageError> {
        let r = self.plugin.call_list(&mut self.store, config, prefix);
        outcome(&self.store, &self.limits, r)
    }

    /// Deletes `artifact`, as `list` returned it.
    pub fn delete(&mut self, config: &str, artifact: &Stored) -> Result<(), StageError> {
        let r = self.plugin.call_delete(&mut self.store, config, artifact);
        outcome(&self.store, &self.limits, r)
    }

    /// Stores `bytes` (a checksum manifest, a snapshot document) under `meta.name`.
    pub fn put_bytes(
        &mut self,
        config: &str,
        meta: &ArtifactMeta,
        bytes: bytes::Bytes,
    ) -> Result<Stored, StageError> {
        let (w, r) = crate::pipe::pipe(&meta.name);
        // One message fits in the pipe before the sink starts reading.
        w.send_blocking(bytes)
            .and_then(|()| w.finish())
            .map_err(host_err)?;
        self.put(config, meta, r)
    }

    /// Reads `artifact` (as `list` returned it) whole, keeping at most `max` bytes (and
    /// one chunk more, so the caller can tell an oversized artifact by its length).
    pub fn get_bytes(
        &mut self,
        config: &str,
        artifact: &Stored,
        max: usize,
    ) -> Result<Vec<u8>, StageError> {
        let name = &artifact.name;
        let (w, mut r) = crate::pipe::pipe(name);
        // Read on a thread so that a large artifact cannot block the plugin on a full pipe.
        // After a failed `get` it is not joined: it ends when this instance is dropped.
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            loop {
                match r.recv_blocking() {
                    Ok(Some(chunk)) if buf.len() <= max => buf.extend_from_slice(&chunk),
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(buf),
                    Err(e) => return Err(e),
                }
            }
        });
        self.get(config, artifact, w)?;
        reader
            .join()
            .map_err(|_| StageError::Host(format!("reading {name}: the reader panicked")))?
            .map_err(|e| StageError::Host(format!("reading {name}: {e}")))
    }

    /// Writes `artifact` (as `list` returned it) to `out`.
    pub fn get(
        &mut self,
        config: &str,
        artifact: &Stored,
        out: PipeWriter,
    ) -> Result<u64, StageError> {
        let o = self
            .store
            .data_mut()
            .table
            .push(out.clone().into_output_stream())
            .map_err(host_err)?;
        let r = self.plugin.call_get(&mut self.store, config, artifact, o);
        let n = outcome(&self.store, &self.limits, r)?;
        out.finish().map_err(|e| StageError::Host(e.to_string()))?;
        Ok(n)
    }
}
