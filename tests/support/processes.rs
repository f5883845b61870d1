//! The programs a run started, found in `/proc`: whether any outlived the run.

use std::path::Path;
use std::time::{Duration, Instant};

use super::PgCluster;

/// pids of the programs (by name) that run against this test's cluster.
pub fn programs(name: &str, pg: &PgCluster) -> Vec<u32> {
    programs_with(name, pg, "")
}

/// Like [`programs`], only those with an argument `marker`.
pub fn programs_with(name: &str, pg: &PgCluster, marker: &str) -> Vec<u32> {
    let port = pg.port().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_program = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|n| n == name);
        // A zombie has an empty cmdline; only running programs count.
        if is_program
            && args.iter().any(|a| a.contains(&port))
            && (marker.is_empty() || args.iter().any(|a| a == marker))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Waits (a few seconds at most) for every pg_dump against this test's cluster to be gone.
pub fn assert_no_pg_dump(pg: &PgCluster) {
    let mut left = Vec::new();
    let started = Instant::now();
    // The kernel needs a moment to deliver the death signal and tear the process down.
    while started.elapsed() < Duration::from_secs(3) {
        left = programs("pg_dump", pg);
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("pg_dump is still running: pids {left:?}");
}
