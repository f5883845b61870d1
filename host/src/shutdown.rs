//! Run-wide cancellation: one way to stop a run, whatever the reason (a stage past its
//! `limits.timeout`, SIGTERM, SIGINT, SIGHUP).
//!
//! Cancelling (1) marks the run stopped, (2) sends SIGTERM to every program a plugin
//! started (SIGKILL a moment later), (3) makes every [`crate::pipe`] fail at both ends, so a
//! sink sees a failed stream and aborts (the local sink removes its partial file, s3 aborts
//! its multipart upload), and (4) after [`TRAP_AFTER`] makes wasm code that still runs trap.
//! Nothing new starts: [`crate::engine::Engine::store`] refuses once the run is stopped. A
//! stage that does not return within [`GRACE`] is named in the log and the process exits
//! (programs killed first), so a hung host call (an HTTP request, a stuck pipe) cannot hold
//! the pipeline's lock forever.
//!
//! Epoch interruption alone is not enough for `limits.timeout`: it only traps in wasm code,
//! and a stage blocked in a host call (waiting on pg_dump's stdout) never runs any. The
//! watchdog here ([`tick`], driven by the engine's epoch thread) checks each live stage's
//! deadline from outside.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::error::{Cancelled, Reason, signal_name};
use crate::logging;

/// How long cancelled wasm code may still run: enough for a sink's failure path (delete a
/// partial file, abort a multipart upload), not for a loop.
pub const TRAP_AFTER: Duration = Duration::from_secs(5);
/// How long stages get to return after a cancellation before the process exits anyway.
pub const GRACE: Duration = Duration::from_secs(15);
/// How long `pipeline daemon` waits for the runs it started after a stop signal before it
/// kills them: a run's own [`GRACE`] plus a margin.
pub const SUPERVISE_WAIT: Duration = Duration::from_secs(GRACE.as_secs() + 5);
/// Between SIGTERM (pg_dump cancels its query on it) and SIGKILL of a started program.
const KILL_AFTER: Duration = Duration::from_secs(2);

struct State {
    reason: Option<(Reason, Instant)>,
    /// Live plugin instances: id → (stage, deadline, limit).
    stages: BTreeMap<u64, (String, Instant, Duration)>,
    /// Running programs: id → handle.
    children: BTreeMap<u64, Arc<ChildHandle>>,
    exiting: bool,
}

static CANCELLED: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        Mutex::new(State {
            reason: None,
            stages: BTreeMap::new(),
            children: BTreeMap::new(),
            exiting: false,
        })
    })
}

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = state().lock().unwrap_or_else(|p| p.into_inner());
    f(&mut guard)
}

/// Wakers of pipe operations blocked when the run is cancelled.
fn watchers() -> &'static tokio::sync::watch::Sender<bool> {
    static W: OnceLock<tokio::sync::watch::Sender<bool>> = OnceLock::new();
    W.get_or_init(|| tokio::sync::watch::channel(false).0)
}

/// Whether the run was stopped (cheap: one atomic load).
pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::Acquire)
}

/// Why the run was stopped, if it was.
pub fn reason() -> Option<Reason> {
    with_state(|s| s.reason.as_ref().map(|(r, _)| r.clone()))
}

/// The error of an operation refused because the run was stopped.
pub fn error() -> Option<Cancelled> {
    reason().map(Cancelled)
}

/// How long ago the run was stopped.
pub fn cancelled_for() -> Option<Duration> {
    if !is_cancelled() {
        return None;
    }
    with_state(|s| s.reason.as_ref().map(|(_, at)| at.elapsed()))
}

/// Stops the run (the first reason wins; later calls only return false).
pub fn cancel(reason: Reason) -> bool {
    let children = with_state(|s| {
        if s.reason.is_some() {
            return None;
        }
        s.reason = Some((reason.clone(), Instant::now()));
        Some(s.children.values().cloned().collect::<Vec<_>>())
    });
    let Some(children) = children else {
        return false;
    };
    // Programs first: a program whose stdin closed before it got the signal could take
    // the end of its input as complete (psql would commit a partial restore).
    for c in &children {
        c.signal(libc::SIGTERM);
    }
    CANCELLED.store(true, Ordering::Release);
    watchers().send_replace(true);
    if !children.is_empty() {
        let _ = std::thread::Builder::new()
            .name("kill".into())
            .spawn(move || {
                std::thread::sleep(KILL_AFTER);
                for c in &children {
                    c.signal(libc::SIGKILL);
                }
            });
    }
    true
}

/// Resolves when the run is cancelled.
pub async fn cancelled() {
    let mut rx = watchers().subscribe();
    let _ = rx.wait_for(|c| *c).await;
}

/// Runs `fut` until it completes or the run is cancelled (`None`).
pub async fn or_cancelled<F: Future>(fut: F) -> Option<F::Output> {
    if is_cancelled() {
        return None;
    }
    let mut fut = pin!(fut);
    let mut stop = pin!(cancelled());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Blocks the current thread on `fut` until it completes or the run is cancelled. For
/// pipe operations on host threads (never inside a tokio runtime).
pub fn block_on<F: Future>(fut: F) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(or_cancelled(fut));
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A live plugin instance, watched for its deadline until dropped.
pub struct StageGuard {
    id: u64,
    deadline: Instant,
}

impl StageGuard {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Drop for StageGuard {
    fn drop(&mut self) {
        with_state(|s| s.stages.remove(&self.id));
    }
}

/// Watches a plugin instance of `stage` that may run for `limit` from now.
pub fn watch_stage(stage: &str, limit: Duration) -> StageGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let deadline = Instant::now()
        .checked_add(limit)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86400));
    with_state(|s| s.stages.insert(id, (stage.to_string(), deadline, limit)));
    StageGuard { id, deadline }
}

/// A program started by a plugin, signalled through a pidfd so a signal can never reach
/// another process that reused its pid after it was reaped.
pub struct ChildHandle {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
}

impl ChildHandle {
    /// Call right after spawning, before anything can reap `pid`.
    pub fn new(pid: u32) -> ChildHandle {
        let pid = libc::pid_t::try_from(pid).unwrap_or(0);
        // SAFETY: pidfd_open(2) with a pid we spawned; returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = i32::try_from(fd)
            .ok()
            .filter(|fd| *fd >= 0)
            // SAFETY: the syscall returned a fresh fd that nothing else owns.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        ChildHandle { pid, pidfd }
    }

    pub fn signal(&self, sig: i32) {
        match &self.pidfd {
            // SAFETY: pidfd_send_signal(2) on our own pidfd; a reaped process gets nothing.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            // Kernels before 5.3: plain kill(2) on a pid we have not reaped yet.
            // SAFETY: kill(2) only sends a signal.
            None if self.pid > 0 => unsafe {
                libc::kill(self.pid, sig);
            },
            None => {}
        }
    }
}

/// Keeps a started program in the run's list until dropped (after it was reaped).
pub struct ChildGuard {
    id: u64,
    pub handle: Arc<ChildHandle>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        with_state(|s| s.children.remove(&self.id));
    }
}

/// Adds a started program to the run's list; if the run is already stopped, it is
/// signalled at once.
pub fn watch_child(pid: u32) -> ChildGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let handle = Arc::new(ChildHandle::new(pid));
    let stopped = with_state(|s| {
        s.children.insert(id, handle.clone());
        s.reason.is_some()
    });
    if stopped {
        handle.signal(libc::SIGKILL);
    }
    ChildGuard { id, handle }
}

fn kill_all_children() {
    let children: Vec<_> = with_state(|s| s.children.values().cloned().collect());
    for c in children {
        c.signal(libc::SIGKILL);
    }
}

/// Kills every started program and exits the process now.
fn exit_now(code: u8) -> ! {
    kill_all_children();
    // The shell prompt starts on a clean line.
    logging::end_status();
    std::process::exit(i32::from(code));
}

/// The watchdog, called every epoch tick: stops the run when a stage passed its deadline,
/// and exits the process when stages did not return within [`GRACE`] of a cancellation.
pub fn tick() {
    let now = Instant::now();
    let (late, stuck) = with_state(|s| {
        let late = if s.reason.is_none() {
            s.stages
                .values()
                .find(|(_, deadline, _)| *deadline <= now)
                .cloned()
        } else {
            None
        };
        let stuck = match &s.reason {
            Some((reason, at)) if !s.exiting && at.elapsed() >= GRACE => {
                s.exiting = true;
                let stages: Vec<String> = s.stages.values().map(|(n, _, _)| n.clone()).collect();
                Some((reason.clone(), stages))
            }
            _ => None,
        };
        (late, stuck)
    });
    if let Some((stage, _, limit)) = late {
        let reason = Reason::Timeout { stage, limit };
        if cancel(reason.clone()) {
            logging::error(None, &format!("{reason}: stopping the run"));
        }
    }
    if let Some((reason, stages)) = stuck {
        let which = if stages.is_empty() {
            "the run".to_string()
        } else {
            format!(
                "stage(s) {}",
                stages
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        logging::error(
            None,
            &format!(
                "{which} did not stop within {}s of being stopped ({reason}); exiting now",
                GRACE.as_secs()
            ),
        );
        exit_now(reason.exit_code());
    }
}

/// Whether anything that needs a clean stop is in progress (a plugin instance or a
/// program); if not, a signal can end the process at once.
fn busy() -> bool {
    with_state(|s| !s.stages.is_empty() || !s.children.is_empty())
}

/// The write end of the self-pipe the signal handler writes to.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal_raw(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = u8::try_from(sig).unwrap_or(0);
        // SAFETY: write(2) is async-signal-safe; a full pipe only drops this byte.
        unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
}

/// Handles SIGTERM, SIGINT and SIGHUP on a thread of their own: the first one stops the
/// run (and exits at once if nothing is running), a second one exits at once.
///
/// A handler that only writes to a pipe, rather than blocking the signals and `sigwait`:
/// a blocked mask is inherited by every program started (pg_dump, psql, gpg would ignore
/// SIGTERM), while a handler is reset to the default by `exec`.
pub fn install_signal_handlers() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2(2) fills the two fds it creates.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return;
    }
    // SAFETY: the read end is ours alone from here on.
    let read = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    // Blocking reads on the thread; the handler's writes stay non-blocking.
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fds[0], libc::F_SETFL, 0) };
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            use std::io::Read;
            let mut read = read;
            let mut byte = [0u8; 1];
            while let Ok(1) = read.read(&mut byte) {
                on_signal(i32::from(byte[0]));
            }
        });
    if spawned.is_err() {
        return; // default actions stay
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: sigaction(2) with a handler that only calls write(2); SA_RESTART so
        // that other threads' system calls continue rather than fail with EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal_raw as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// What a supervisor does with a stop signal ([`supervise`]).
type Supervisor = Box<dyn Fn(i32) + Send + Sync>;

fn supervisor() -> &'static OnceLock<Supervisor> {
    static S: OnceLock<Supervisor> = OnceLock::new();
    &S
}

/// Hands every later SIGTERM, SIGINT and SIGHUP to `handle` instead of stopping a run: for
/// `pipeline daemon`, which runs no stage itself but supervises runs in child processes
/// and stops them its own way. Only the first call counts.
pub fn supervise(handle: impl Fn(i32) + Send + Sync + 'static) {
    let _ = supervisor().set(Box::new(handle));
}

fn on_signal(sig: i32) {
    if let Some(handle) = supervisor().get() {
        handle(sig);
        return;
    }
    let name = signal_name(sig);
    let reason = Reason::Signal(sig);
    if is_cancelled() || reason_is_set() {
        logging::error(None, &format!("received {name} again: exiting now"));
        exit_now(reason.exit_code());
    }
    if !busy() {
        logging::error(None, &format!("received {name}: exiting"));
        exit_now(reason.exit_code());
    }
    // Logged before stopping anything, so the reason is the first thing the log says.
    logging::error(
        None,
        &format!(
            "received {name}: stopping the run (stopping started programs, failing every stage's stream so sinks remove partial files; exiting within {}s; send it again to exit at once)",
            GRACE.as_secs()
        ),
    );
    cancel(reason);
}

fn reason_is_set() -> bool {
    with_state(|s| s.reason.is_some())
}
