//! The run's log: human lines by default, JSON lines with `--log-format json`, always on
//! stderr, always through the [`Redactor`]. What commands print on stdout (reports, `list`,
//! `verify`, snapshot documents) goes through the same redactor: see [`stdout`].

use std::io::Write;
use std::sync::{Mutex, OnceLock, RwLock};

use crate::redact::Redactor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

struct Logger {
    format: Format,
    max: Level,
    redactor: RwLock<Redactor>,
    out: Mutex<()>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

fn logger() -> &'static Logger {
    LOGGER.get_or_init(|| Logger {
        format: Format::Human,
        max: Level::Info,
        redactor: RwLock::new(Redactor::default()),
        out: Mutex::new(()),
    })
}

/// Sets the format and the most verbose level logged (`Warn` for `--quiet`, `Debug` for
/// `-v`) once, at start-up; later calls are ignored. A panic's message goes through the
/// redactor too (it may quote a value that holds a secret).
pub fn init(format: Format, max: Level) {
    let _ = LOGGER.set(Logger {
        format,
        max,
        redactor: RwLock::new(Redactor::default()),
        out: Mutex::new(()),
    });
    std::panic::set_hook(Box::new(|info| {
        let line = format!("{}\n", redact(&info.to_string()));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }));
}

/// Adds the secrets of a loaded configuration to the redactor.
pub fn add_secrets(r: &Redactor) {
    if let Ok(mut mine) = logger().redactor.write() {
        mine.extend(r);
    }
}

/// Removes every registered secret from `s` (for errors printed outside the log).
pub fn redact(s: &str) -> String {
    match logger().redactor.read() {
        Ok(r) => r.redact(s).into_owned(),
        Err(_) => Redactor::default().redact(s).into_owned(),
    }
}

pub fn format() -> Format {
    logger().format
}

/// Writes one log line. `stage` names where it comes from (`sink local`), if anywhere.
pub fn log(level: Level, stage: Option<&str>, message: &str) {
    let l = logger();
    if level > l.max {
        return;
    }
    let message = redact(message);
    let time = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let line = match l.format {
        Format::Human => match stage {
            Some(stage) => format!(
                "{time} {:<5} [{stage}] {message}\n",
                level.as_str().to_uppercase()
            ),
            None => format!("{time} {:<5} {message}\n", level.as_str().to_uppercase()),
        },
        Format::Json => {
            let mut v =
                serde_json::json!({"time": time, "level": level.as_str(), "message": message});
            if let Some(stage) = stage {
                v["stage"] = stage.into();
            }
            format!("{v}\n")
        }
    };
    let _guard = l.out.lock();
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Writes a line another `pipeline` process logged (a run `pipeline daemon` started) as
/// it is, through this process's redactor.
pub fn relay(line: &str) {
    let line = format!("{}\n", redact(line.trim_end_matches(['\r', '\n'])));
    let _guard = logger().out.lock();
    let _ = std::io::stderr().write_all(line.as_bytes());
}

pub fn error(stage: Option<&str>, message: &str) {
    log(Level::Error, stage, message);
}
pub fn warn(stage: Option<&str>, message: &str) {
    log(Level::Warn, stage, message);
}
pub fn info(stage: Option<&str>, message: &str) {
    log(Level::Info, stage, message);
}
pub fn debug(stage: Option<&str>, message: &str) {
    log(Level::Debug, stage, message);
}

/// Stdout through the redactor, a line at a time (what a command prints: the JSON report,
/// `list`, `verify`, snapshot documents).
pub fn stdout() -> Stdout {
    Stdout {
        pending: Vec::new(),
    }
}

/// Prints one line on stdout through the redactor. A closed stdout is not an error here
/// (`pipeline verify | head`).
pub fn println(line: &str) {
    let mut out = stdout();
    let _ = writeln!(out, "{line}");
}

/// See [`stdout`]. Holds back a partial line until its end (or a flush), so a secret split
/// across two writes is still seen whole.
pub struct Stdout {
    pending: Vec<u8>,
}

impl Stdout {
    fn emit(&mut self, upto: usize) -> std::io::Result<()> {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        let text = redact(&String::from_utf8_lossy(&line));
        let _guard = logger().out.lock();
        std::io::stdout().write_all(text.as_bytes())
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.emit(last + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.emit(self.pending.len())?;
        }
        std::io::stdout().flush()
    }
}

impl Drop for Stdout {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
