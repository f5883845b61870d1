//! First-party codecs that run natively behind the transform contract.
//!
//! zstd is the default codec of every backup, and measured on 2 cores a single-threaded
//! zstd inside a component (~100 MB/s) cannot keep up with `pg_dump | zstd -3 -T0`. Native,
//! multi-threaded zstd can; it takes the same configuration, adds the same extension and
//! streams through the same pipes as a component transform would.

use std::io;

use bytes::Bytes;
use serde::Deserialize;
use zstd::stream::raw::{CParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

use crate::bindings::{ConfigKey, Plan, PluginInfo, PluginKind, ValueType};
use crate::pipe::{self, PipeReader, PipeWriter};

/// Bytes each zstd worker compresses at a time.
const JOB_SIZE: u32 = 2 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZstdConfig {
    #[serde(default = "default_level")]
    level: i32,
    #[serde(default)]
    threads: u32,
}

fn default_level() -> i32 {
    3
}

#[derive(Debug, Clone)]
pub struct Zstd {
    level: i32,
    threads: u32,
}

pub fn describe(name: &str) -> Option<PluginInfo> {
    (name == "zstd").then(|| PluginInfo {
        name: "zstd".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        kind: PluginKind::Transform,
        description:
            "Zstandard compression (native, multi-threaded); output decompresses with `zstd -d`"
                .into(),
        config_keys: vec![
            ConfigKey {
                name: "level".into(),
                value_type: ValueType::Integer,
                required: false,
                description: "compression level 1-19 (default 3, as `zstd -3`)".into(),
            },
            ConfigKey {
                name: "threads".into(),
                value_type: ValueType::Integer,
                required: false,
                description: "worker threads; 0 (default) uses every core, as `zstd -T0`".into(),
            },
        ],
    })
}

impl Zstd {
    /// Checks the stage's configuration (the plugin-owned keys as JSON).
    pub fn from_config(
        config: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Zstd, String> {
        let c: ZstdConfig = serde_json::from_value(serde_json::Value::Object(config.clone()))
            .map_err(|e| e.to_string().replace("field", "key"))?;
        if !(1..=19).contains(&c.level) {
            return Err(format!("level {} is out of range: use 1 to 19", c.level));
        }
        Ok(Zstd {
            level: c.level,
            threads: c.threads,
        })
    }

    /// What a component transform's `plan` would say: the extension and content type it
    /// adds, and no grants.
    pub fn plan(&self) -> Plan {
        Plan {
            extension: Some("zst".into()),
            content_type: Some("application/zstd".into()),
            grants: vec![],
        }
    }

    fn workers(&self) -> u32 {
        match self.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            n => n,
        }
    }

    pub fn encode(&self, mut input: PipeReader, output: PipeWriter) -> io::Result<()> {
        let mut enc = Encoder::new(self.level)?;
        let workers = self.workers();
        if workers > 1 {
            enc.set_parameter(CParameter::NbWorkers(workers))?;
            // zstd's default job is 4 windows (8 MiB at -3), and it buffers several per
            // worker: +40 MiB of RSS. 2 MiB jobs cost +9 MiB over 1 MiB ones (peak 52 MiB
            // in bench/files.sh) and keep both workers busier: a worker that finishes early
            // waits until the oldest job reports progress before it gets the next one, so
            // smaller jobs leave a core idle more often (measured with `perf sched`). Ratio
            // within 0.5% of the default either way.
            enc.set_parameter(CParameter::JobSize(JOB_SIZE))?;
        }
        enc.set_parameter(CParameter::ChecksumFlag(true))?;
        // The output goes out in whole chunks, each handed over without a copy: every chunk
        // costs a wake-up at each stage downstream (the fan-out, its SHA-256, each sink's
        // write), and zstd's streaming writer would send one per 32 KiB it produced.
        let mut out = Vec::with_capacity(pipe::MAX_CHUNK);
        run_over(&mut enc, &mut input, &output, &mut out)?;
        loop {
            let at = out.len();
            let left = enc.finish(&mut OutBuffer::around_pos(&mut out, at), true)?;
            send_if_full(&output, &mut out)?;
            if left == 0 {
                break;
            }
        }
        output.send_blocking(Bytes::from(out))?;
        output.finish()
    }

    pub fn decode(&self, mut input: PipeReader, output: PipeWriter) -> io::Result<()> {
        let mut dec = Decoder::new()?;
        // As in `encode`: whole chunks out, none copied (std's copy loop sent 8 KiB ones).
        let mut out = Vec::with_capacity(pipe::MAX_CHUNK);
        // zstd's hint after the last call that moved anything: 0 once a frame is complete
        // and all of it is out (a call that moves nothing asks for the next frame's header).
        let mut hint = run_over(&mut dec, &mut input, &output, &mut out)?;
        // Then what the decoder still holds (the output was full when the input ended).
        loop {
            let at = out.len();
            let h = dec.run(
                &mut InBuffer::around(&[]),
                &mut OutBuffer::around_pos(&mut out, at),
            )?;
            if out.len() == at {
                break;
            }
            hint = h;
            send_if_full(&output, &mut out)?;
        }
        if hint != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the compressed data ends before its zstd frame does",
            ));
        }
        output.send_blocking(Bytes::from(out))?;
        output.finish()
    }
}

/// Runs `op` (the encoder or the decoder) over every chunk of `input`, sending `out` on
/// each time it fills. Returns zstd's hint from the last call; 1 when there was no input
/// at all (for the decoder: a frame is still owed, an empty stream is not a zstd stream).
fn run_over<O: Operation>(
    op: &mut O,
    input: &mut PipeReader,
    output: &PipeWriter,
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut hint = 1;
    while let Some(chunk) = input.recv_blocking()? {
        let mut src = InBuffer::around(&chunk);
        while src.pos() < chunk.len() {
            let at = out.len();
            hint = op.run(&mut src, &mut OutBuffer::around_pos(out, at))?;
            send_if_full(output, out)?;
        }
    }
    Ok(hint)
}

/// Sends `out` once it is full and starts a new one.
fn send_if_full(output: &PipeWriter, out: &mut Vec<u8>) -> io::Result<()> {
    if out.len() == out.capacity() {
        let full = std::mem::replace(out, Vec::with_capacity(pipe::MAX_CHUNK));
        output.send_blocking(Bytes::from(full))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipe::pipe;

    fn zstd(threads: u32) -> Zstd {
        Zstd { level: 3, threads }
    }

    /// Runs `f` over `input` sent in `piece`-byte chunks; what it wrote, or its error.
    fn through(
        input: &[u8],
        piece: usize,
        f: impl FnOnce(PipeReader, PipeWriter) -> io::Result<()>,
    ) -> io::Result<Vec<u8>> {
        let (in_w, in_r) = pipe("test → codec");
        let (out_w, mut out_r) = pipe("codec → test");
        let chunks: Vec<Bytes> = input.chunks(piece).map(Bytes::copy_from_slice).collect();
        let feeder = std::thread::spawn(move || {
            for c in chunks {
                if in_w.send_blocking(c).is_err() {
                    return;
                }
            }
            let _ = in_w.finish();
        });
        let collector = std::thread::spawn(move || {
            let mut all = Vec::new();
            while let Some(c) = out_r.recv_blocking()? {
                all.extend_from_slice(&c);
            }
            Ok::<_, io::Error>(all)
        });
        let result = f(in_r, out_w);
        feeder.join().expect("feeder");
        let out = collector.join().expect("collector");
        result.and(out)
    }

    /// Text-like bytes that compress, a few MiB so that several 2 MiB jobs run.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u32 = 14;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                if i % 7 == 0 {
                    b' '
                } else {
                    b'a' + (x >> 16) as u8 % 8
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_in_whole_chunks_with_one_or_several_workers() {
        let data = sample(5 << 20);
        for threads in [1, 2] {
            let z = zstd(threads);
            let packed = through(&data, 100_000, |i, o| z.encode(i, o)).expect("encode");
            assert!(
                packed.len() < data.len() / 2,
                "compressed: {}",
                packed.len()
            );
            // The command-line tool reads it: a standard frame with its checksum.
            assert_eq!(zstd::decode_all(&packed[..]).expect("zstd reads it"), data);
            let back = through(&packed, 65_536, |i, o| z.decode(i, o)).expect("decode");
            assert_eq!(back.len(), data.len());
            assert!(back == data, "threads {threads}: round trip differs");
        }
    }

    #[test]
    fn a_truncated_or_empty_stream_fails_and_frames_in_a_row_decode() {
        let z = zstd(2);
        let data = sample(3 << 20);
        let packed = through(&data, 1 << 18, |i, o| z.encode(i, o)).expect("encode");
        for cut in [packed.len() - 1, packed.len() / 2, 10] {
            let err = through(&packed[..cut], 4096, |i, o| z.decode(i, o))
                .expect_err("a cut stream must fail");
            assert!(
                err.to_string().contains("ends before its zstd frame does"),
                "cut at {cut}: {err}"
            );
        }
        let err = through(&[], 1, |i, o| z.decode(i, o)).expect_err("empty");
        assert!(err.to_string().contains("zstd frame"), "{err}");
        let two = [packed.clone(), packed].concat();
        let back = through(&two, 1 << 18, |i, o| z.decode(i, o)).expect("two frames");
        assert!(back == [data.clone(), data].concat());
    }
}
