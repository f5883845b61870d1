//! `pipeline:plugin/process`: start a granted program, no shell involved.
//!
//! stdout reaches the plugin as an `input-stream` backed by a [`crate::pipe`], so a source
//! can splice it onward without the bytes entering guest memory. stderr goes to the log
//! line by line (redacted) and its tail comes back with the exit status, so an error can
//! say why pg_dump failed.
//!
//! A program grant trusts the plugin with the program's arguments (a grant of `psql` is a
//! grant of whatever psql can do with its arguments, `\!` included), but not with the
//! environment: variables that load code into the program, start-up hooks of
//! interpreters, overrides of PATH/HOME/SHELL and the variables that make PostgreSQL tools
//! run other programs or read other files are refused ([`refused_env`]).
//!
//! Programs never outlive the run: they are started from one long-lived thread with
//! `PR_SET_PDEATHSIG(SIGKILL)` (the kernel kills them when `pipeline` dies, even by
//! SIGKILL), and each is in the run's list ([`crate::shutdown`]) so that a cancellation
//! stops them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command as OsCommand, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;

use std::collections::BTreeMap;

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};

use super::{Capability, GrantContext, StoreState};
use crate::bindings::host::pipeline::plugin::process::{
    self as wit, Command, ExitStatus, Host, HostChild,
};
use crate::bindings::{Grant, PluginError};
use crate::config::ConfigError;
use crate::logging;
use crate::pipe::{self, MAX_CHUNK};

/// The `process` capability: `allow.programs` and the programs a plan asks for.
pub struct Process;

/// The programs a stage may run.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    /// Program name as the plugin asks for it → the executable found on `PATH`.
    pub executables: BTreeMap<String, PathBuf>,
    /// Names admitted, resolved by `finish`.
    names: Vec<String>,
}

impl Capability for Process {
    const ALLOW_KEYS: &'static [&'static str] = &["programs"];
    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "pipeline:plugin/process",
        "programs: only those in `allow.programs`",
    )];
    type Granted = Programs;
    type State = ();

    fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
    }

    fn allowed(cx: &mut GrantContext<'_>, programs: &mut Programs) -> Result<(), ConfigError> {
        programs
            .names
            .extend(cx.allowed("programs").map(|(name, _)| name.clone()));
        Ok(())
    }

    fn admit(
        cx: &mut GrantContext<'_>,
        asked: &Grant,
        programs: &mut Programs,
    ) -> Result<bool, ConfigError> {
        let Grant::Program(program) = asked else {
            return Ok(false);
        };
        if !programs.names.contains(program) {
            if !cx.builtin() {
                return Err(cx.refuse(
                    &format!("to run the program `{program}`"),
                    "programs",
                    program,
                ));
            }
            programs.names.push(program.clone());
        }
        Ok(true)
    }

    fn finish(cx: &mut GrantContext<'_>, programs: &mut Programs) -> Result<(), ConfigError> {
        for program in std::mem::take(&mut programs.names) {
            let exe = resolve(&program).ok_or_else(|| {
                cx.error(
                    None,
                    "",
                    format!(
                        "stage `{}` needs the program `{program}`, which is not on PATH{}",
                        cx.label(),
                        (cx.install_hint)(&program)
                    ),
                )
            })?;
            programs.executables.insert(program, exe);
        }
        Ok(())
    }

    fn state(_stage: &str, _: &Programs) {}
}

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
    /// In the run's list of programs until reaped; signals go through it.
    watch: crate::shutdown::ChildGuard,
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

impl Child {
    /// Stops the program: SIGTERM, on which pg_dump cancels its query on the server (a
    /// SIGKILLed pg_dump would leave its query waiting there, on a lock say) and psql
    /// exits without committing; SIGKILL if it is still running after [`TERM_GRACE`].
    fn terminate(&mut self) {
        if self.done.is_some() {
            return;
        }
        self.watch.handle.signal(libc::SIGTERM);
        let deadline = std::time::Instant::now() + TERM_GRACE;
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
                // Reaped (std keeps the status for `finish`), or cannot wait at all.
                Ok(Some(_)) | Err(_) => return,
            }
        }
        self.watch.handle.signal(libc::SIGKILL);
    }
}

/// How long a program may take to exit on SIGTERM before it gets SIGKILL.
const TERM_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Child {
    fn drop(&mut self) {
        if self.done.is_none() {
            self.terminate();
            self.finish(true);
        }
    }
}

/// Why an environment variable a plugin passes to a program is refused, if it is.
///
/// Arguments are the plugin's to choose; the environment is narrower because it acts
/// unseen on every program in the chain (the shell psql's `\!` starts, a pager, the
/// dynamic loader) rather than on the one command the grant names:
/// * the dynamic loader and libc: `LD_*` (LD_PRELOAD loads any library into the program),
///   `DYLD_*`, and glibc's own list of variables it drops for setuid programs (GCONV_PATH
///   and LOCPATH load code or data, GLIBC_TUNABLES, MALLOC_*, HOSTALIASES, NLSPATH, …);
///   OpenSSL and Kerberos configuration, which can load modules into libpq;
/// * start-up hooks of shells and interpreters (BASH_ENV, ENV, BASH_FUNC_*, PS4,
///   PERL5OPT, PYTHON*, NODE_OPTIONS, RUBYOPT, JAVA_TOOL_OPTIONS, …);
/// * PATH, HOME and SHELL, which the host sets (which program runs, which dotfiles are read);
/// * what makes PostgreSQL tools (and git) run other programs or read other files:
///   PAGER, PSQL_PAGER, EDITOR, VISUAL, PSQL_EDITOR, PSQLRC, PSQL_HISTORY, PGPASSFILE,
///   PGSERVICEFILE, PGSYSCONFDIR, PGLOCALEDIR, GIT_SSH*, GIT_CONFIG*, GIT_EXEC_PATH, ….
///
/// Plain settings (PGPASSWORD, PGSSLMODE, PGAPPNAME, TZ, …) pass.
pub fn refused_env(name: &str) -> Option<&'static str> {
    const PREFIXES: &[(&str, &str)] = &[
        ("LD_", "it controls the dynamic loader"),
        ("DYLD_", "it controls the dynamic loader"),
        ("MALLOC_", "it changes libc's allocator"),
        ("BASH_FUNC_", "it defines shell functions"),
        ("PYTHON", "it changes how Python starts"),
        ("PERL5", "it changes how Perl starts"),
        ("GIT_CONFIG", "it makes git read other configuration"),
        ("GIT_SSH", "it makes git run another program"),
        ("LUA_INIT", "it runs code when Lua starts"),
    ];
    const NAMES: &[(&str, &str)] = &[
        ("PATH", "the host sets it (which program runs)"),
        ("HOME", "the host sets it (which dotfiles are read)"),
        ("SHELL", "it chooses the shell a program starts"),
        ("GCONV_PATH", "it makes libc load code"),
        ("GETCONF_DIR", "libc refuses it for setuid programs"),
        ("GLIBC_TUNABLES", "it changes libc's behaviour"),
        ("HOSTALIASES", "it makes libc read another file"),
        ("LOCALDOMAIN", "libc refuses it for setuid programs"),
        ("LOCPATH", "it makes libc load other locale data"),
        ("NIS_PATH", "libc refuses it for setuid programs"),
        ("NLSPATH", "it makes libc read other message files"),
        ("RESOLV_HOST_CONF", "it makes libc read another file"),
        ("RES_OPTIONS", "libc refuses it for setuid programs"),
        ("TMPDIR", "libc refuses it for setuid programs"),
        ("TZDIR", "it makes libc read other time zone files"),
        ("OPENSSL_CONF", "it can make OpenSSL load modules"),
        ("OPENSSL_ENGINES", "it makes OpenSSL load modules"),
        ("OPENSSL_MODULES", "it makes OpenSSL load modules"),
        ("KRB5_CONFIG", "it can make Kerberos load modules"),
        ("KRB5CCNAME", "it points Kerberos at other credentials"),
        ("BASH_ENV", "bash runs the file it names"),
        ("ENV", "sh runs the file it names"),
        ("SHELLOPTS", "it changes how shells run"),
        ("BASHOPTS", "it changes how shells run"),
        ("PS4", "shells evaluate it"),
        ("PROMPT_COMMAND", "shells run it"),
        ("IFS", "it changes how shells split words"),
        ("CDPATH", "it changes where shells change directory"),
        ("PERLLIB", "it changes how Perl starts"),
        ("NODE_OPTIONS", "it changes how Node.js starts"),
        ("NODE_PATH", "it changes how Node.js loads modules"),
        ("RUBYOPT", "it changes how Ruby starts"),
        ("RUBYLIB", "it changes how Ruby loads code"),
        ("JAVA_TOOL_OPTIONS", "it changes how Java starts"),
        ("_JAVA_OPTIONS", "it changes how Java starts"),
        ("JDK_JAVA_OPTIONS", "it changes how Java starts"),
        ("TCLLIBPATH", "it changes how Tcl loads code"),
        ("PAGER", "it names a program to run"),
        ("PSQL_PAGER", "it names a program psql runs"),
        ("EDITOR", "it names a program to run"),
        ("VISUAL", "it names a program to run"),
        ("PSQL_EDITOR", "it names a program psql runs"),
        ("PSQLRC", "it names a file of commands psql runs"),
        ("PSQL_HISTORY", "it names a file psql writes"),
        ("PGPASSFILE", "it makes libpq read another password file"),
        ("PGSERVICEFILE", "it makes libpq read another service file"),
        (
            "PGSYSCONFDIR",
            "it makes psql and libpq read other configuration",
        ),
        (
            "PGLOCALEDIR",
            "it makes PostgreSQL tools read other message files",
        ),
        ("GIT_EXEC_PATH", "it makes git run other programs"),
        ("GIT_ASKPASS", "it names a program git runs"),
        ("SSH_ASKPASS", "it names a program ssh runs"),
        ("GIT_PROXY_COMMAND", "it names a program git runs"),
        ("GIT_EXTERNAL_DIFF", "it names a program git runs"),
        ("GIT_PAGER", "it names a program git runs"),
        ("GIT_EDITOR", "it names a program git runs"),
    ];
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Some("it is not a valid variable name");
    }
    // Linux names are case-sensitive; refusing other spellings too costs nothing.
    let upper = name.to_ascii_uppercase();
    NAMES
        .iter()
        .find(|(n, _)| *n == upper)
        .or_else(|| PREFIXES.iter().find(|(p, _)| upper.starts_with(p)))
        .map(|(_, why)| *why)
}

type SpawnRequest = (
    OsCommand,
    mpsc::SyncSender<std::io::Result<std::process::Child>>,
);

/// Starts `cmd` on the spawner thread. PR_SET_PDEATHSIG fires when the *thread* that forked
/// the child ends, so every program is forked by one thread that lives as long as the
/// process; the child then dies with `pipeline`, however `pipeline` ends.
fn spawn_os(mut cmd: OsCommand) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, getppid, sigprocmask).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // `pipeline` died between fork and prctl: the signal was never armed.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("pipeline exited"));
            }
            // The program must see SIGTERM whatever the forking thread blocked.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            logging::error(None, &format!("cannot start the spawner thread: {e}"));
        }
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::sync_channel(1);
    sender
        .lock()
        .map_err(|_| std::io::Error::other("the spawner thread failed"))?
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Finds `program` on PATH (or takes it as a path), for grants.
fn resolve(program: &str) -> Option<PathBuf> {
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
        let Some(exe) = self
            .grants
            .process
            .executables
            .get(&command.program)
            .cloned()
        else {
            let msg = format!(
                "program `{}` is not granted to stage `{}`: add it to the stage's `allow.programs`",
                command.program, self.stage
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        };
        for (name, _) in &command.env {
            if let Some(why) = refused_env(name) {
                let msg = format!(
                    "stage `{}` may not set the environment variable `{name}` for {}: {why}; a program grant passes arguments, not the environment that loads code or runs other programs",
                    self.stage, command.program
                );
                logging::warn(Some(&self.stage), &format!("denied: {msg}"));
                return Err(PluginError::Denied(msg));
            }
        }
        if let Some(stopped) = crate::shutdown::error() {
            return Err(PluginError::Io(format!(
                "{} was not started: {stopped}",
                command.program
            )));
        }
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
        let mut child = spawn_os(os).map_err(|e| {
            PluginError::Io(format!(
                "cannot start {} ({}): {e}",
                command.program,
                exe.display()
            ))
        })?;
        let watch = crate::shutdown::watch_child(child.id());
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
                let handle = watch.handle.clone();
                threads.push(std::thread::spawn(move || copy_stdin(in_r, stdin, &handle)));
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
            watch,
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
/// downstream, and a pipe's reads return at most 64 KiB by default. Each chunk is read into
/// its own buffer and handed on as is, never copied.
fn copy_stdout(stdout: std::process::ChildStdout, w: pipe::PipeWriter) {
    use std::os::fd::AsRawFd;
    let fd = stdout.as_raw_fd();
    // SAFETY: fcntl on a pipe fd we own; failure only leaves the default size.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, STDOUT_PIPE_SIZE) };
    let mut chunk: Vec<u8> = Vec::with_capacity(MAX_CHUNK);
    loop {
        let spare = chunk.spare_capacity_mut();
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `chunk`, and
        // `stdout` keeps `fd` open for the whole call.
        let n = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
        match n {
            0 => {
                if !chunk.is_empty() && w.send_blocking(Bytes::from(chunk)).is_err() {
                    return;
                }
                let _ = w.finish();
                return;
            }
            // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
            n if n > 0 => unsafe { chunk.set_len(chunk.len() + n as usize) },
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
                continue;
            }
            _ => return, // dropping `w` unfinished marks the stream failed
        }
        if chunk.len() == MAX_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(MAX_CHUNK));
            if w.send_blocking(Bytes::from(full)).is_err() {
                return; // the reader is gone; the program gets SIGPIPE on its next write
            }
        }
    }
}

/// Feeds the plugin's writes to the program. stdin ends when the plugin drops its stream
/// (an explicit drop: [`pipe::PipeWriter::into_closing_output_stream`]) or when `wait` ends
/// it, whichever comes first. A stream that failed
/// (the plugin's stage failed, the run was stopped) kills the program before its stdin
/// closes: an end of input would look complete to it (psql would commit what it read).
fn copy_stdin(
    mut r: pipe::PipeReader,
    mut stdin: ChildStdin,
    child: &crate::shutdown::ChildHandle,
) {
    loop {
        match r.recv_blocking() {
            Ok(Some(chunk)) => {
                if stdin.write_all(&chunk).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(_) => {
                child.signal(libc::SIGKILL);
                return;
            }
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
        self.table.push(writer.into_closing_output_stream()).ok()
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
                c.terminate();
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

#[cfg(test)]
mod tests {
    use super::refused_env;

    #[test]
    fn dangerous_environment_is_refused_and_plain_settings_pass() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "ld_preload",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "MALLOC_CHECK_",
            "BASH_ENV",
            "BASH_FUNC_ls%%",
            "PYTHONSTARTUP",
            "PERL5OPT",
            "NODE_OPTIONS",
            "PATH",
            "HOME",
            "PAGER",
            "PSQL_PAGER",
            "PSQLRC",
            "PGPASSFILE",
            "OPENSSL_CONF",
            "GIT_SSH_COMMAND",
            "",
            "A=B",
        ] {
            assert!(refused_env(name).is_some(), "{name} should be refused");
        }
        for name in [
            "PGPASSWORD",
            "PGSSLMODE",
            "PGAPPNAME",
            "TZ",
            "LANG",
            "AWS_REGION",
        ] {
            assert_eq!(refused_env(name), None, "{name} should pass");
        }
    }
}
