//! One transform's own throughput: pipes N MiB through its `encode`, then the ciphertext
//! (or compressed bytes) back through `decode`, with nothing else running — no pg_dump, no
//! disk. The transform runs exactly as in a pipeline run (the same engine, component
//! cache, grants and host pipes), so the figure includes the host ↔ guest stream copies.
//!
//!     cargo run --release --example transform-throughput -- FILE.toml STAGE MIB [SAMPLE]
//!
//! STAGE is a transform's name in FILE (`age`, `zstd`, …). The input is SAMPLE (a file,
//! repeated to MIB MiB) or, without one, pseudo-random bytes (what follows `zstd` looks like
//! that to a cipher). Prints one line per direction: MiB in, MiB out, seconds, MB/s of
//! input and of output. Used by `bench/nightly.sh --age`.

use std::io::Read;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use pipeline::pipe::pipe;

const BLOCK: usize = 1 << 20;
/// Bytes per message into the transform: what a stage's reads hand over at a time.
const PIECE: usize = 256 * 1024;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, stage, mib, rest @ ..] = args.as_slice() else {
        bail!("usage: transform-throughput FILE.toml STAGE MIB [SAMPLE]");
    };
    let mib: usize = mib.parse().context("MIB must be a whole number")?;
    let block = match rest.first() {
        Some(sample) => {
            let mut data = Vec::new();
            std::fs::File::open(sample)
                .with_context(|| format!("open {sample}"))?
                .read_to_end(&mut data)?;
            if data.is_empty() {
                bail!("{sample} is empty");
            }
            data
        }
        None => pseudo_random(BLOCK),
    };
    let total = mib * BLOCK;

    let engine = pipeline::engine::Engine::new()?;
    let prepared = pipeline::stages::load(&engine, file)?;
    let Some(t) = prepared.transforms.iter().find(|t| t.stage.name == *stage) else {
        bail!("{file} has no transform named `{stage}`");
    };

    // Encode: `total` bytes of input, keeping the output for the decode below.
    let (in_w, in_r) = pipe("bench → transform");
    let (out_w, mut out_r) = pipe("transform → bench");
    let input = Bytes::from(block);
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        // In pieces the size a stage reads at a time, wrapping around the sample.
        let (mut sent, mut at) = (0, 0);
        while sent < total {
            let n = (total - sent).min(input.len() - at).min(PIECE);
            in_w.send_blocking(input.slice(at..at + n))?;
            sent += n;
            at = (at + n) % input.len();
        }
        in_w.finish()
    });
    let collector = std::thread::spawn(move || -> std::io::Result<Vec<Bytes>> {
        let mut chunks = Vec::new();
        while let Some(b) = out_r.recv_blocking()? {
            chunks.push(b);
        }
        Ok(chunks)
    });
    let start = Instant::now();
    t.encode(&engine, in_r, out_w)
        .map_err(|e| anyhow::anyhow!("encode: {e}"))?;
    feeder.join().expect("feeder")?;
    let encoded = collector.join().expect("collector")?;
    let secs = start.elapsed().as_secs_f64();
    let out_len: usize = encoded.iter().map(Bytes::len).sum();
    report("encode", total, out_len, secs);

    // Decode the same bytes back.
    let (in_w, in_r) = pipe("bench → transform");
    let (out_w, mut out_r) = pipe("transform → bench");
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        for b in encoded {
            in_w.send_blocking(b)?;
        }
        in_w.finish()
    });
    let counter = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut n = 0;
        while let Some(b) = out_r.recv_blocking()? {
            n += b.len();
        }
        Ok(n)
    });
    let start = Instant::now();
    t.decode(&engine, in_r, out_w)
        .map_err(|e| anyhow::anyhow!("decode: {e}"))?;
    feeder.join().expect("feeder")?;
    let back = counter.join().expect("counter")?;
    let secs = start.elapsed().as_secs_f64();
    if back != total {
        bail!("decode gave {back} bytes back, not the {total} encoded");
    }
    report("decode", out_len, back, secs);
    Ok(())
}

fn report(what: &str, input: usize, output: usize, secs: f64) {
    let mib = |n: usize| n as f64 / BLOCK as f64;
    let mbs = |n: usize| n as f64 / 1e6 / secs;
    println!(
        "{what}: {:.1} MiB in, {:.1} MiB out, {secs:.3} s, {:.1} MB/s in, {:.1} MB/s out",
        mib(input),
        mib(output),
        mbs(input),
        mbs(output)
    );
}

/// xorshift64*: incompressible and the same on every run.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
