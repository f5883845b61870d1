//! The errors that decide how the process exits, and the one function that maps a command's
//! result to its exit code (the README's "Exit codes" table).
//!
//! | error | exit code | logged as |
//! |---|---|---|
//! | [`UsageError`], [`ConfigError`] | 2 | `configuration error: …` |
//! | [`Locked`] | 3 | `not started: …` |
//! | [`RunFailed`] (and anything else) | 1 | `run failed: …` |
//! | a run stopped ([`Reason`]): a signal, a time limit | 128 + signal, or 1 | `run stopped: …`, `run failed: …` |
//!
//! A stage's failure ([`StageFailure`]) is a [`Blame::Cause`] or a [`Blame::Consequence`] of
//! a neighbour's; a failed run names its causes ([`root_causes`]).
//!
//! Every module that fails in one of these ways imports its error from here; nothing below
//! the command line imports from [`crate::cli`]. This module depends on no other module of
//! the crate but [`crate::config`], whose [`ConfigError`] (it carries the file, line and key)
//! stays beside the parser that makes it.

use std::time::Duration;

pub use crate::config::ConfigError;

/// Exit codes, stable and documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    /// The run started and failed (dump, a sink, pruning); earlier backups are untouched.
    pub const FAILED: u8 = 1;
    /// The pipeline file or the command line is wrong; nothing was done.
    pub const CONFIG: u8 = 2;
    /// Another run of the same pipeline holds the lock; nothing was done.
    pub const LOCKED: u8 = 3;
    // Stopped by SIGHUP, SIGINT or SIGTERM: 128 + the signal (129, 130, 143), see
    // `Reason::exit_code`.
}

/// A wrong command line or pipeline name (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A run (or restore, or a verify check) that failed after it started (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(pub String);

/// Another run holds the pipeline's lock (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error(
    "another run of pipeline `{name}` is in progress{holder} (lock {path}); this run did nothing"
)]
pub struct Locked {
    pub name: String,
    pub holder: String,
    pub path: String,
}

/// Phrase of every error caused by a cancellation; the runner reports the reason instead.
pub const STOPPED: &str = "the run was stopped";

/// Why the run was stopped ([`crate::shutdown`] stops it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A stage ran past its `limits.timeout`.
    Timeout { stage: String, limit: Duration },
    /// A signal (SIGTERM, SIGINT, SIGHUP).
    Signal(i32),
}

impl Reason {
    /// The process's exit code for this reason: 128 + the signal, 1 for a timeout.
    pub fn exit_code(&self) -> u8 {
        match self {
            Reason::Timeout { .. } => exit::FAILED,
            Reason::Signal(s) => u8::try_from(128 + s).unwrap_or(exit::FAILED),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Timeout { stage, limit } => write!(
                f,
                "stage `{stage}` ran longer than its time limit ({}); raise `limits.timeout` if that is expected",
                humantime(*limit)
            ),
            Reason::Signal(s) => write!(f, "received {}", signal_name(*s)),
        }
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

pub fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The error a stage sees when the run was stopped under it.
#[derive(Debug, thiserror::Error)]
#[error("{STOPPED}: {0}")]
pub struct Cancelled(pub Reason);

/// Whether a stage's failure is its own or only reports a neighbour's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The stage failed for a reason of its own: the run names it.
    Cause,
    /// The stage stopped because a neighbouring stage failed, or the run was stopped: the
    /// run names the neighbour's error (or the reason) instead, and logs this one at debug.
    Consequence,
}

/// One stage's failure among the stages of a chain that ran together (a run, a read-back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    /// The stage's label in the log (`source`, `sink local`, `decoding`).
    pub stage: String,
    pub message: String,
    pub blame: Blame,
}

/// Of the failures of a chain, the causes, in order; all of them if none stands out.
pub fn root_causes(failures: &[StageFailure]) -> Vec<&StageFailure> {
    let causes: Vec<_> = failures
        .iter()
        .filter(|f| f.blame == Blame::Cause)
        .collect();
    if causes.is_empty() {
        failures.iter().collect()
    } else {
        causes
    }
}

/// How a command ends: the exit code, and the line to log about it (if any).
#[derive(Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: u8,
    pub log: Option<Log>,
}

/// The last line of a command that did not simply succeed.
#[derive(Debug, PartialEq, Eq)]
pub enum Log {
    Warn(String),
    Error(String),
}

/// The exit code of a command's result, and the line that says why. `stopped` is why the
/// run was stopped, if it was ([`crate::shutdown::reason`]).
///
/// A stopped run exits with the signal's code (or 1 for a time limit), whatever its stages
/// reported; the log says why it was stopped. A signal that came as the command completed
/// still gives the signal's code: the caller asked it to stop. Otherwise the error decides:
/// [`Locked`] is 3, [`ConfigError`] and [`UsageError`] are 2, anything else is 1 — except a
/// closed stdout (`pipeline list | head`), which is not a failure.
pub fn exit(result: &anyhow::Result<()>, stopped: Option<&Reason>) -> Exit {
    if let Some(reason) = stopped {
        let code = reason.exit_code();
        return match result {
            Ok(()) => Exit {
                // A time limit that fired as the command completed: it completed.
                code: if code == exit::FAILED { exit::OK } else { code },
                log: Some(Log::Warn(format!(
                    "{reason} near the end: the command completed"
                ))),
            },
            Err(e) => {
                let what = match reason {
                    Reason::Signal(_) => "run stopped",
                    Reason::Timeout { .. } => "run failed",
                };
                Exit {
                    code,
                    log: Some(Log::Error(format!("{what}: {reason}: {e:#}"))),
                }
            }
        };
    }
    let e = match result {
        Ok(()) => {
            return Exit {
                code: exit::OK,
                log: None,
            };
        }
        Err(e) => e,
    };
    if e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    {
        return Exit {
            code: exit::OK,
            log: None,
        };
    }
    let (code, what) = if e.is::<Locked>() {
        (exit::LOCKED, "not started")
    } else if e.is::<ConfigError>() || e.is::<UsageError>() {
        (exit::CONFIG, "configuration error")
    } else {
        (exit::FAILED, "run failed")
    };
    Exit {
        code,
        log: Some(Log::Error(format!("{what}: {e:#}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn code(result: anyhow::Result<()>) -> u8 {
        exit(&result, None).code
    }

    #[test]
    fn each_error_has_its_documented_exit_code() {
        assert_eq!(code(Ok(())), 0);
        assert_eq!(code(Err(RunFailed("x".into()).into())), 1);
        assert_eq!(code(Err(anyhow::anyhow!("anything else"))), 1);
        assert_eq!(code(Err(UsageError("x".into()).into())), 2);
        let config = ConfigError {
            file: "p.toml".into(),
            loc: None,
            key: "k".into(),
            message: "m".into(),
        };
        assert_eq!(code(Err(config.into())), 2);
        let locked = Locked {
            name: "n".into(),
            holder: String::new(),
            path: "l".into(),
        };
        assert_eq!(code(Err(locked.into())), 3);
        let pipe = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "closed");
        assert_eq!(code(Err(pipe.into())), 0);
    }

    #[test]
    fn root_causes_are_the_causes_or_else_everything() {
        let f = |stage: &str, blame| StageFailure {
            stage: stage.into(),
            message: "m".into(),
            blame,
        };
        let mixed = [
            f("source", Blame::Consequence),
            f("sink a", Blame::Cause),
            f("sink b", Blame::Consequence),
        ];
        let shown: Vec<&str> = root_causes(&mixed)
            .iter()
            .map(|f| f.stage.as_str())
            .collect();
        assert_eq!(shown, ["sink a"]);
        let none = [
            f("source", Blame::Consequence),
            f("sink", Blame::Consequence),
        ];
        assert_eq!(root_causes(&none).len(), 2);
    }

    #[test]
    fn context_keeps_the_code_and_adds_to_the_line() {
        let r: anyhow::Result<()> = Err(UsageError("bad".into())).context("while parsing");
        assert_eq!(
            exit(&r, None),
            Exit {
                code: 2,
                log: Some(Log::Error("configuration error: while parsing: bad".into())),
            }
        );
    }

    #[test]
    fn a_stopped_run_exits_with_the_reason_whatever_its_stages_said() {
        let term = Reason::Signal(libc::SIGTERM);
        let failed: anyhow::Result<()> = Err(UsageError("x".into()).into());
        assert_eq!(exit(&failed, Some(&term)).code, 143);
        assert_eq!(exit(&Ok(()), Some(&term)).code, 143);
        assert_eq!(exit(&Ok(()), Some(&Reason::Signal(libc::SIGINT))).code, 130);
        let timeout = Reason::Timeout {
            stage: "s".into(),
            limit: Duration::from_secs(5),
        };
        assert_eq!(exit(&failed, Some(&timeout)).code, 1);
        assert_eq!(exit(&Ok(()), Some(&timeout)).code, 0);
        assert_eq!(
            exit(&failed, Some(&term)).log,
            Some(Log::Error("run stopped: received SIGTERM: x".into()))
        );
    }
}
