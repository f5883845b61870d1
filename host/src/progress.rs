//! Live progress on a terminal: one line on stderr, redrawn a few times a second while a
//! run streams (`dumped 1.2 GiB (85.0 MiB/s) → zstd 310.0 MiB · local 310.0 MiB · 0:14`)
//! and while a restore or verify reads a backup back (`restore: read 310.0 MiB (85.0 MiB/s)
//! · decoded 1.2 GiB · 0:14`).
//!
//! The data path only counts: a [`Meter`] is one relaxed atomic add per chunk, attached to
//! a pipe's reading end ([`crate::pipe::PipeReader::metered`]); no lock, no allocation.
//! A renderer thread ([`show`]) reads the meters and draws the line through
//! [`crate::logging::status`], which owns stderr: a log line clears the progress line,
//! prints, and draws it again, so the two never mix. The line is cleared when the stream
//! ends, whatever its end; a process that exits at once (a second signal, the grace
//! period) clears it first ([`crate::logging::end_status`]).
//!
//! When: only with `--log-format human`, and by default ([`When::Auto`]) only if stderr is
//! a terminal and `--quiet` is not given: cron logs and JSON logs never hold it.
//! `--progress`/`PIPELINE_PROGRESS` overrides that (`always`, `never`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::logging::{self, Format};

/// Between two redraws.
const INTERVAL: Duration = Duration::from_millis(200);
/// The rate is measured over this much recent time, so it follows a run that speeds up or
/// stalls instead of averaging the whole run.
const RATE_WINDOW: Duration = Duration::from_secs(3);
/// The width assumed when stderr's window size cannot be read (`always` into a file).
const DEFAULT_WIDTH: usize = 80;

/// `--progress`: when to show the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum When {
    /// When stderr is a terminal, with human logs and without `--quiet`.
    #[default]
    Auto,
    /// Whatever stderr is, even with `--quiet` (never with `--log-format json`).
    Always,
    /// Never.
    Never,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Decides once, at start-up, whether progress is shown in this process.
pub fn init(when: When, format: Format, quiet: bool) {
    ENABLED.store(
        decide(when, format, quiet, stderr_is_terminal()),
        Ordering::Relaxed,
    );
}

fn decide(when: When, format: Format, quiet: bool, terminal: bool) -> bool {
    if format == Format::Json {
        return false;
    }
    match when {
        When::Never => false,
        When::Always => true,
        When::Auto => terminal && !quiet,
    }
}

fn stderr_is_terminal() -> bool {
    // SAFETY: isatty(3) only inspects the descriptor.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// The columns of the terminal on stderr, read at each redraw (the window may be resized).
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a `winsize` we own; on failure it is left zeroed.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &raw mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        return usize::from(ws.ws_col);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// A byte counter the data path adds to (one relaxed atomic add) and the renderer reads.
#[derive(Clone, Default, Debug)]
pub struct Meter(Arc<AtomicU64>);

impl Meter {
    pub fn new() -> Meter {
        Meter::default()
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The meters of a backup run: bytes out of the source, after the last transform (when
/// there is one, by its stage name), and taken by each sink.
#[derive(Clone, Debug)]
pub struct RunMeters {
    pub dumped: Meter,
    pub encoded: Option<(String, Meter)>,
    pub sinks: Vec<(String, Meter)>,
}

impl RunMeters {
    pub fn new(last_transform: Option<&str>, sinks: &[&str]) -> RunMeters {
        RunMeters {
            dumped: Meter::new(),
            encoded: last_transform.map(|t| (t.to_string(), Meter::new())),
            sinks: sinks
                .iter()
                .map(|s| (s.to_string(), Meter::new()))
                .collect(),
        }
    }
}

/// The meters of a backup read back (restore, verify): bytes read from the sink and bytes
/// once every transform is undone. `what` starts the line (`restore`, `verify local`).
#[derive(Clone, Debug)]
pub struct ReadMeters {
    pub what: String,
    pub read: Meter,
    pub decoded: Meter,
}

impl ReadMeters {
    pub fn new(what: &str) -> ReadMeters {
        ReadMeters {
            what: what.to_string(),
            read: Meter::new(),
            decoded: Meter::new(),
        }
    }
}

/// What a line shows.
#[derive(Clone, Debug)]
pub enum Counters {
    Run(RunMeters),
    Read(ReadMeters),
}

impl Counters {
    /// The bytes the rate is measured on: what the source dumped, what was read back.
    fn moving(&self) -> u64 {
        match self {
            Counters::Run(m) => m.dumped.get(),
            Counters::Read(m) => m.read.get(),
        }
    }

    /// The line now. Meters are read downstream first, so a later stage never shows more
    /// than the stage before it passed on.
    fn line(&self, rate: f64, elapsed: Duration) -> String {
        match self {
            Counters::Run(m) => {
                let sinks: Vec<(&str, u64)> =
                    m.sinks.iter().map(|(n, c)| (n.as_str(), c.get())).collect();
                let encoded = m.encoded.as_ref().map(|(n, c)| (n.as_str(), c.get()));
                run_line(m.dumped.get(), rate, encoded, &sinks, elapsed)
            }
            Counters::Read(m) => {
                let decoded = m.decoded.get();
                read_line(&m.what, m.read.get(), decoded, rate, elapsed)
            }
        }
    }
}

/// `dumped 1.2 GiB (85.0 MiB/s) → zstd 310.0 MiB · local 310.0 MiB · s3 296.0 MiB · 0:14`
pub fn run_line(
    dumped: u64,
    rate: f64,
    encoded: Option<(&str, u64)>,
    sinks: &[(&str, u64)],
    elapsed: Duration,
) -> String {
    let mut line = format!("dumped {} ({})", size(dumped), per_second(rate));
    if let Some((name, n)) = encoded {
        line.push_str(&format!(" → {name} {}", size(n)));
    }
    for (name, n) in sinks {
        line.push_str(&format!(" · {name} {}", size(*n)));
    }
    line.push_str(&format!(" · {}", clock(elapsed)));
    line
}

/// `restore: read 310.0 MiB (85.0 MiB/s) · decoded 1.2 GiB · 0:14`
pub fn read_line(what: &str, read: u64, decoded: u64, rate: f64, elapsed: Duration) -> String {
    format!(
        "{what}: read {} ({}) · decoded {} · {}",
        size(read),
        per_second(rate),
        size(decoded),
        clock(elapsed)
    )
}

/// A size for people, the one format of the tool (`pipeline status` prints sizes with it
/// too): bytes up to 1 KiB, then KiB, MiB, GiB, … with one decimal (`1.5 KiB`, `310.0 MiB`).
pub fn size(bytes: u64) -> String {
    scaled(bytes as f64)
}

/// A rate in bytes per second: `85.0 MiB/s`.
pub fn per_second(rate: f64) -> String {
    let rate = if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        0.0
    };
    format!("{}/s", scaled(rate))
}

fn scaled(n: f64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024.0 {
        return format!("{} B", n.round() as u64);
    }
    let mut v = n / 1024.0;
    let mut unit = 0;
    // Rounded as printed: 1023.96 KiB is 1.0 MiB, not 1024.0 KiB.
    while v >= 1023.95 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Elapsed time: `0:14`, `12:03`, `1:02:03`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// `line` cut to fit `width` columns without wrapping: the last column stays free (some
/// terminals wrap as soon as it is written), and a cut line ends with `…`.
pub fn fit(line: &str, width: usize) -> String {
    let room = width.saturating_sub(1).max(1);
    if line.chars().count() <= room {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(room - 1).collect();
    cut.push('…');
    cut
}

/// The rate of the bytes moving, over the last [`RATE_WINDOW`].
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn new(start: Instant) -> Rate {
        Rate {
            samples: VecDeque::from([(start, 0)]),
        }
    }

    fn sample(&mut self, now: Instant, bytes: u64) -> f64 {
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The line on the screen while it lives: cleared when dropped. Nothing when progress is
/// off in this process.
pub struct Shown {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts redrawing a line for `counters` (first drawn after [`INTERVAL`], so a quick
/// stream shows nothing), until the returned guard is dropped.
pub fn show(counters: Counters) -> Shown {
    let off = Shown {
        stop: None,
        thread: None,
    };
    if !ENABLED.load(Ordering::Relaxed) {
        return off;
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("progress".into())
        .spawn(move || {
            let start = Instant::now();
            let mut rate = Rate::new(start);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                let now = Instant::now();
                let r = rate.sample(now, counters.moving());
                let line = counters.line(r, now.duration_since(start));
                logging::status(&fit(&line, terminal_width()));
            }
        });
    match thread {
        Ok(t) => Shown {
            stop: Some(stop),
            thread: Some(t),
        },
        // No thread, no line: the run goes on without it.
        Err(_) => off,
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            logging::clear_status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(310 * 1024 * 1024), "310.0 MiB");
        assert_eq!(size(1_288_490_189), "1.2 GiB");
        assert_eq!(size(1024 * 1024 - 100), "1023.9 KiB");
        // Rounded as printed: never "1024.0 KiB".
        assert_eq!(size(1024 * 1024 - 10), "1.0 MiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn rates_and_clocks() {
        assert_eq!(per_second(85.0 * 1024.0 * 1024.0), "85.0 MiB/s");
        assert_eq!(per_second(0.0), "0 B/s");
        assert_eq!(per_second(f64::NAN), "0 B/s");
        assert_eq!(clock(Duration::from_secs(14)), "0:14");
        assert_eq!(clock(Duration::from_secs(12 * 60 + 3)), "12:03");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn a_run_line_names_every_stage_that_counts() {
        let mib = 1024 * 1024;
        let line = run_line(
            1_288_490_189,
            85.0 * mib as f64,
            Some(("zstd", 310 * mib)),
            &[("local", 310 * mib), ("s3", 296 * mib)],
            Duration::from_secs(14),
        );
        assert_eq!(
            line,
            "dumped 1.2 GiB (85.0 MiB/s) → zstd 310.0 MiB · local 310.0 MiB · s3 296.0 MiB · 0:14"
        );
        let plain = run_line(2048, 0.0, None, &[("local", 2048)], Duration::ZERO);
        assert_eq!(plain, "dumped 2.0 KiB (0 B/s) · local 2.0 KiB · 0:00");
        assert_eq!(
            read_line("restore", 1024, 4096, 512.0, Duration::from_secs(61)),
            "restore: read 1.0 KiB (512 B/s) · decoded 4.0 KiB · 1:01"
        );
    }

    #[test]
    fn a_line_is_cut_to_the_width_never_wrapped() {
        let line = "dumped 1.2 GiB (85.0 MiB/s) → zstd 310.0 MiB · local 310.0 MiB · 0:14";
        assert_eq!(fit(line, 200), line);
        // Exactly as wide as the room (width - 1) stays whole.
        let n = line.chars().count();
        assert_eq!(fit(line, n + 1), line);
        for width in [1, 2, 10, 30, n] {
            let cut = fit(line, width);
            assert!(
                cut.chars().count() < width.max(2),
                "{width}: {cut:?} is {} wide",
                cut.chars().count()
            );
            assert!(!cut.contains('\n'));
        }
        assert_eq!(fit(line, 11), "dumped 1.…");
    }

    #[test]
    fn the_rate_follows_recent_bytes() {
        let start = Instant::now();
        let mut r = Rate::new(start);
        let s = |ms| start + Duration::from_millis(ms);
        assert_eq!(r.sample(s(500), 500), 1000.0);
        assert_eq!(r.sample(s(1000), 1000), 1000.0);
        // Stalled for longer than the window: the rate falls to nothing.
        for ms in (1200..=5000).step_by(200) {
            r.sample(s(ms), 1000);
        }
        assert_eq!(r.sample(s(5200), 1000), 0.0);
    }

    #[test]
    fn when_is_decided_by_terminal_format_and_quiet() {
        assert!(decide(When::Auto, Format::Human, false, true));
        assert!(!decide(When::Auto, Format::Human, false, false));
        assert!(!decide(When::Auto, Format::Human, true, true));
        assert!(!decide(When::Auto, Format::Json, false, true));
        assert!(decide(When::Always, Format::Human, true, false));
        assert!(!decide(When::Always, Format::Json, false, true));
        assert!(!decide(When::Never, Format::Human, false, true));
    }
}
