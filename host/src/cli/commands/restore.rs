//! `pipeline restore` and `pipeline verify`: the backup chosen on the command line, the
//! target given there or in the environment (a secret from then on).

use anyhow::Result;

use crate::cli::Context;
use crate::cli::args::PickArgs;
use crate::error::{RunFailed, UsageError};
use crate::{logging, restore, stages};

pub fn restore(
    cx: &Context,
    pipeline: &str,
    pick: &PickArgs,
    to: Option<&String>,
    yes: bool,
    allow_non_empty: bool,
) -> Result<()> {
    let pick = pick_of(pick)?;
    let target = restore_target(to, "--to", "PIPELINE_RESTORE_TO")?;
    let engine = cx.engine()?;
    let p = stages::load(engine, pipeline)?;
    let (to, to_option) = match target {
        Some((to, from)) => (Some(to), from),
        None => (None, "--to".to_string()),
    };
    let args = restore::RestoreArgs {
        pick,
        to,
        to_option,
        yes: Some(yes),
        allow_non_empty,
    };
    let r = restore::restore(engine, &p, &args)?;
    logging::info(
        None,
        &format!(
            "restored {} from sink `{}` in {:.1}s: {}",
            r.backup,
            r.sink,
            r.seconds,
            print_report(&r.report)
        ),
    );
    Ok(())
}

pub fn verify(
    cx: &Context,
    pipeline: &str,
    pick: &PickArgs,
    restore_into: Option<&String>,
) -> Result<()> {
    let pick = pick_of(pick)?;
    let restore_into = restore_target(restore_into, "--restore-into", "PIPELINE_VERIFY_INTO")?;
    let engine = cx.engine()?;
    let p = stages::load(engine, pipeline)?;
    // Refuse a wrong target before reading anything.
    if let Some((url, from)) = &restore_into {
        restore::check_target(engine, &p, from, url, None)?;
    }
    let checked = restore::verify(engine, &p, &pick)?;
    let mut failed = 0;
    let mut good: Option<(String, String)> = None;
    for c in &checked {
        let backup = c.backup.as_deref().unwrap_or("-");
        match &c.result {
            Ok(msg) => {
                println!("ok      sink {}: {backup}: {msg}", c.sink);
                good.get_or_insert((c.sink.clone(), backup.to_string()));
            }
            Err(msg) => {
                failed += 1;
                println!("FAILED  sink {}: {backup}: {msg}", c.sink);
            }
        }
    }
    if let (Some((url, from)), Some((sink, backup))) = (restore_into, &good) {
        let args = restore::RestoreArgs {
            pick: restore::Pick {
                backup: Some(backup.clone()),
                at: None,
                from: Some(sink.clone()),
            },
            to: Some(url),
            to_option: from,
            yes: None,
            allow_non_empty: false,
        };
        match restore::restore(engine, &p, &args) {
            Ok(r) => println!(
                "ok      restore of {} from sink {}: {:.1}s, {}",
                r.backup,
                r.sink,
                r.seconds,
                print_report(&r.report)
            ),
            Err(e) => {
                failed += 1;
                println!(
                    "FAILED  restore of {backup} from sink {sink}: {}",
                    logging::redact(&format!("{e:#}"))
                );
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(RunFailed(format!("{failed} check(s) failed")));
    }
    Ok(())
}

fn pick_of(args: &PickArgs) -> Result<restore::Pick> {
    Ok(restore::Pick {
        backup: args.backup.clone(),
        at: args.at.as_deref().map(restore::parse_at).transpose()?,
        from: args.from.clone(),
    })
}

/// A restore target from the command line (`option`) or, without it, the variable `var`,
/// with the name of the one it came from. The target is a secret from here on; one given
/// on the command line with a password in it gets a warning, since every user of the
/// machine can read a command line.
fn restore_target(
    argv: Option<&String>,
    option: &str,
    var: &str,
) -> Result<Option<(String, String)>> {
    let (value, from) = match argv {
        Some(v) => (v.clone(), option.to_string()),
        None => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => (v, var.to_string()),
            Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!(UsageError(format!("{var}: not valid UTF-8")))
            }
        },
    };
    // What a target must be depends on the source (a connection string, or a path for
    // `sqlite` and `files`): `restore::check_target` checks it once the pipeline is loaded.
    // A connection string is registered as a secret here (a bare word or a path registered
    // would mask that word in every message).
    let Ok(target) = restore::Target::parse(&value) else {
        return Ok(Some((value, from)));
    };
    let mut secrets = crate::redact::Redactor::default();
    secrets.add(&value);
    logging::add_secrets(&secrets);
    if argv.is_some() && target.has_password {
        logging::warn(
            None,
            &format!(
                "{option} holds a password, and a command line is readable by every user of this \
                 machine (ps, /proc): give the target in {var} instead, or keep the password in \
                 ~/.pgpass"
            ),
        );
    }
    Ok(Some((value, from)))
}

fn print_report(report: &restore::Report) -> String {
    report
        .facts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
