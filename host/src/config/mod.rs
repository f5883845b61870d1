//! Pipeline files: finding them, parsing them, interpolating `${env:…}`, and checking every
//! key the host owns. Errors name the file, line, column and key.
//!
//! The keys of a stage table that the host does not own (`plugin`, `name`, `allow`,
//! `limits`) are the plugin's configuration: they are interpolated and handed over as JSON,
//! and checked against the plugin's own description by the runner (with the locations kept
//! here).

pub mod interpolate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::redact::Redactor;
use crate::retention::Policy;
use crate::schedule::Schedule;
use interpolate::interpolate;

/// A position in a pipeline file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

/// A configuration error: where, which key, what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub loc: Option<Loc>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.loc {
            write!(f, ":{}:{}", l.line, l.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where a stage's plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// A first-party plugin shipped inside the binary (`plugin = "postgres"`).
    Builtin(String),
    /// A component file (`plugin = "./my-sink.wasm"`), relative to the pipeline file.
    File(PathBuf),
    /// A component in an OCI registry (`plugin = "oci://registry/acme/sink:1.0@sha256:…"`),
    /// pulled into the cache; granted like a file.
    Oci(crate::oci::Reference),
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginRef::Builtin(n) => write!(f, "{n}"),
            PluginRef::File(p) => write!(f, "{}", p.display()),
            PluginRef::Oci(r) => write!(f, "{r}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Transform,
    Sink,
    /// A `[[notify]]` stage: told of the run's start, success and failure.
    Notifier,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Transform => "transform",
            Role::Sink => "sink",
            Role::Notifier => "notify",
        }
    }

    /// What a plugin in this role is called: "a sink", "a notifier".
    pub fn noun(self) -> &'static str {
        match self {
            Role::Notifier => "notifier",
            other => other.as_str(),
        }
    }
}

/// What a `[[notify]]` stage is told of (its `on` list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotifyOn {
    Start,
    Success,
    Failure,
}

impl NotifyOn {
    pub const ALL: [NotifyOn; 3] = [NotifyOn::Start, NotifyOn::Success, NotifyOn::Failure];
    /// Without an `on` list: the end of every run, good or bad.
    pub const DEFAULT: [NotifyOn; 2] = [NotifyOn::Success, NotifyOn::Failure];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Start => "start",
            NotifyOn::Success => "success",
            NotifyOn::Failure => "failure",
        }
    }
}

/// A `[[notify]]` table: a notifier stage and the events it is told of.
#[derive(Debug, Clone)]
pub struct Notify {
    pub stage: Stage,
    pub on: Vec<NotifyOn>,
}

/// What the pipeline file grants a stage beyond what its built-in plugin derives itself:
/// the stage's `allow` table, each key a list of strings. The config module does not know
/// what the keys mean: each belongs to a capability (`capabilities::`), which reads and
/// checks its own keys when the stage is granted, and refuses the keys none owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// key → where the key stands and its values, each with where it stands.
    pub keys: BTreeMap<String, AllowKey>,
}

/// One key of an `allow` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowKey {
    pub loc: Loc,
    pub values: Vec<(String, Loc)>,
}

impl Allow {
    /// The values of `key`, in the order the file gives them; none when it is absent.
    pub fn values(&self, key: &str) -> impl Iterator<Item = &(String, Loc)> {
        self.keys.get(key).into_iter().flat_map(|k| k.values.iter())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time a stage may take.
    pub timeout: Duration,
    /// Linear memory a plugin may grow to, in bytes.
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(24 * 3600),
            memory: 512 << 20,
        }
    }
}

impl Limits {
    /// A stage's limits when its table sets none: a notifier must not hold a run's end
    /// for long, so it gets 30 seconds; every other stage a day.
    pub fn default_for(role: Role) -> Limits {
        match role {
            Role::Notifier => Limits {
                timeout: Duration::from_secs(30),
                ..Limits::default()
            },
            _ => Limits::default(),
        }
    }
}

/// A value from the `[signing]` table, with where it stands in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub loc: Loc,
}

/// The `[metrics]` table: after every run, the pipeline's metrics in the Prometheus text
/// format, written atomically to `textfile` (for node_exporter's textfile collector) and/or
/// pushed to the Pushgateway at `pushgateway` under `job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    pub textfile: Option<PathBuf>,
    pub pushgateway: Option<String>,
    /// The Pushgateway job label (default `pipeline`).
    pub job: String,
}

/// The `[signing]` table as written (paths made absolute); nothing is read until a
/// command needs it, so `verify` on a machine without the private key works.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SigningSettings {
    /// The private key that signs every manifest a run writes.
    pub key: Option<Setting<PathBuf>>,
    /// The key's passphrase, when it is encrypted (a secret).
    pub passphrase: Option<String>,
    /// An `ssh-keygen` allowed-signers file; with `principal`, `verify` and `restore`
    /// require a good signature.
    pub allowed_signers: Option<Setting<PathBuf>>,
    pub principal: Option<Setting<String>>,
}

impl std::fmt::Debug for SigningSettings {
    // Never the passphrase, even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningSettings")
            .field("key", &self.key)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "***"))
            .field("allowed_signers", &self.allowed_signers)
            .field("principal", &self.principal)
            .finish()
    }
}

/// One stage of a pipeline.
#[derive(Debug, Clone)]
pub struct Stage {
    pub role: Role,
    /// Unique within the pipeline; used in logs and in `--from`.
    pub name: String,
    pub plugin: PluginRef,
    /// The plugin's configuration after interpolation.
    pub config: serde_json::Map<String, Json>,
    /// Where each plugin key stands, for errors the runner finds later.
    pub key_locs: BTreeMap<String, Loc>,
    /// The variables each plugin key's value was read from (`${env:…}`), for those errors.
    pub key_vars: BTreeMap<String, Vec<String>>,
    /// Where the stage's table starts.
    pub loc: Loc,
    /// The dotted path of the table in the file (`sink[0]`), for messages.
    pub path: String,
    pub allow: Allow,
    pub limits: Limits,
}

impl Stage {
    /// "sink local" — how logs and errors name the stage.
    pub fn label(&self) -> String {
        if self.name == self.role.as_str() {
            self.name.clone()
        } else {
            format!("{} {}", self.role.as_str(), self.name)
        }
    }
}

/// A parsed, interpolated and checked pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub file: PathBuf,
    /// Template of artifact names, containing `{time}` once.
    pub artifact: String,
    pub source: Stage,
    pub transforms: Vec<Stage>,
    pub sinks: Vec<Stage>,
    /// `[[notify]]`: notifiers told of each run, in file order.
    pub notify: Vec<Notify>,
    pub retention: Option<Policy>,
    /// `[signing]`: the key that signs manifests, and what `verify`/`restore` check them
    /// against (read only by the commands that need them).
    pub signing: Option<SigningSettings>,
    /// `[metrics]`: where to write the Prometheus metrics of each run ([`crate::metrics`]).
    pub metrics: Option<MetricsSettings>,
    /// `[pipeline] schedule` (and `timezone`): when `pipeline daemon` runs it.
    pub schedule: Option<Schedule>,
    /// Secrets seen while loading (passwords in URLs); the runner adds `secret` keys.
    pub secrets: Redactor,
}

impl Pipeline {
    pub fn error_at(&self, loc: Option<Loc>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            loc,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Finds a pipeline file: a path as given, or NAME in `$PIPELINE_DIR` then `./pipelines`.
pub fn find(name_or_path: &str) -> Result<PathBuf, String> {
    let as_path = Path::new(name_or_path);
    if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
        return if as_path.is_file() {
            Ok(as_path.to_path_buf())
        } else {
            Err(format!("pipeline file {name_or_path} does not exist"))
        };
    }
    let mut tried = Vec::new();
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("PIPELINE_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("pipelines"));
    for d in dirs {
        let candidate = d.join(format!("{name_or_path}.toml"));
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(format!(
        "no pipeline named `{name_or_path}`: looked for {} (set PIPELINE_DIR, or give a path)",
        tried.join(" and ")
    ))
}

/// The keys of the `[pipeline]` table.
const PIPELINE_KEYS: &[&str] = &["name", "artifact", "schedule", "timezone"];

/// Only the schedule of a pipeline file (`[pipeline] schedule` and `timezone`), without
/// checking or interpolating the rest: `pipeline status` and `pipeline daemon` read it
/// where the variables the stages need may not be set.
pub fn schedule_of(file: &Path) -> Result<Option<Schedule>, ConfigError> {
    let text = read(file)?;
    let env = |name: &str| std::env::var(name).ok();
    let mut p = Parser::new(file, &text, &env);
    let root = p.root()?.into_inner();
    let Some(v) = get(&root, "pipeline") else {
        return Ok(None);
    };
    let t = p.table(v, "pipeline")?;
    p.schedule(t)
}

/// Reads and checks a pipeline file, reading environment variables from the process.
pub fn load(file: &Path) -> Result<Pipeline, ConfigError> {
    let text = read(file)?;
    parse(file, &text, &|name| std::env::var(name).ok())
}

/// Parses pipeline text; `env` looks up variables (tests pass their own).
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    Parser::new(file, text, env).pipeline()
}

/// The text of a pipeline file.
fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        loc: None,
        key: String::new(),
        message: format!("cannot read the pipeline file: {e}"),
    })
}

struct Parser<'a> {
    file: &'a Path,
    text: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    secrets: Redactor,
    /// Every variable interpolated so far (a stage key's are taken after reading it).
    vars_read: Vec<String>,
}

type Table<'i> = DeTable<'i>;
type Val<'i> = Spanned<DeValue<'i>>;

impl<'a> Parser<'a> {
    fn new(file: &'a Path, text: &'a str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Parser {
            file,
            text,
            env,
            secrets: Redactor::default(),
            vars_read: Vec::new(),
        }
    }

    fn loc(&self, offset: usize) -> Loc {
        let mut end = offset.min(self.text.len());
        // A span may end inside a multi-byte character of a broken file: never split one.
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let before = &self.text[..end];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Loc { line, col }
    }

    fn err(&self, offset: Option<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            loc: offset.map(|o| self.loc(o)),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The file's TOML, parsed.
    fn root(&self) -> Result<Spanned<Table<'a>>, ConfigError> {
        DeTable::parse(self.text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            self.err(offset, "", format!("invalid TOML: {}", e.message().trim()))
        })
    }

    fn pipeline(mut self) -> Result<Pipeline, ConfigError> {
        let root = self.root()?;
        let root_start = root.span().start;
        let root = root.into_inner();
        check_keys(
            &self,
            &root,
            "",
            &[
                "pipeline",
                "source",
                "transform",
                "sink",
                "notify",
                "retention",
                "signing",
                "metrics",
            ],
        )?;

        let default_name = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut name, mut artifact) = (default_name, "backup-{time}".to_string());
        let mut schedule = None;
        if let Some(v) = get(&root, "pipeline") {
            let t = self.table(v, "pipeline")?;
            check_keys(&self, t, "pipeline", PIPELINE_KEYS)?;
            schedule = self.schedule(t)?;
            if let Some(v) = get(t, "name") {
                name = self.string(v, "pipeline.name")?;
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(self.err(
                        Some(v.span().start),
                        "pipeline.name",
                        "use letters, digits, `-`, `_` and `.` only",
                    ));
                }
            }
            if let Some(v) = get(t, "artifact") {
                artifact = self.string(v, "pipeline.artifact")?;
                crate::naming::NameTemplate::parse(&artifact, &[]).map_err(|e| {
                    self.err(Some(v.span().start), "pipeline.artifact", e.to_string())
                })?;
            }
        }

        let source_v = get(&root, "source").ok_or_else(|| {
            self.err(
                Some(root_start),
                "source",
                "missing: a pipeline needs a [source] table",
            )
        })?;
        let source = self.stage(source_v, Role::Source, "source".into())?;

        let mut transforms = Vec::new();
        if let Some(v) = get(&root, "transform") {
            for (i, item) in self.array(v, "transform")?.iter().enumerate() {
                transforms.push(self.stage(item, Role::Transform, format!("transform[{i}]"))?);
            }
        }

        let sink_v = get(&root, "sink").ok_or_else(|| {
            self.err(
                Some(root_start),
                "sink",
                "missing: a pipeline needs at least one [[sink]] table",
            )
        })?;
        let mut sinks: Vec<Stage> = Vec::new();
        for (i, item) in self.array(sink_v, "sink")?.iter().enumerate() {
            let s = self.stage(item, Role::Sink, format!("sink[{i}]"))?;
            if sinks.iter().any(|o| o.name == s.name) {
                return Err(self.err(
                    Some(item.span().start),
                    &format!("sink[{i}].name"),
                    format!(
                        "two sinks are named `{}`: give each a distinct `name`",
                        s.name
                    ),
                ));
            }
            sinks.push(s);
        }
        if sinks.is_empty() {
            return Err(self.err(
                Some(sink_v.span().start),
                "sink",
                "at least one [[sink]] is needed",
            ));
        }
        let mut names: Vec<&str> = transforms.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(self.err(
                None,
                "transform",
                format!(
                    "two transforms are named `{}`: give each a distinct `name`",
                    w[0]
                ),
            ));
        }

        let mut notify: Vec<Notify> = Vec::new();
        if let Some(v) = get(&root, "notify") {
            for (i, item) in self.array(v, "notify")?.iter().enumerate() {
                let n = self.notify(item, format!("notify[{i}]"))?;
                if notify.iter().any(|o| o.stage.name == n.stage.name) {
                    return Err(self.err(
                        Some(item.span().start),
                        &format!("notify[{i}].name"),
                        format!(
                            "two notifiers are named `{}`: give each a distinct `name`",
                            n.stage.name
                        ),
                    ));
                }
                notify.push(n);
            }
        }

        let retention = match get(&root, "retention") {
            Some(v) => Some(self.retention(v)?),
            None => None,
        };

        let signing = match get(&root, "signing") {
            Some(v) => Some(self.signing(v)?),
            None => None,
        };

        let metrics = match get(&root, "metrics") {
            Some(v) => self.metrics(v)?,
            None => None,
        };

        Ok(Pipeline {
            name,
            file: self.file.to_path_buf(),
            artifact,
            source,
            transforms,
            sinks,
            notify,
            retention,
            signing,
            metrics,
            schedule,
            secrets: std::mem::take(&mut self.secrets),
        })
    }

    /// `schedule` (a cron expression, [`crate::schedule`]) and `timezone` (an IANA name;
    /// default UTC) of the `[pipeline]` table.
    fn schedule(&mut self, t: &Table<'_>) -> Result<Option<Schedule>, ConfigError> {
        let tz = match get(t, "timezone") {
            Some(v) => {
                let name = self.string(v, "pipeline.timezone")?;
                if get(t, "schedule").is_none() {
                    return Err(self.err(
                        Some(v.span().start),
                        "pipeline.timezone",
                        "is the time zone of `schedule`, which is missing",
                    ));
                }
                crate::schedule::time_zone(name.trim())
                    .map_err(|e| self.err(Some(v.span().start), "pipeline.timezone", e.0))?
            }
            None => jiff::tz::TimeZone::UTC,
        };
        let Some(v) = get(t, "schedule") else {
            return Ok(None);
        };
        let text = self.string(v, "pipeline.schedule")?;
        Schedule::parse(&text, tz)
            .map(Some)
            .map_err(|e| self.err(Some(v.span().start), "pipeline.schedule", e.0))
    }

    fn retention(&mut self, v: &Val<'_>) -> Result<Policy, ConfigError> {
        let t = self.table(v, "retention")?;
        check_keys(
            self,
            t,
            "retention",
            &["days", "keep_last", "daily", "weekly", "monthly"],
        )?;
        let mut count = |key: &str| -> Result<Option<u32>, ConfigError> {
            get(t, key)
                .map(|v| self.u32(v, &format!("retention.{key}")))
                .transpose()
        };
        let policy = Policy {
            days: count("days")?,
            keep_last: count("keep_last")?.unwrap_or(1),
            daily: count("daily")?,
            weekly: count("weekly")?,
            monthly: count("monthly")?,
        };
        Ok(policy)
    }

    /// `[metrics]`: `textfile`, the `.prom` file to write, and/or `pushgateway`, the URL of a
    /// Pushgateway (with `job`). An empty value is no value, so
    /// `textfile = "${env:PIPELINE_METRICS_FILE:-}"` lets a machine without node_exporter
    /// skip it.
    fn metrics(&mut self, v: &Val<'_>) -> Result<Option<MetricsSettings>, ConfigError> {
        let t = self.table(v, "metrics")?;
        check_keys(self, t, "metrics", &["textfile", "pushgateway", "job"])?;
        let mut text = |key: &str| -> Result<Option<(String, usize)>, ConfigError> {
            let Some(v) = get(t, key) else {
                return Ok(None);
            };
            let value = self.string(v, &format!("metrics.{key}"))?;
            Ok((!value.trim().is_empty()).then_some((value, v.span().start)))
        };
        let textfile = text("textfile")?;
        let pushgateway = text("pushgateway")?;
        let job = text("job")?;
        if get(t, "textfile").is_none() && get(t, "pushgateway").is_none() {
            return Err(self.err(
                Some(v.span().start),
                "metrics.textfile",
                "missing: the file to write the metrics to, e.g. \
                 textfile = \"/var/lib/prometheus/node-exporter/pipeline-nightly.prom\", \
                 and/or `pushgateway = \"http://host:9091\"`",
            ));
        }
        if let Some((value, at)) = &textfile
            && !value.ends_with(".prom")
        {
            return Err(self.err(
                Some(*at),
                "metrics.textfile",
                format!(
                    "`{value}` does not end in `.prom`: node_exporter's textfile collector \
                     reads only *.prom files"
                ),
            ));
        }
        if let Some((value, at)) = &pushgateway
            && (!(value.starts_with("http://") || value.starts_with("https://"))
                || value.contains('@'))
        {
            return Err(self.err(
                Some(*at),
                "metrics.pushgateway",
                // The value is not repeated: it may hold a password.
                "not a Pushgateway URL: write e.g. \"http://pushgateway:9091\" (http or \
                 https, no user or password)",
            ));
        }
        let job = match job {
            Some((value, at)) => {
                if !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(self.err(
                        Some(at),
                        "metrics.job",
                        "use letters, digits, `-`, `_` and `.` only",
                    ));
                }
                value
            }
            None => "pipeline".into(),
        };
        if textfile.is_none() && pushgateway.is_none() {
            return Ok(None);
        }
        Ok(Some(MetricsSettings {
            textfile: textfile.map(|(v, _)| absolute(Path::new(&v))),
            pushgateway: pushgateway.map(|(v, _)| v),
            job,
        }))
    }

    /// `[signing]`: `key` (+ `passphrase`) to sign, `allowed_signers` + `principal` to check.
    /// An empty value is no value, so `key = "${env:PIPELINE_SIGNING_KEY:-}"` lets the same
    /// file serve a machine that only verifies.
    fn signing(&mut self, v: &Val<'_>) -> Result<SigningSettings, ConfigError> {
        let t = self.table(v, "signing")?;
        check_keys(
            self,
            t,
            "signing",
            &["key", "passphrase", "allowed_signers", "principal"],
        )?;
        let mut text = |key: &str| -> Result<Option<Setting<String>>, ConfigError> {
            let Some(v) = get(t, key) else {
                return Ok(None);
            };
            let value = self.string(v, &format!("signing.{key}"))?;
            Ok((!value.trim().is_empty()).then(|| Setting {
                value,
                loc: self.loc(v.span().start),
            }))
        };
        let path = |s: Setting<String>| Setting {
            value: absolute(Path::new(&s.value)),
            loc: s.loc,
        };
        let key = text("key")?.map(path);
        let passphrase = text("passphrase")?.map(|s| s.value);
        let allowed_signers = text("allowed_signers")?.map(path);
        let principal = text("principal")?;
        if let Some(pass) = &passphrase {
            // The passphrase is masked wherever it would appear, like a password.
            self.secrets.add(pass);
        }
        if let Some(p) = &principal
            && (p.value.contains(char::is_whitespace) || p.value.contains(','))
        {
            return Err(self.err(
                get(t, "principal").map(|v| v.span().start),
                "signing.principal",
                format!(
                    "`{}` is not one principal: no spaces or commas (an allowed-signers file \
                     lists principals separated by commas)",
                    p.value
                ),
            ));
        }
        let at = Some(v.span().start);
        match (&allowed_signers, &principal) {
            (Some(_), None) => {
                return Err(self.err(
                    at,
                    "signing.principal",
                    "missing: `allowed_signers` needs the principal whose keys may sign \
                     (the first field of its lines), e.g. principal = \"backups@example.com\"",
                ));
            }
            (None, Some(_)) => {
                return Err(self.err(
                    at,
                    "signing.allowed_signers",
                    "missing: `principal` needs the allowed-signers file that lists its keys",
                ));
            }
            _ => {}
        }
        if passphrase.is_some() && key.is_none() {
            return Err(self.err(
                at,
                "signing.key",
                "missing: `passphrase` is for the private key given in `key`",
            ));
        }
        Ok(SigningSettings {
            key,
            passphrase,
            allowed_signers,
            principal,
        })
    }

    /// A `[[notify]]` table: a stage whose `on` key the host reads.
    fn notify(&mut self, v: &Val<'_>, path: String) -> Result<Notify, ConfigError> {
        let mut on = NotifyOn::DEFAULT.to_vec();
        if let Some(list) = get(self.table(v, &path)?, "on") {
            let key = format!("{path}.on");
            on.clear();
            for item in self.array(list, &key)? {
                let s = self.string(item, &key)?;
                let event = NotifyOn::ALL
                    .into_iter()
                    .find(|e| e.as_str() == s)
                    .ok_or_else(|| {
                        self.err(
                            Some(item.span().start),
                            &key,
                            format!(
                                "`{s}` is not an event: write any of \"start\", \"success\", \"failure\""
                            ),
                        )
                    })?;
                if !on.contains(&event) {
                    on.push(event);
                }
            }
            if on.is_empty() {
                return Err(self.err(
                    Some(list.span().start),
                    &key,
                    "an empty list tells the notifier nothing: name the events (\"start\", \"success\", \"failure\") or remove the table",
                ));
            }
            on.sort();
        }
        let stage = self.stage(v, Role::Notifier, path)?;
        Ok(Notify { stage, on })
    }

    fn stage(&mut self, v: &Val<'_>, role: Role, path: String) -> Result<Stage, ConfigError> {
        let t = self.table(v, &path)?;
        let loc = self.loc(v.span().start);
        let plugin_v = get(t, "plugin").ok_or_else(|| {
            self.err(
                Some(v.span().start),
                &format!("{path}.plugin"),
                "missing: say which plugin runs this stage",
            )
        })?;
        let plugin_s = self.string(plugin_v, &format!("{path}.plugin"))?;
        let plugin = if plugin_s.starts_with(crate::oci::reference::SCHEME) {
            PluginRef::Oci(crate::oci::Reference::parse(&plugin_s).map_err(|e| {
                self.err(
                    Some(plugin_v.span().start),
                    &format!("{path}.plugin"),
                    format!("`{plugin_s}`: {e}"),
                )
            })?)
        } else if plugin_s.ends_with(".wasm") || plugin_s.contains('/') {
            let p = Path::new(&plugin_s);
            let base = self.file.parent().unwrap_or(Path::new("."));
            PluginRef::File(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            })
        } else {
            PluginRef::Builtin(plugin_s.clone())
        };
        let name = match get(t, "name") {
            Some(v) => {
                let n = self.string(v, &format!("{path}.name"))?;
                if n.is_empty()
                    || !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
                {
                    return Err(self.err(
                        Some(v.span().start),
                        &format!("{path}.name"),
                        "use letters, digits, `-` and `_` only",
                    ));
                }
                n
            }
            None => match (&plugin, role) {
                (_, Role::Source) => "source".to_string(),
                (PluginRef::Builtin(n), _) => n.clone(),
                (PluginRef::Oci(r), _) => r.short_name().to_string(),
                (PluginRef::File(p), _) => p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "plugin".into()),
            },
        };
        let allow = match get(t, "allow") {
            Some(v) => self.allow(v, &format!("{path}.allow"))?,
            None => Allow::default(),
        };
        let limits = match get(t, "limits") {
            Some(v) => self.limits(v, role, &format!("{path}.limits"))?,
            None => Limits::default_for(role),
        };
        let mut config = serde_json::Map::new();
        let mut key_locs = BTreeMap::new();
        let mut key_vars = BTreeMap::new();
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            if ["plugin", "name", "allow", "limits"].contains(&key)
                || (role == Role::Notifier && key == "on")
            {
                continue;
            }
            key_locs.insert(key.to_string(), self.loc(k.span().start));
            self.vars_read.clear();
            config.insert(key.to_string(), self.json(v, &format!("{path}.{key}"))?);
            key_vars.insert(key.to_string(), std::mem::take(&mut self.vars_read));
        }
        Ok(Stage {
            role,
            name,
            plugin,
            config,
            key_locs,
            key_vars,
            loc,
            path,
            allow,
            limits,
        })
    }

    fn allow(&mut self, v: &Val<'_>, path: &str) -> Result<Allow, ConfigError> {
        let t = self.table(v, path)?;
        let mut allow = Allow::default();
        for (k, v) in t.iter() {
            let name: &str = k.get_ref().as_ref();
            let key = format!("{path}.{name}");
            let mut values = Vec::new();
            for item in self.array(v, &key)? {
                let s = self.string(item, &key)?;
                values.push((s, self.loc(item.span().start)));
            }
            allow.keys.insert(
                name.to_string(),
                AllowKey {
                    loc: self.loc(k.span().start),
                    values,
                },
            );
        }
        Ok(allow)
    }

    fn limits(&mut self, v: &Val<'_>, role: Role, path: &str) -> Result<Limits, ConfigError> {
        let t = self.table(v, path)?;
        check_keys(self, t, path, &["timeout", "memory"])?;
        let mut limits = Limits::default_for(role);
        if let Some(v) = get(t, "timeout") {
            let key = format!("{path}.timeout");
            let s = self.scalar_text(v, &key)?;
            limits.timeout = parse_duration(&s).ok_or_else(|| {
                self.err(
                    Some(v.span().start),
                    &key,
                    format!(
                        "`{s}` is not a duration: write e.g. \"90s\", \"30m\", \"6h\" or \"1d\""
                    ),
                )
            })?;
        }
        if let Some(v) = get(t, "memory") {
            let key = format!("{path}.memory");
            let s = self.scalar_text(v, &key)?;
            limits.memory = parse_size(&s).ok_or_else(|| {
                self.err(
                    Some(v.span().start),
                    &key,
                    format!("`{s}` is not a size: write e.g. \"256MiB\" or \"1GiB\""),
                )
            })?;
        }
        Ok(limits)
    }

    fn table<'v, 'i>(&self, v: &'v Val<'i>, key: &str) -> Result<&'v Table<'i>, ConfigError> {
        v.get_ref().as_table().ok_or_else(|| {
            self.err(
                Some(v.span().start),
                key,
                format!("expected a table, found {}", v.get_ref().type_str()),
            )
        })
    }

    fn array<'v, 'i>(&self, v: &'v Val<'i>, key: &str) -> Result<Vec<&'v Val<'i>>, ConfigError> {
        match v.get_ref() {
            DeValue::Array(a) => Ok(a.iter().collect()),
            other => Err(self.err(
                Some(v.span().start),
                key,
                format!("expected an array, found {}", other.type_str()),
            )),
        }
    }

    /// An interpolated string value.
    fn string(&mut self, v: &Val<'_>, key: &str) -> Result<String, ConfigError> {
        match v.get_ref() {
            DeValue::String(s) => self.interp(s, v.span().start, key).map(|(s, _)| s),
            other => Err(self.err(
                Some(v.span().start),
                key,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    fn interp(
        &mut self,
        s: &str,
        offset: usize,
        key: &str,
    ) -> Result<(String, Vec<String>), ConfigError> {
        let out = interpolate(s, self.env).map_err(|e| self.err(Some(offset), key, e))?;
        self.secrets.add_url_password(&out.value);
        self.vars_read.extend(out.vars.iter().cloned());
        Ok((out.value, out.vars))
    }

    /// The text of an integer or string value (strings interpolated), for numbers and sizes
    /// that may come from environment variables.
    fn scalar_text(&mut self, v: &Val<'_>, key: &str) -> Result<String, ConfigError> {
        match v.get_ref() {
            DeValue::Integer(i) => Ok(integer(i)
                .map(|i| i.to_string())
                .unwrap_or_else(|| i.as_str().to_string())),
            DeValue::String(s) => self.interp(s, v.span().start, key).map(|(s, _)| s),
            other => Err(self.err(
                Some(v.span().start),
                key,
                format!("expected a number or a string, found {}", other.type_str()),
            )),
        }
    }

    fn u32(&mut self, v: &Val<'_>, key: &str) -> Result<u32, ConfigError> {
        let (text, vars) = match v.get_ref() {
            DeValue::String(s) => self.interp(s, v.span().start, key)?,
            _ => (self.scalar_text(v, key)?, Vec::new()),
        };
        text.trim().parse::<u32>().map_err(|_| {
            let from = from_vars(&vars);
            self.err(
                Some(v.span().start),
                key,
                format!("expected a whole number ≥ 0, got `{text}`{from}"),
            )
        })
    }

    fn json(&mut self, v: &Val<'_>, key: &str) -> Result<Json, ConfigError> {
        Ok(match v.get_ref() {
            DeValue::String(s) => Json::String(self.interp(s, v.span().start, key)?.0),
            DeValue::Integer(i) => Json::from(
                integer(i)
                    .ok_or_else(|| self.err(Some(v.span().start), key, "integer out of range"))?,
            ),
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Json::Number)
                .ok_or_else(|| self.err(Some(v.span().start), key, "not a finite number"))?,
            DeValue::Boolean(b) => Json::Bool(*b),
            DeValue::Datetime(d) => Json::String(d.to_string()),
            DeValue::Array(a) => {
                let mut out = Vec::new();
                for (i, item) in a.iter().enumerate() {
                    out.push(self.json(item, &format!("{key}[{i}]"))?);
                }
                Json::Array(out)
            }
            DeValue::Table(t) => {
                let mut out = serde_json::Map::new();
                for (k, item) in t.iter() {
                    let k = k.get_ref().as_ref();
                    out.insert(k.to_string(), self.json(item, &format!("{key}.{k}"))?);
                }
                Json::Object(out)
            }
        })
    }
}

/// ` (from ${env:A}, ${env:B})`, or nothing when the value was written in the file.
pub fn from_vars(vars: &[String]) -> String {
    if vars.is_empty() {
        String::new()
    } else {
        format!(" (from ${{env:{}}})", vars.join("}, ${env:"))
    }
}

/// A boolean or integer plugin key given as text (`${env:…}` always gives text), read as
/// the type the plugin declares; other values are returned as they are. The error says
/// what is wrong with the text; the caller names the key and the variable.
pub fn typed_value(value: &Json, integer: bool) -> Result<Json, String> {
    let Some(text) = value.as_str() else {
        return Ok(value.clone());
    };
    let text = text.trim();
    if integer {
        text.parse::<i64>()
            .map(Json::from)
            .map_err(|_| format!("`{text}` is not an integer"))
    } else {
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(Json::Bool(true)),
            "false" | "no" | "off" | "0" | "" => Ok(Json::Bool(false)),
            _ => Err(format!("`{text}` is not a boolean: write true or false")),
        }
    }
}

fn get<'t, 'i>(t: &'t Table<'i>, key: &str) -> Option<&'t Val<'i>> {
    t.iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

fn check_keys(
    p: &Parser<'_>,
    t: &Table<'_>,
    path: &str,
    allowed: &[&str],
) -> Result<(), ConfigError> {
    for (k, _) in t.iter() {
        let key = k.get_ref().as_ref();
        if !allowed.contains(&key) {
            let full = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            return Err(p.err(
                Some(k.span().start),
                &full,
                format!("unknown key (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn integer(i: &toml::de::DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
}

/// Makes a path absolute against the working directory, without touching the file system.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// "90s", "30m", "6h", "1d", or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" | "min" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// "256MiB", "1GiB", "512KiB", "100MB", or plain bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

#[cfg(test)]
mod tests;
