//! A pipeline's stages, checked and ready to run: each is a component with its description,
//! its plan and its resolved grants, or a native codec.
//!
//! [`prepare`] does every check a run needs before it has any side effect: plugins load,
//! describe themselves, accept their configuration and say what they need; a plugin
//! loaded from a file gets only what the pipeline file grants.

pub mod component;
pub mod native;

use std::path::Path;

use serde_json::Value as Json;
use wasmtime::component::Component;

use crate::bindings::{Plan, PluginInfo, PluginKind, ValueType};
use crate::capabilities::filesystem::normalize;
use crate::capabilities::{self, GrantContext, Grants};
use crate::config::{ConfigError, Pipeline, PluginRef, Role, Stage};
use crate::engine::Engine;
use crate::naming::NameTemplate;
use crate::pipe::{PipeReader, PipeWriter};
use crate::redact::Redactor;

/// A stage ready to run: its entry in the pipeline file, what the plugin says it is, its
/// plan, and what runs it. Sources and sinks are always components (`Ready` is
/// `Ready<ComponentStage>`); a transform runs a [`Codec`], native or component.
pub struct Ready<R = ComponentStage> {
    pub stage: Stage,
    pub info: PluginInfo,
    pub plan: Plan,
    pub run: R,
}

/// A transform stage.
pub type TransformStage = Ready<Codec>;

/// What encodes a backup on its way to the sinks and decodes it on its way back: a native
/// codec (see [`native`]) or a component exporting the transform interface.
pub enum Codec {
    Native(native::Zstd),
    Component(Box<ComponentStage>),
}

/// A component with everything a call needs.
#[derive(Clone)]
pub struct ComponentStage {
    pub component: Component,
    /// The configuration as the plugin receives it (paths absolute).
    pub config: String,
    pub grants: Grants,
}

impl<R> Ready<R> {
    pub fn label(&self) -> String {
        self.stage.label()
    }
}

impl TransformStage {
    /// The component behind this transform, if it is not native.
    pub fn component(&self) -> Option<&ComponentStage> {
        match &self.run {
            Codec::Component(c) => Some(c),
            Codec::Native(_) => None,
        }
    }

    /// Encodes `input` into `output` (a backup run).
    pub fn encode(
        &self,
        engine: &Engine,
        input: PipeReader,
        output: PipeWriter,
    ) -> Result<(), String> {
        match &self.run {
            Codec::Native(z) => z.encode(input, output).map_err(|e| e.to_string()),
            Codec::Component(c) => component::transform(engine, &self.stage, c)
                .and_then(|i| i.encode(&c.config, input, output))
                .map_err(|e| e.to_string()),
        }
    }

    /// Undoes [`encode`](Self::encode) (restore and verify).
    pub fn decode(
        &self,
        engine: &Engine,
        input: PipeReader,
        output: PipeWriter,
    ) -> Result<(), String> {
        match &self.run {
            Codec::Native(z) => z
                .decode(input, output)
                .map_err(|e| format!("decompressing: {e}")),
            Codec::Component(c) => component::transform(engine, &self.stage, c)
                .and_then(|i| i.decode(&c.config, input, output))
                .map_err(|e| e.to_string()),
        }
    }
}

/// A checked pipeline.
pub struct Prepared {
    pub pipeline: Pipeline,
    pub source: Ready,
    pub transforms: Vec<TransformStage>,
    pub sinks: Vec<Ready>,
    /// Artifact names with every stage's extension (`backup-{time}.sql.zst`).
    pub names: NameTemplate,
    /// Every secret known for this pipeline (URL passwords, `secret` keys).
    pub secrets: Redactor,
    /// What the pipeline does with its source.
    pub mode: Mode,
    /// `[[notify]]`: told of the run's start and end ([`crate::notify`]).
    pub notifiers: Vec<Notifier>,
}

/// A notifier stage and the events it is told of.
pub struct Notifier {
    pub ready: Ready,
    pub on: Vec<crate::config::NotifyOn>,
}

/// What a pipeline does, decided by its source's world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The source dumps a stream: transforms, every sink, manifests, retention.
    Backup,
    /// The source reports entities: each change becomes a snapshot document in the sinks.
    Snapshot,
}

impl Prepared {
    /// Every stage in chain order, with what its plugin says it is.
    pub fn chain(&self) -> impl Iterator<Item = (&Stage, &PluginInfo)> {
        std::iter::once((&self.source.stage, &self.source.info))
            .chain(self.transforms.iter().map(|t| (&t.stage, &t.info)))
            .chain(self.sinks.iter().map(|s| (&s.stage, &s.info)))
    }

    /// Every stage that runs a component, in chain order.
    pub fn components(&self) -> impl Iterator<Item = (&Stage, &ComponentStage)> {
        std::iter::once((&self.source.stage, &self.source.run))
            .chain(
                self.transforms
                    .iter()
                    .filter_map(|t| Some((&t.stage, t.component()?))),
            )
            .chain(self.sinks.iter().map(|s| (&s.stage, &s.run)))
            .chain(
                self.notifiers
                    .iter()
                    .map(|n| (&n.ready.stage, &n.ready.run)),
            )
    }
}

/// Loads and checks every stage of `pipeline`, without side effects.
pub fn prepare(engine: &Engine, pipeline: Pipeline) -> Result<Prepared, anyhow::Error> {
    let mut secrets = pipeline.secrets.clone();
    let source = ready(engine, &pipeline, &pipeline.source, &mut secrets)?;
    let transforms = pipeline
        .transforms
        .iter()
        .map(|s| transform(engine, &pipeline, s, &mut secrets))
        .collect::<Result<Vec<_>, _>>()?;
    let sinks = pipeline
        .sinks
        .iter()
        .map(|s| ready(engine, &pipeline, s, &mut secrets))
        .collect::<Result<Vec<_>, _>>()?;
    let notifiers = pipeline
        .notify
        .iter()
        .map(|n| {
            Ok(Notifier {
                ready: ready(engine, &pipeline, &n.stage, &mut secrets)?,
                on: n.on.clone(),
            })
        })
        .collect::<Result<Vec<_>, anyhow::Error>>()?;
    let mut extensions: Vec<&str> = Vec::new();
    extensions.extend(source.plan.extension.as_deref());
    extensions.extend(
        transforms
            .iter()
            .filter_map(|t| t.plan.extension.as_deref()),
    );
    let names = NameTemplate::parse(&pipeline.artifact, &extensions)
        .map_err(|e| pipeline.error_at(None, "pipeline.artifact", e.to_string()))?;
    let mode = if component::is_snapshot_source(engine, &source.run.component) {
        Mode::Snapshot
    } else {
        Mode::Backup
    };
    if mode == Mode::Snapshot {
        // Snapshot documents go to the sinks as they are.
        if let Some(t) = pipeline.transforms.first() {
            return Err(pipeline
                .error_at(
                    Some(t.loc),
                    &t.path,
                    format!(
                        "a snapshot pipeline (source `{}`) takes no transforms",
                        pipeline.source.plugin
                    ),
                )
                .into());
        }
        if pipeline.retention.is_some() {
            return Err(pipeline
                .error_at(
                    None,
                    "retention",
                    "a snapshot pipeline keeps its whole history: remove [retention]",
                )
                .into());
        }
    }
    Ok(Prepared {
        pipeline,
        source,
        transforms,
        sinks,
        names,
        secrets,
        mode,
        notifiers,
    })
}

fn expected_kind(role: Role) -> PluginKind {
    match role {
        Role::Source => PluginKind::Source,
        Role::Transform => PluginKind::Transform,
        Role::Sink => PluginKind::Sink,
        Role::Notifier => PluginKind::Notifier,
    }
}

/// `stage` as [`ConfigError`]: its line, its path and its label before `msg`.
fn stage_error(p: &Pipeline, stage: &Stage, msg: String) -> ConfigError {
    p.error_at(
        Some(stage.loc),
        &stage.path,
        format!("stage `{}`: {msg}", stage.label()),
    )
}

/// The native codec a built-in name stands for, with its description.
fn native_codec(stage: &Stage) -> Option<(&str, PluginInfo)> {
    match &stage.plugin {
        PluginRef::Builtin(name) => native::describe(name).map(|info| (name.as_str(), info)),
        PluginRef::File(_) | PluginRef::Oci(_) => None,
    }
}

/// A transform: a native codec when the name is one, a component otherwise.
fn transform(
    engine: &Engine,
    p: &Pipeline,
    stage: &Stage,
    secrets: &mut Redactor,
) -> Result<TransformStage, anyhow::Error> {
    let Some((_, info)) = native_codec(stage) else {
        let c = ready(engine, p, stage, secrets)?;
        return Ok(Ready {
            stage: c.stage,
            info: c.info,
            plan: c.plan,
            run: Codec::Component(Box::new(c.run)),
        });
    };
    check_keys(p, stage, &info)?;
    capabilities::check_allow_keys(p, stage)?;
    let mut config = stage.config.clone();
    typed_values(p, stage, &info, &mut config)?;
    let z = native::Zstd::from_config(&config).map_err(|e| stage_error(p, stage, e))?;
    Ok(Ready {
        stage: stage.clone(),
        info,
        plan: z.plan(),
        run: Codec::Native(z),
    })
}

/// A stage that runs a component: loaded, described, configured, planned and granted.
fn ready(
    engine: &Engine,
    p: &Pipeline,
    stage: &Stage,
    secrets: &mut Redactor,
) -> Result<Ready, anyhow::Error> {
    let stage_err = |msg: String| stage_error(p, stage, msg);

    if stage.role != Role::Transform
        && let Some((name, _)) = native_codec(stage)
    {
        return Err(stage_err(format!(
            "`{name}` is a transform and cannot be a {}",
            stage.role.as_str()
        ))
        .into());
    }

    let component = engine
        .load(&stage.plugin)
        .map_err(|e| stage_err(format!("{e:#}")))?;
    crate::engine::check_world_version(&component, engine)
        .map_err(|e| stage_err(format!("{e:#}")))?;
    // A plugin of another kind would not fit the role's world: say which kind it is.
    if let Some(kind) = component::kind_of(engine, &component)
        && kind != expected_kind(stage.role)
    {
        return Err(stage_err(format!(
            "plugin {} is a {kind} plugin and cannot be used as a {}",
            stage.plugin,
            stage.role.noun()
        ))
        .into());
    }
    let info =
        component::describe(engine, &component, stage.role, &stage.label()).map_err(|e| {
            stage_err(format!(
                "plugin {} cannot describe itself: {e:#}",
                stage.plugin
            ))
        })?;
    if info.kind != expected_kind(stage.role) {
        return Err(stage_err(format!(
            "plugin {} is a {} plugin and cannot be used as a {}",
            stage.plugin,
            info.kind,
            stage.role.noun()
        ))
        .into());
    }
    check_keys(p, stage, &info)?;

    let mut config = stage.config.clone();
    typed_values(p, stage, &info, &mut config)?;
    for key in &info.config_keys {
        let at = |msg: String| {
            p.error_at(
                stage.key_locs.get(&key.name).copied(),
                &format!("{}.{}", stage.path, key.name),
                msg,
            )
        };
        let value = config.get_mut(&key.name);
        match (key.value_type, value) {
            // Normalized as grants are, so the path the plugin is told is the one granted.
            (ValueType::Path, Some(Json::String(s))) => {
                *s = normalize(Path::new(s))
                    .map_err(|e| at(format!("{s}: {e}")))?
                    .display()
                    .to_string()
            }
            (ValueType::Secret, Some(Json::String(s))) => secrets.add(s),
            _ => {}
        }
    }
    let config = Json::Object(config);
    let config_text = config.to_string();
    let plan = component::plan(engine, &component, stage.role, &stage.label(), &config_text)
        .map_err(|e| stage_err(format!("{e:#}")))?
        .map_err(|e| stage_err(crate::bindings::describe_error(&e)))?;

    let mut grants = grant(p, stage, &config, &plan, secrets)?;
    if let PluginRef::Builtin(name) = &stage.plugin {
        crate::builtin::configured_grants(name, &config, &mut grants).map_err(stage_err)?;
    }
    Ok(Ready {
        stage: stage.clone(),
        info,
        plan,
        run: ComponentStage {
            component,
            config: config_text,
            grants,
        },
    })
}

/// `${env:...}` always gives text: reads each boolean or integer key as the type the plugin
/// (component or native) declares. An error names the key, its line and the variable.
fn typed_values(
    p: &Pipeline,
    stage: &Stage,
    info: &PluginInfo,
    config: &mut serde_json::Map<String, Json>,
) -> Result<(), ConfigError> {
    for key in &info.config_keys {
        let integer = match key.value_type {
            ValueType::Integer => true,
            ValueType::Boolean => false,
            _ => continue,
        };
        if let Some(v) = config.get_mut(&key.name) {
            *v = crate::config::typed_value(v, integer).map_err(|msg| {
                let vars = stage.key_vars.get(&key.name).map_or(&[][..], |v| &v[..]);
                p.error_at(
                    stage.key_locs.get(&key.name).copied(),
                    &format!("{}.{}", stage.path, key.name),
                    format!("{msg}{}", crate::config::from_vars(vars)),
                )
            })?;
        }
    }
    Ok(())
}

/// Every key must be one the plugin declared, and every required key present.
fn check_keys(p: &Pipeline, stage: &Stage, info: &PluginInfo) -> Result<(), ConfigError> {
    let known: Vec<&str> = info.config_keys.iter().map(|k| k.name.as_str()).collect();
    for key in stage.config.keys() {
        if !known.contains(&key.as_str()) {
            let expected = if known.is_empty() {
                "it takes no keys".to_string()
            } else {
                format!("it accepts: {}", known.join(", "))
            };
            return Err(p.error_at(
                stage.key_locs.get(key).copied(),
                &format!("{}.{key}", stage.path),
                format!("unknown key for plugin `{}` ({expected})", info.name),
            ));
        }
    }
    for key in info.config_keys.iter().filter(|k| k.required) {
        if !stage.config.contains_key(&key.name) {
            return Err(p.error_at(
                Some(stage.loc),
                &format!("{}.{}", stage.path, key.name),
                format!(
                    "missing: plugin `{}` requires it ({})",
                    info.name, key.description
                ),
            ));
        }
    }
    Ok(())
}

/// The grants of a stage: a built-in plugin gets what its plan asks for plus what the file
/// grants; a plugin from a file gets only what the file grants, and a plan asking for more
/// is refused here, before anything runs. Each capability admits its own part
/// ([`crate::capabilities::grant`]).
pub(crate) fn grant(
    p: &Pipeline,
    stage: &Stage,
    config: &Json,
    plan: &Plan,
    secrets: &mut Redactor,
) -> Result<Grants, ConfigError> {
    let empty = serde_json::Map::new();
    let mut cx = GrantContext {
        pipeline: p,
        stage,
        config: config.as_object().unwrap_or(&empty),
        secrets,
        install_hint: crate::builtin::install_hint,
        protected: [
            ("component cache", crate::engine::cache_dir()),
            ("state directory", crate::lock::state_dir().ok()),
        ]
        .into_iter()
        .filter_map(|(what, dir)| Some((what, dir?)))
        .collect(),
    };
    capabilities::grant(&mut cx, &plan.grants)
}

/// Loads a pipeline file and prepares it, registering its secrets with the log.
pub fn load(engine: &Engine, name_or_path: &str) -> anyhow::Result<Prepared> {
    let file = crate::config::find(name_or_path).map_err(crate::error::UsageError)?;
    let pipeline = crate::config::load(&file)?;
    crate::logging::add_secrets(&pipeline.secrets);
    let prepared = prepare(engine, pipeline)?;
    crate::logging::add_secrets(&prepared.secrets);
    Ok(prepared)
}

/// Creates the directories the stages' plans asked to exist before a run.
pub fn create_directories(p: &Prepared) -> Result<(), crate::error::RunFailed> {
    for (stage, c) in p.components() {
        for dir in &c.grants.filesystem.create {
            crate::capabilities::filesystem::create(dir).map_err(|e| {
                crate::error::RunFailed(format!(
                    "stage `{}`: cannot create directory {}: {e}",
                    stage.label(),
                    dir.display()
                ))
            })?;
        }
    }
    Ok(())
}
