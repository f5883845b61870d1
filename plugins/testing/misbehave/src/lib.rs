//! `misbehave`: a transform that does what a hostile or buggy plugin would, so the host's
//! tests can check that the sandbox and the limits hold. Never use it in a pipeline.
//!
//! * `mode = "spin"`: loops forever (the stage's time limit must stop it).
//! * `mode = "grow"`: allocates memory without end (the memory limit must stop it).
//! * `mode = "nosy"`: tries to reach what its stage was not granted (an environment
//!   variable, a file, a directory, a path out of its granted directory, an HTTP host, a
//!   raw socket, a program), logs each outcome as `probe <what>: denied (<error>)` or
//!   `probe <what>: LEAKED <n> bytes`, then passes its input through unchanged.
//! * `mode = "escape"`: its plan asks for its work directory and, created, the directory
//!   `workdir/<ask>` (`ask = "../outside"`, `"link/new"`): the host must refuse what is
//!   not inside the grant once normalized, and create nothing. Then passes data through.
//! * `mode = "sleep"`: sleeps for an hour in a host call, reading nothing (the time limit
//!   must stop it although no wasm code runs, and the stages before it stall writing).
//! * `mode = "trickle"`: passes its input through slowly (64 KiB every 20 ms), so a test
//!   can stop a run while data is flowing.
//! * `mode = "preload"`: starts `program` with `file` as its argument and `LD_PRELOAD` set
//!   (the host must refuse it), logs the outcome as a probe, then passes its input through.
//!
//! Every probe result is logged, never returned as data, so a test can read them all.

use std::hint::black_box;
use std::io::{self, Read};

use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::process::{Command, spawn};
use pipeline_plugin_sdk::{
    DirectoryGrant, Grant, InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind,
    StagePlan, Transform, ValueType, config, config_key, log,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    /// The directory the stage is granted (nosy: the escape probe starts there).
    workdir: Option<String>,
    env: Option<String>,
    file: Option<String>,
    dir: Option<String>,
    url: Option<String>,
    addr: Option<String>,
    program: Option<String>,
    /// escape: the directory, relative to `workdir`, its plan asks to create.
    ask: Option<String>,
}

struct Misbehave;

impl Plugin for Misbehave {
    fn describe() -> PluginInfo {
        let text = |name: &str, what: &str| config_key(name, ValueType::Text, false, what);
        PluginInfo {
            name: "misbehave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Transform,
            description: "Misbehaves on purpose (spin, grow, nosy) for the host's tests".into(),
            config_keys: vec![
                config_key(
                    "mode",
                    ValueType::Text,
                    true,
                    "spin, grow, nosy, sleep, trickle or preload",
                ),
                config_key("workdir", ValueType::Path, false, "granted directory"),
                text("env", "environment variable to read"),
                config_key("file", ValueType::Path, false, "file to read"),
                config_key("dir", ValueType::Path, false, "directory to list"),
                text("url", "URL to fetch"),
                text("addr", "ip:port to connect a socket to"),
                text("program", "program to start"),
                text("ask", "escape: directory under workdir the plan asks for"),
            ],
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config: Config = config::parse(&config)?;
        if !matches!(
            config.mode.as_str(),
            "spin" | "grow" | "nosy" | "escape" | "sleep" | "trickle" | "preload"
        ) {
            return Err(PluginError::Config(format!(
                "key `mode`: {:?} is not spin, grow, nosy, escape, sleep, trickle or preload",
                config.mode
            )));
        }
        // It asks only for its work directory: everything else it tries is ungranted.
        let mut grants: Vec<Grant> = config
            .workdir
            .iter()
            .map(|path| {
                Grant::Directory(DirectoryGrant {
                    path: path.clone(),
                    writable: true,
                    create: false,
                })
            })
            .collect();
        if config.mode == "escape"
            && let (Some(workdir), Some(ask)) = (&config.workdir, &config.ask)
        {
            // Spelled inside the grant, meant to land outside it.
            grants.push(Grant::Directory(DirectoryGrant {
                path: format!("{workdir}/{ask}"),
                writable: true,
                create: true,
            }));
        }
        Ok(StagePlan {
            extension: None,
            content_type: None,
            grants,
        })
    }
}

impl Transform for Misbehave {
    fn encode(config: String, input: InputStream, output: OutputStream) -> Result<(), PluginError> {
        let config: Config = config::parse(&config)?;
        match config.mode.as_str() {
            "spin" => spin(),
            "grow" => grow(),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Err(PluginError::Other("slept an hour".into()))
            }
            "trickle" => trickle(input, output),
            "preload" => {
                preload(&config);
                pass_through(input, output)
            }
            _ => {
                nosy(&config);
                pass_through(input, output)
            }
        }
    }

    fn decode(
        _config: String,
        input: InputStream,
        output: OutputStream,
    ) -> Result<(), PluginError> {
        pass_through(input, output)
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn grow() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used.
        hoard.push(black_box(vec![1u8; 4 << 20]));
        log::debug(format_args!("holding {} MiB", hoard.len() * 4));
    }
}

fn report(what: &str, outcome: Result<usize, String>) {
    match outcome {
        Ok(n) => log::error(format_args!("probe {what}: LEAKED {n} bytes")),
        Err(e) => log::warn(format_args!("probe {what}: denied ({e})")),
    }
}

fn read_file(path: &str) -> Result<usize, String> {
    std::fs::read(path)
        .map(|b| b.len())
        .map_err(|e| e.to_string())
}

fn nosy(config: &Config) {
    if let Some(name) = &config.env {
        report(
            &format!("env {name}"),
            std::env::var(name)
                .map(|v| v.len())
                .map_err(|e| e.to_string()),
        );
        let all: usize = std::env::vars().map(|(k, v)| k.len() + v.len()).sum();
        report(
            "env (all)",
            if all > 0 {
                Ok(all)
            } else {
                Err("empty".into())
            },
        );
    }
    if let Some(file) = &config.file {
        report(&format!("file {file}"), read_file(file));
        if let Some(workdir) = &config.workdir {
            // Out of the granted directory by `..`: wasi resolves paths inside the grant.
            let name = std::path::Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x");
            let escape = format!("{workdir}/../{name}");
            report(&format!("file {escape}"), read_file(&escape));
        }
    }
    if let Some(dir) = &config.dir {
        report(
            &format!("directory {dir}"),
            std::fs::read_dir(dir)
                .map(|entries| entries.count())
                .map_err(|e| e.to_string()),
        );
    }
    if let Some(url) = &config.url {
        report(&format!("url {url}"), fetch(url));
    }
    if let Some(addr) = &config.addr {
        report(
            &format!("socket {addr}"),
            std::net::TcpStream::connect(addr.as_str())
                .map(|_| 0)
                .map_err(|e| e.to_string()),
        );
    }
    if let Some(program) = &config.program {
        let started = spawn(&Command {
            program: program.clone(),
            args: vec!["/etc/hostname".into()],
            env: vec![],
            stdin: false,
        });
        report(
            &format!("program {program}"),
            started.map(|_| 0).map_err(|e| e.to_string()),
        );
    }
}

fn trickle(input: InputStream, output: OutputStream) -> Result<(), PluginError> {
    let mut reader = InputReader::new(input);
    let mut writer = OutputWriter::new(output);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| PluginError::from_io("input", &e))?;
        if n == 0 {
            break;
        }
        io::Write::write_all(&mut writer, &buf[..n])
            .map_err(|e| PluginError::from_io("output", &e))?;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    io::Write::flush(&mut writer).map_err(|e| PluginError::from_io("output", &e))
}

/// Starts the program with a library to preload: a plugin must not choose what the
/// dynamic loader puts into a granted program.
fn preload(config: &Config) {
    let Some(program) = &config.program else {
        return;
    };
    let started = spawn(&Command {
        program: program.clone(),
        args: config.file.iter().cloned().collect(),
        env: vec![("LD_PRELOAD".into(), "/tmp/misbehave-preload.so".into())],
        stdin: false,
    });
    report(
        &format!("program {program} with LD_PRELOAD"),
        started.map(|_| 0).map_err(|e| e.to_string()),
    );
}

fn fetch(url: &str) -> Result<usize, String> {
    use wstd::http::{Body, Client, Request};
    let request = Request::get(url)
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    wstd::runtime::block_on(async {
        let mut response = Client::new()
            .send(request)
            .await
            .map_err(|e| e.to_string())?;
        let body = response
            .body_mut()
            .contents()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.len())
    })
}

fn pass_through(input: InputStream, output: OutputStream) -> Result<(), PluginError> {
    let mut reader = InputReader::new(input);
    let mut writer = OutputWriter::new(output);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| PluginError::from_io("input", &e))?;
        if n == 0 {
            break;
        }
        io::Write::write_all(&mut writer, &buf[..n])
            .map_err(|e| PluginError::from_io("output", &e))?;
    }
    io::Write::flush(&mut writer).map_err(|e| PluginError::from_io("output", &e))
}

pipeline_plugin_sdk::export_transform!(Misbehave);
