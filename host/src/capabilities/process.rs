//! `pipeline:plugin/process`: start a granted program, no shell involved.
//!
//! stdout reaches the plugin as an `input-stream` backed by a [`crate::pipe`], so a source
//! can splice it onward without the bytes entering guest memory. stderr goes to the log
//! line by line (redacted) and its tail comes back with the exit status, so an error can
//! say why pg_dump failed.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command as OsCommand, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use super::StoreState;
use crate::bindings::PluginError;
use crate::bindings::host::pipeline::plugin::process::{Command, ExitStatus, Host, HostChild};
use crate::logging;
use crate::pipe::{self, MAX_CHUNK};

/// Host environment variables a child may see; everything else of the host's environment
/// (credentials of other stages, the pipeline's own variables) stays out.
const PASSED_ENV: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];
const STDERR_TAIL_LINES: usize = 20;

/// A running program started by a plugin.
pub struct Child {
    child: std::process::Child,
    program: String,
    stdout: Option<pipe::PipeReader>,
    /// The plugin's end of stdin, until it takes it.
    stdin: Option<pipe::PipeWriter>,
    /// The host's own handle on stdin, to end it (or unblock its thread) whatever the
    /// plugin still holds.
    stdin_closer: Option<pipe::PipeWriter>,
    threads: Vec<JoinHandle<()>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    done: Option<ExitStatus>,
}

impl Child {
    /// Waits for the program. `killed`: it was signalled, so stdin must not end cleanly
    /// first (psql would commit what it read); otherwise stdin ends after what was written.
    fn finish(&mut self, killed: bool) -> ExitStatus {
        if let Some(done) = &self.done {
            return done.clone();
        }
        self.stdin = None;
        if !killed && let Some(closer) = self.stdin_closer.take() {
            let _ = closer.finish();
        }
        let status = self.child.wait();
        if let Some(closer) = self.stdin_closer.take() {
            let _ = closer.finish(); // unblocks the stdin thread; the program is gone
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let tail = self
            .stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        let done = match status {
            Ok(s) => ExitStatus {
                code: s.code(),
                stderr_tail: logging::redact(&tail),
            },
            Err(e) => ExitStatus {
                code: None,
                stderr_tail: format!("cannot wait for {}: {e}", self.program),
            },
        };
        self.done = Some(done.clone());
        done
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.done.is_none() {
            let _ = self.child.kill();
            self.finish(true);
        }
    }
}

/// Finds `program` on PATH (or takes it as a path), for grants.
pub fn resolve(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|c| is_executable(c))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Host for StoreState {
    fn spawn(&mut self, command: Command) -> Result<Resource<Child>, PluginError> {
        let Some(exe) = self.grants.programs.get(&command.program).cloned() else {
            let msg = format!(
                "program `{}` is not granted to stage `{}`: add it to the stage's `allow.programs`",
                command.program, self.stage
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        };
        let mut os = OsCommand::new(&exe);
        os.args(&command.args).env_clear();
        for name in PASSED_ENV {
            if let Some(v) = std::env::var_os(name) {
                os.env(name, v);
            }
        }
        os.envs(command.env.iter().map(|(k, v)| (k, v)));
        os.stdin(if command.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        os.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = os.spawn().map_err(|e| {
            PluginError::Io(format!(
                "cannot start {} ({}): {e}",
                command.program,
                exe.display()
            ))
        })?;
        logging::debug(
            Some(&self.stage),
            &format!("started {} (pid {})", command.program, child.id()),
        );

        let mut threads = Vec::new();
        let label = format!("{} stdout", command.program);
        let (out_w, out_r) = pipe::pipe(&label);
        if let Some(stdout) = child.stdout.take() {
            threads.push(std::thread::spawn(move || copy_stdout(stdout, out_w)));
        }
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let (tail, stage, program) = (
                stderr_tail.clone(),
                self.stage.clone(),
                command.program.clone(),
            );
            threads.push(std::thread::spawn(move || {
                log_stderr(stderr, &stage, &program, &tail)
            }));
        }
        let (stdin, stdin_closer) = match child.stdin.take() {
            Some(stdin) => {
                let (in_w, in_r) = pipe::pipe(&format!("{} stdin", command.program));
                threads.push(std::thread::spawn(move || copy_stdin(in_r, stdin)));
                (Some(in_w.clone()), Some(in_w))
            }
            None => (None, None),
        };
        let child = Child {
            child,
            program: command.program,
            stdout: Some(out_r),
            stdin,
            stdin_closer,
            threads,
            stderr_tail,
            done: None,
        };
        self.table
            .push(child)
            .map_err(|e| PluginError::Other(e.to_string()))
    }
}

/// Bytes the kernel may buffer between the program and us, so the program keeps writing
/// while the stages downstream are busy.
const STDOUT_PIPE_SIZE: libc::c_int = 1 << 20;

/// Forwards the program's stdout in full chunks: every chunk costs a wake-up at each stage
/// downstream, and a pipe's reads return at most 64 KiB by default.
fn copy_stdout(mut stdout: std::process::ChildStdout, w: pipe::PipeWriter) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a pipe fd we own; failure only leaves the default size.
    unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, STDOUT_PIPE_SIZE) };
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut filled = 0;
    loop {
        match stdout.read(&mut buf[filled..]) {
            Ok(0) => {
                if filled > 0
                    && w.send_blocking(Bytes::copy_from_slice(&buf[..filled]))
                        .is_err()
                {
                    return;
                }
                let _ = w.finish();
                return;
            }
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    if w.send_blocking(Bytes::copy_from_slice(&buf)).is_err() {
                        return; // the reader is gone; the program gets SIGPIPE on its next write
                    }
                    filled = 0;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return, // dropping `w` unfinished marks the stream failed
        }
    }
}

/// Feeds the plugin's writes to the program. stdin ends when the plugin drops its stream
/// (and the host's handle is finished) or when `wait` ends it.
fn copy_stdin(mut r: pipe::PipeReader, mut stdin: ChildStdin) {
    while let Ok(Some(chunk)) = r.recv_blocking() {
        if stdin.write_all(&chunk).is_err() {
            return;
        }
    }
}

fn log_stderr(
    stderr: std::process::ChildStderr,
    stage: &str,
    program: &str,
    tail: &Mutex<VecDeque<String>>,
) {
    for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        // pg_dump and friends prefix their own name; don't say it twice.
        let program_name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(program);
        if line.starts_with(&format!("{program_name}:")) {
            logging::info(Some(stage), &line);
        } else {
            logging::info(Some(stage), &format!("{program_name}: {line}"));
        }
        if let Ok(mut t) = tail.lock() {
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

impl HostChild for StoreState {
    fn take_stdout(&mut self, child: Resource<Child>) -> Option<Resource<DynInputStream>> {
        let reader = self.table.get_mut(&child).ok()?.stdout.take()?;
        self.table.push(reader.into_input_stream()).ok()
    }

    fn take_stdin(&mut self, child: Resource<Child>) -> Option<Resource<DynOutputStream>> {
        let writer = self.table.get_mut(&child).ok()?.stdin.take()?;
        self.table.push(writer.into_output_stream()).ok()
    }

    fn wait(&mut self, child: Resource<Child>) -> ExitStatus {
        match self.table.get_mut(&child) {
            Ok(c) => c.finish(false),
            Err(e) => ExitStatus {
                code: None,
                stderr_tail: e.to_string(),
            },
        }
    }

    fn kill(&mut self, child: Resource<Child>) -> ExitStatus {
        match self.table.get_mut(&child) {
            Ok(c) => {
                if c.done.is_none() {
                    // SIGTERM first so pg_dump/psql can clean up; they exit promptly on it.
                    if let Ok(pid) = i32::try_from(c.child.id()) {
                        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                }
                c.finish(true)
            }
            Err(e) => ExitStatus {
                code: None,
                stderr_tail: e.to_string(),
            },
        }
    }

    fn drop(&mut self, child: Resource<Child>) -> wasmtime::Result<()> {
        // Dropping kills a program that still runs (Child's Drop).
        self.table.delete(child)?;
        Ok(())
    }
}
