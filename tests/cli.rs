//! The conventions of a Unix tool, on the real binary: shell completions and a man page
//! generated from the command line's definition, `--quiet`, and the systemd units in
//! contrib/systemd checked by `systemd-analyze verify`.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;

use support::PgCluster;
use support::scratch::{Scratch, nightly, repo, stderr};

/// Every subcommand path (`["snapshot", "record"]`), walked from the binary's own clap
/// definition so a command added later is checked too.
fn subcommands() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_string());
            out.push(path.clone());
            walk(sub, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(&pipeline::cli::Cli::command(), &[], &mut out);
    // The walk itself must see the tree (a flattened or renamed command would hide it).
    for expected in [
        &["run"][..],
        &["snapshot", "record"],
        &["plugins", "new"],
        &["man"],
    ] {
        assert!(out.iter().any(|p| p == expected), "{expected:?} in {out:?}");
    }
    out
}

/// The path of a program the test needs; panics with an install hint when it is missing
/// (a prerequisite is never skipped).
fn require(program: &str, package: &str) -> String {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => p.display().to_string(),
        None => panic!(
            "`{program}` is needed by this test: `apt-get install {package}` \
             (or run scripts/install-prerequisites.sh --tests)"
        ),
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `program args` with `input` on stdin.
fn pipe_into(program: &str, args: &[&str], input: &[u8], env: &[(&str, &str)]) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

fn completions(shell: &str) -> String {
    let s = Scratch::new();
    let out = s.run(&["completions", shell], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "nothing on stderr: {}",
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn bash_completions_name_every_subcommand_and_are_valid_bash() {
    let bash = require("bash", "bash");
    let script = completions("bash");
    for path in subcommands() {
        let function = format!("pipeline__subcmd__{}", path.join("__subcmd__"));
        assert!(
            script.contains(&function),
            "bash completion of {path:?}: {function}"
        );
    }
    for flag in ["--quiet", "--verbose", "--log-format", "--restore-into"] {
        assert!(script.contains(flag), "{flag} completes");
    }
    let out = pipe_into(&bash, &["-n"], script.as_bytes(), &[]);
    assert_eq!(out.status.code(), Some(0), "bash -n: {}", stderr(&out));

    // Loaded into a real bash, it registers itself for `pipeline`.
    let out = pipe_into(
        &bash,
        &["-c", "source /dev/stdin && complete -p pipeline"],
        script.as_bytes(),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("_pipeline"), "{}", stdout(&out));

    // And completes: `pipeline snapshot <TAB>` offers snapshot's subcommands.
    let out = pipe_into(
        &bash,
        &[
            "-c",
            "source /dev/stdin && COMP_WORDS=(pipeline snapshot '') && COMP_CWORD=2 && \
             _pipeline pipeline '' snapshot && printf '%s\\n' \"${COMPREPLY[@]}\"",
        ],
        script.as_bytes(),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let offered: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    for sub in ["record", "history", "show", "diff"] {
        assert!(
            offered.iter().any(|o| o == sub),
            "{sub} offered: {offered:?}"
        );
    }
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    // Generated and checked for content here; their syntax is not checked (zsh and fish
    // are not prerequisites of this project).
    let zsh = completions("zsh");
    assert!(zsh.starts_with("#compdef pipeline"), "{zsh}");
    let fish = completions("fish");
    for path in subcommands() {
        let sub = path.last().expect("a path is never empty");
        assert!(
            zsh.contains(&format!("'{sub}:")),
            "zsh completion of {path:?}"
        );
        assert!(
            fish.contains(&format!("-a \"{sub}\"")),
            "fish completion of {path:?}"
        );
    }
}

#[test]
fn unknown_shell_is_a_usage_error() {
    let s = Scratch::new();
    let out = s.run(&["completions", "tcsh"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bash"),
        "lists the shells: {}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn man_page_is_roff_that_names_every_subcommand_and_man_renders_it() {
    let man = require("man", "man-db");
    let s = Scratch::new();
    let out = s.run(&["man"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(
        page.lines().any(|l| l.starts_with(".TH pipeline 1 ")),
        "a roff title header:\n{page}"
    );
    assert!(
        page.lines().take(4).all(|l| l.starts_with('.')),
        "roff requests from the start:\n{page}"
    );
    for path in subcommands() {
        let title = format!(".SS \"pipeline {}\"", path.join(" "));
        assert!(page.contains(&title), "the page details {path:?}: {title}");
    }
    assert!(
        !page.contains("pipeline\\-run(1)"),
        "no pointer to a per-command page nobody installs"
    );

    let out = pipe_into(&man, &["-l", "-"], page.as_bytes(), &[("MANWIDTH", "100")]);
    assert_eq!(out.status.code(), Some(0), "man -l -: {}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "NAME",
        "SYNOPSIS",
        "pipeline snapshot record",
        "--restore-into",
        "--quiet",
    ] {
        assert!(
            text.contains(expected),
            "rendered page has {expected}:\n{text}"
        );
    }
    assert!(!text.contains(".TH"), "roff was interpreted:\n{text}");
}

#[test]
fn quiet_keeps_stdout_and_errors_but_drops_info_lines() {
    let s = Scratch::new();
    let file = nightly();
    let file = file.to_str().expect("utf-8 path");
    let backups = s.backups();
    let env = [
        ("DATABASE_URL", "postgresql://app@localhost/app"),
        ("BACKUP_DIR", backups.to_str().expect("utf-8 path")),
    ];

    // validate logs nothing at info: its report is on stdout, and --quiet keeps it.
    let out = s.run(&["--quiet", "validate", file], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("nightly.toml: ok"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));

    // A broken file: the error line stays, with and without --quiet.
    let broken = s.path().join("broken.toml");
    std::fs::write(&broken, "[source\nplugin = \"postgres\"\n").unwrap();
    for args in [
        &["--quiet", "validate"][..],
        &["validate", "--quiet"][..],
        &["validate"][..],
    ] {
        let mut args = args.to_vec();
        args.push(broken.to_str().unwrap());
        let out = s.run(&args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.lines()
                .any(|l| l.contains("ERROR") && l.contains("broken.toml:1:")),
            "{args:?} keeps the error line: {err}"
        );
    }
}

#[test]
fn quiet_run_logs_no_info_lines_but_a_plain_run_does() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let url = pg.url("app");
    let file = nightly();
    let file = file.to_str().expect("utf-8 path");
    for quiet in [false, true] {
        let s = Scratch::new();
        let backups = s.backups();
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("BACKUP_DIR", backups.to_str().expect("utf-8 path")),
        ];
        let args: &[&str] = if quiet {
            &["--quiet", "run", file]
        } else {
            &["run", file]
        };
        let out = s.run(args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        let info = err.lines().filter(|l| l.contains(" INFO ")).count();
        if quiet {
            assert_eq!(info, 0, "--quiet logs no info line: {err}");
            assert!(
                err.lines()
                    .all(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
                "only warnings and errors: {err}"
            );
        } else {
            assert!(info > 0, "a plain run logs info lines: {err}");
        }
        assert_eq!(
            s.files().len(),
            2,
            "the backup and its manifest: {:?}",
            s.files()
        );
    }
}

#[test]
fn quiet_with_verbose_is_a_usage_error() {
    let s = Scratch::new();
    for args in [
        &["--quiet", "-v", "validate", "x"][..],
        &["validate", "x", "-q", "--verbose"][..],
    ] {
        let out = s.run(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// The units in contrib/systemd, as `systemd-analyze verify` sees them for an instance
/// (`pipeline@nightly`), with ExecStart pointed at the binary under test and this build's
/// man page on MANPATH (the units' `Documentation=man:pipeline(1)` is checked too).
#[test]
fn systemd_units_verify_and_give_pipeline_its_grace_period() {
    let analyze = require("systemd-analyze", "systemd");
    // systemd-analyze checks `Documentation=man:pipeline(1)` by running man.
    require("man", "man-db");
    let s = Scratch::new();
    let units = s.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let contrib = repo().join("contrib/systemd");
    let service = std::fs::read_to_string(contrib.join("pipeline@.service")).unwrap();
    let timer = std::fs::read_to_string(contrib.join("pipeline@.timer")).unwrap();

    // What the brief of these units promises, read from the files themselves.
    let setting = |text: &str, key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(setting(&service, "Type"), ["oneshot"]);
    assert_eq!(
        setting(&service, "ExecStart"),
        ["/usr/local/bin/pipeline run %i"]
    );
    assert_eq!(setting(&service, "NoNewPrivileges"), ["yes"]);
    assert_eq!(setting(&service, "ProtectSystem"), ["strict"]);
    assert_eq!(setting(&service, "PrivateTmp"), ["yes"]);
    assert!(!setting(&service, "ReadWritePaths").is_empty());
    let user = setting(&service, "User");
    assert!(
        user.len() == 1 && user[0] != "root",
        "a non-root user: {user:?}"
    );
    let stop = setting(&service, "TimeoutStopSec");
    let stop: u64 = stop
        .first()
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("TimeoutStopSec in seconds: {stop:?}"));
    assert!(
        stop > pipeline::shutdown::GRACE.as_secs(),
        "systemd waits longer ({stop} s) than pipeline's own grace after SIGTERM ({:?})",
        pipeline::shutdown::GRACE
    );
    assert_eq!(setting(&service, "SuccessExitStatus"), ["143"]);
    // The daemon's unit: SIGTERM to the daemon alone, which forwards it to its runs and
    // waits for them; systemd waits longer than that.
    let daemon = std::fs::read_to_string(contrib.join("pipeline-daemon.service")).unwrap();
    assert_eq!(
        setting(&daemon, "ExecStart"),
        ["/usr/local/bin/pipeline daemon"]
    );
    assert_eq!(setting(&daemon, "KillSignal"), ["SIGTERM"]);
    assert_eq!(setting(&daemon, "KillMode"), ["mixed"]);
    assert_eq!(setting(&daemon, "ProtectSystem"), ["strict"]);
    assert_eq!(setting(&daemon, "User"), user);
    let daemon_stop: u64 = setting(&daemon, "TimeoutStopSec")
        .first()
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        daemon_stop > pipeline::shutdown::SUPERVISE_WAIT.as_secs()
            && pipeline::shutdown::SUPERVISE_WAIT > pipeline::shutdown::GRACE,
        "systemd waits longer ({daemon_stop} s) than the daemon waits for its runs ({:?}), \
         which is longer than a run's grace",
        pipeline::shutdown::SUPERVISE_WAIT
    );
    assert_eq!(setting(&timer, "OnCalendar"), ["daily"]);
    assert_eq!(setting(&timer, "Persistent"), ["true"]);
    assert_eq!(setting(&timer, "RandomizedDelaySec").len(), 1);

    let bin = env!("CARGO_BIN_EXE_pipeline");
    std::fs::write(
        units.join("pipeline@.service"),
        service.replace("/usr/local/bin/pipeline", bin),
    )
    .unwrap();
    std::fs::write(units.join("pipeline@nightly.timer"), &timer).unwrap();
    std::fs::write(
        units.join("pipeline-daemon.service"),
        daemon.replace("/usr/local/bin/pipeline", bin),
    )
    .unwrap();
    let man1 = s.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let page = s.run(&["man"], &[]);
    assert_eq!(page.status.code(), Some(0));
    std::fs::write(man1.join("pipeline.1"), &page.stdout).unwrap();

    let verify = |units: &Path| {
        Command::new(&analyze)
            .arg("verify")
            .arg(units.join("pipeline@nightly.service"))
            .arg(units.join("pipeline@nightly.timer"))
            .arg(units.join("pipeline-daemon.service"))
            .env("MANPATH", s.path().join("man"))
            .output()
            .expect("run systemd-analyze")
    };
    let out = verify(&units);
    assert_eq!(
        out.status.code(),
        Some(0),
        "systemd-analyze verify: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).trim().is_empty(),
        "no warning: {}",
        stderr(&out)
    );

    // The check has teeth: the shipped ExecStart path, absent here, is refused.
    std::fs::write(units.join("pipeline@.service"), &service).unwrap();
    let out = verify(&units);
    assert_ne!(out.status.code(), Some(0), "a missing binary fails verify");
    assert!(
        stderr(&out).contains("/usr/local/bin/pipeline"),
        "{}",
        stderr(&out)
    );
}
