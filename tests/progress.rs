//! Live progress: on a terminal, `pipeline run` and `pipeline restore` redraw one line on
//! stderr while bytes stream, and leave the terminal clean; with stderr a pipe or a file
//! (cron), with `--log-format json` or `--quiet`, nothing of it is printed. The terminal is
//! a real pseudo-terminal ([`support::pty`]); the runs go against a real PostgreSQL.

mod support;

use std::time::Duration;

use support::PgCluster;
use support::pty::{self, PtyOutput};
use support::scratch::{Scratch, assert_no_secret, stderr};

const LIMIT: Duration = Duration::from_secs(120);

/// postgres → misbehave (trickle: about 3 MiB/s, so the run lasts long enough for several
/// redraws) → zstd → local.
fn slow_pipeline(s: &Scratch) -> String {
    let file = s.path().join("progress.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"trickle\"\nplugin = \"{}\"\nmode = \"trickle\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"./backups\"\n",
            support::misbehave_wasm().display()
        ),
    )
    .expect("write the pipeline file");
    file.display().to_string()
}

/// A database whose dump is about 4.5 MiB (60 000 rows of noise).
fn database() -> PgCluster {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_noise(&pg, "app", 60_000);
    pg
}

/// A size as the progress line prints it (`4.1 MiB`), in bytes.
fn bytes(s: &str) -> f64 {
    let (n, unit) = s
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a size: {s:?}"));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("not a size: {s:?}"));
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("not a unit: {s:?}"),
    };
    n * scale
}

/// An elapsed time as printed (`0:14`, `1:02:03`), in seconds.
fn seconds(s: &str) -> u64 {
    let parts: Vec<u64> = s
        .split(':')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("not a time: {s:?}")))
        .collect();
    assert!(
        (2..=3).contains(&parts.len()) && parts[1..].iter().all(|&p| p < 60),
        "not a time: {s:?}"
    );
    parts.iter().fold(0, |acc, p| acc * 60 + p)
}

/// `<size> (<rate>/s)` → (bytes, bytes per second).
fn with_rate(s: &str) -> (f64, f64) {
    let (size, rate) = s
        .split_once(" (")
        .unwrap_or_else(|| panic!("no rate in {s:?}"));
    let rate = rate
        .strip_suffix("/s)")
        .unwrap_or_else(|| panic!("no rate in {s:?}"));
    (bytes(size), bytes(rate))
}

/// The three ` · `-separated fields of a progress line after `prefix`.
fn fields<'a>(line: &'a str, prefix: &str) -> [&'a str; 3] {
    let parts: Vec<&str> = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("not a progress line starting {prefix:?}: {line:?}"))
        .split(" · ")
        .collect();
    parts
        .try_into()
        .unwrap_or_else(|_| panic!("not three fields after {prefix:?}: {line:?}"))
}

/// One redraw of a run:
/// `dumped 4.1 MiB (3.0 MiB/s) → zstd 1.9 MiB · local 1.9 MiB · 0:01`.
struct RunLine {
    dumped: f64,
    rate: f64,
    zstd: f64,
    local: f64,
    elapsed: u64,
}

fn run_line(line: &str) -> RunLine {
    let [chain, local, elapsed] = fields(line, "dumped ");
    let (dumped, zstd) = chain
        .split_once(" → zstd ")
        .unwrap_or_else(|| panic!("no transform in {line:?}"));
    let (dumped, rate) = with_rate(dumped);
    RunLine {
        dumped,
        rate,
        zstd: bytes(zstd),
        local: bytes(local.strip_prefix("local ").expect("the sink's name")),
        elapsed: seconds(elapsed),
    }
}

/// One redraw of a restore, `restore: read 1.9 MiB (9.5 MiB/s) · decoded 4.1 MiB · 0:01`:
/// (read, rate, decoded, elapsed).
fn restore_line(line: &str) -> (f64, f64, f64, u64) {
    let [read, decoded, elapsed] = fields(line, "restore: read ");
    let (read, rate) = with_rate(read);
    let decoded = bytes(decoded.strip_prefix("decoded ").expect("decoded"));
    (read, rate, decoded, seconds(elapsed))
}

/// The terminal ends clean: the cursor on an empty line (the shell prompt starts there),
/// and no progress line left among the lines scrolled up.
fn assert_clean(out: &PtyOutput) {
    let (lines, current) = pty::screen(&out.terminal);
    assert_eq!(
        current, "",
        "the terminal's last line is not empty:\n{:?}",
        out.terminal
    );
    assert!(!lines.is_empty(), "the log is on the terminal");
    for line in &lines {
        assert!(
            !line.contains("B/s)")
                && !line.starts_with("dumped ")
                && !line.starts_with("restore: "),
            "a progress line stayed on the screen: {line:?}\n{:?}",
            out.terminal
        );
    }
}

/// Nothing of a progress line: no carriage return, no escape sequence, no rate.
fn assert_no_progress(what: &str, text: &str) {
    assert!(
        !text.contains('\x1b') && !text.replace("\r\n", "\n").contains('\r'),
        "{what}: a progress line was drawn:\n{text:?}"
    );
    assert!(
        !text.contains("B/s)") && !text.lines().any(|l| l.starts_with("dumped ")),
        "{what}: progress text:\n{text}"
    );
}

#[test]
fn a_run_on_a_terminal_redraws_one_line_and_leaves_the_terminal_clean() {
    let pg = database();
    let s = Scratch::new();
    let file = slow_pipeline(&s);
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str())];

    let out = pty::run(s.command(&["run", &file], &env), 100, LIMIT);
    assert!(out.status.success(), "run failed:\n{}", out.terminal);
    let drawn = pty::drawn(&out.terminal);
    assert!(
        drawn.len() >= 2,
        "at least two redraws while the dump trickles: {drawn:?}"
    );
    let lines: Vec<RunLine> = drawn.iter().map(|l| run_line(l)).collect();
    for (l, text) in lines.iter().zip(&drawn) {
        assert!(text.chars().count() < 100, "fits the window: {text:?}");
        assert!(l.zstd <= l.dumped, "compressed after dumped: {text:?}");
        assert!(
            l.local <= l.zstd + 1024.0,
            "stored after compressed: {text:?}"
        );
    }
    for pair in lines.windows(2) {
        assert!(pair[1].dumped >= pair[0].dumped, "{drawn:?}");
        assert!(pair[1].elapsed >= pair[0].elapsed, "{drawn:?}");
    }
    let last = lines.last().expect("a line");
    assert!(last.dumped >= 1024.0 * 1024.0, "{drawn:?}");
    assert!(last.local > 0.0, "the sink's bytes are counted: {drawn:?}");
    assert!(lines.iter().any(|l| l.rate > 0.0), "a rate: {drawn:?}");
    assert!(last.elapsed >= 1, "the elapsed time ticks: {drawn:?}");
    assert_clean(&out);
    assert!(
        out.terminal.contains("succeeded"),
        "the log is on the terminal:\n{}",
        out.terminal
    );
    assert_no_secret(&pg, &out.terminal);

    // The same run with stderr a pipe (cron, a log file): not a byte of it.
    let piped = s.run(&["run", &file], &env);
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_no_progress("stderr a pipe", &stderr(&piped));

    // --log-format json on a terminal: every line on it is a JSON object.
    let json = pty::run(
        s.command(&["run", &file, "--log-format", "json"], &env),
        100,
        LIMIT,
    );
    assert!(json.status.success(), "{}", json.terminal);
    assert_no_progress("--log-format json", &json.terminal);
    let text = json.terminal.replace("\r\n", "\n");
    assert!(text.ends_with('\n'), "{text:?}");
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(
        serde_json::from_str::<serde_json::Value>(json.stdout.trim()).is_ok(),
        "the JSON report on stdout: {}",
        json.stdout
    );

    // --quiet on a terminal: warnings and errors only, no progress.
    let quiet = pty::run(s.command(&["run", &file, "--quiet"], &env), 100, LIMIT);
    assert!(quiet.status.success(), "{}", quiet.terminal);
    assert_no_progress("--quiet", &quiet.terminal);
}

#[test]
fn a_restore_on_a_terminal_shows_its_own_line_fitted_to_the_window() {
    let pg = database();
    // A table whose every row takes 50 ms to restore (its check calls pg_sleep): the
    // restore lasts about 1.5 s whatever the machine.
    pg.psql(
        "app",
        "SET ROLE app; \
         CREATE FUNCTION nap(x int) RETURNS boolean LANGUAGE sql \
           AS 'SELECT pg_sleep(0.05) IS NOT NULL'; \
         CREATE TABLE napping (i int CHECK (nap(i))); \
         INSERT INTO napping SELECT generate_series(1, 30);",
    );
    let s = Scratch::new();
    let file = slow_pipeline(&s);
    let url = pg.url("app");
    let env = [("DATABASE_URL", url.as_str())];
    let run = s.run(&["run", &file, "--progress", "never"], &env);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_no_progress("--progress never", &stderr(&run));

    let restore = |target: &str| {
        pg.create_db(target);
        let to = pg.url(target);
        s.command(&["restore", &file, "--to", &to], &env)
    };
    let out = pty::run(restore("wide"), 100, LIMIT);
    assert!(out.status.success(), "restore failed:\n{}", out.terminal);
    let drawn = pty::drawn(&out.terminal);
    assert!(drawn.len() >= 2, "redraws while it restores: {drawn:?}");
    let lines: Vec<_> = drawn.iter().map(|l| restore_line(l)).collect();
    for pair in lines.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 && pair[1].2 >= pair[0].2,
            "{drawn:?}"
        );
        assert!(pair[1].3 >= pair[0].3, "{drawn:?}");
    }
    let (read, _, decoded, elapsed) = *lines.last().expect("a line");
    assert!(read > 0.0 && decoded > 0.0, "{drawn:?}");
    assert!(lines.iter().any(|l| l.1 > 0.0), "a rate: {drawn:?}");
    assert!(elapsed >= 1, "{drawn:?}");
    assert_clean(&out);
    assert!(out.terminal.contains("restored"), "{}", out.terminal);
    assert_eq!(
        pg.psql("wide", "SELECT count(*) FROM napping;").trim(),
        "30",
        "restored"
    );

    // A narrow window: the line is cut to fit, never wrapped.
    let narrow = pty::run(restore("narrow"), 30, LIMIT);
    assert!(narrow.status.success(), "{}", narrow.terminal);
    let drawn = pty::drawn(&narrow.terminal);
    assert!(drawn.len() >= 2, "{drawn:?}");
    for line in &drawn {
        assert!(
            line.chars().count() < 30 && line.starts_with("restore: read ") && line.ends_with('…'),
            "cut to the window: {line:?}"
        );
    }
    assert_clean(&narrow);

    // Not a terminal: nothing.
    let piped = restore("piped").output().expect("run the pipeline binary");
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert_no_progress("restore to a pipe", &stderr(&piped));
}

#[test]
fn progress_can_be_forced_or_refused_and_a_stopped_run_leaves_the_terminal_clean() {
    let pg = database();
    let s = Scratch::new();
    let file = slow_pipeline(&s);
    let url = pg.url("app");

    // PIPELINE_PROGRESS=never on a terminal: nothing.
    let never = pty::run(
        s.command(
            &["run", &file],
            &[("DATABASE_URL", &url), ("PIPELINE_PROGRESS", "never")],
        ),
        100,
        LIMIT,
    );
    assert!(never.status.success(), "{}", never.terminal);
    assert_no_progress("PIPELINE_PROGRESS=never", &never.terminal);

    // --progress always into a pipe: drawn, as wide as $COLUMNS says (no window size).
    let always = s.run(
        &["run", &file, "--progress", "always"],
        &[("DATABASE_URL", &url), ("COLUMNS", "40")],
    );
    assert!(always.status.success(), "{}", stderr(&always));
    let drawn = pty::drawn(&stderr(&always));
    assert!(drawn.len() >= 2, "{drawn:?}");
    for line in &drawn {
        assert!(
            line.chars().count() < 40 && line.starts_with("dumped ") && line.ends_with('…'),
            "{line:?}"
        );
    }

    // SIGTERM while the line is shown: the run stops (143) and the line is cleared.
    let child = pty::spawn(
        s.command(&["run", &file], &[("DATABASE_URL", &url)]),
        100,
        24,
    );
    child.wait_for("dumped ", LIMIT);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = child.wait(LIMIT);
    assert_eq!(out.status.code(), Some(143), "{}", out.terminal);
    assert!(
        out.terminal.contains("received SIGTERM: stopping the run"),
        "{}",
        out.terminal
    );
    assert_clean(&out);
}
