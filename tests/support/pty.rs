//! A pseudo-terminal for tests of what `pipeline` shows on a terminal: the program's stderr
//! is the terminal's slave side (a real tty: `isatty`, a window size, the kernel's default
//! line discipline, which turns `\n` into `\r\n`), and everything the terminal receives is
//! read from the master side, as a terminal emulator would.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A program running with its stderr on a pseudo-terminal.
pub struct PtyChild {
    child: Child,
    received: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

/// What a program left: its exit status, its stdout, and everything its terminal received.
pub struct PtyOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub terminal: String,
}

fn cloexec(fd: &OwnedFd) {
    // SAFETY: fcntl(2) on a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Starts `cmd` with stderr on a new pseudo-terminal of `cols` × `rows` (stdin /dev/null,
/// stdout piped), reading the terminal from a thread until the program and everything it
/// started have closed it.
pub fn spawn(mut cmd: Command, cols: u16, rows: u16) -> PtyChild {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty(3) fills the two descriptors it opens; the name and termios are
    // optional (null: the kernel's defaults).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(
        rc,
        0,
        "openpty: {} (a pseudo-terminal is needed: is /dev/pts mounted?)",
        std::io::Error::last_os_error()
    );
    // SAFETY: both descriptors were just opened and are ours alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cloexec(&master);
    cloexec(&slave);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("start the program on a pseudo-terminal");
    // `cmd` holds the slave until dropped: the master sees EIO only once every copy is gone.
    drop(cmd);
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut buf = [0u8; 4096];
        // Linux answers EIO once no slave descriptor is left open.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    PtyChild {
        child,
        received,
        reader,
    }
}

impl PtyChild {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What the terminal has received so far.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal has received `what` (panics after `limit`).
    pub fn wait_for(&self, what: &str, limit: Duration) {
        let started = Instant::now();
        while !self.received().contains(what) {
            assert!(
                started.elapsed() < limit,
                "the terminal never showed {what:?}; it holds:\n{}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the program (at most `limit`, then kills it and panics) and for its
    /// terminal to be closed.
    pub fn wait(mut self, limit: Duration) -> PtyOutput {
        let mut stdout = String::new();
        let mut pipe = self.child.stdout.take().expect("stdout is piped");
        let out = std::thread::spawn(move || {
            let _ = pipe.read_to_string(&mut stdout);
            stdout
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the program") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the program did not end within {limit:?}; its terminal:\n{}",
                    self.received()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out.join().expect("read stdout");
        let terminal = self.received.clone();
        self.reader.join().expect("read the terminal");
        let terminal = String::from_utf8_lossy(&terminal.lock().unwrap()).into_owned();
        PtyOutput {
            status,
            stdout,
            terminal,
        }
    }
}

/// `cmd` run to its end with stderr on a `cols`-wide pseudo-terminal.
pub fn run(cmd: Command, cols: u16, limit: Duration) -> PtyOutput {
    spawn(cmd, cols, 24).wait(limit)
}

/// What a terminal shows after receiving `received`: the lines scrolled up (each ended by a
/// newline) and the line the cursor is on. Understands what a line-oriented program
/// writes: `\r\n` and `\n` (a newline), `\r` (back to the first column), `ESC [ K` (clear
/// to the end of the line), and printable characters, which overwrite.
pub fn screen(received: &str) -> (Vec<String>, String) {
    let mut lines = Vec::new();
    let mut line: Vec<char> = Vec::new();
    let mut col = 0;
    let mut chars = received.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                lines.push(line.drain(..).collect());
                col = 0;
            }
            '\r' => col = 0,
            '\x1b' => {
                let seq: String = [chars.next(), chars.next()].into_iter().flatten().collect();
                assert_eq!(seq, "[K", "an escape sequence the tests do not expect");
                line.truncate(col);
            }
            c => {
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    (lines, line.into_iter().collect())
}

/// Every progress line drawn, in order: what follows each `\r ESC [ K` (a line drawn
/// over the cleared one), or, when log lines were printed there, what follows the last of
/// them (the line drawn again under them).
pub fn drawn(received: &str) -> Vec<String> {
    received
        .replace("\r\n", "\n")
        .split("\r\x1b[K")
        .skip(1)
        .filter_map(|part| part.rsplit('\n').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
