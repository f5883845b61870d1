//! `gzip`: a transform that compresses with gzip (`encode`) and decompresses (`decode`).
//!
//! flate2 with its pure-Rust miniz_oxide backend. `decode` accepts concatenated gzip
//! members (what `cat a.gz b.gz` or several encoder instances produce), so frames
//! compressed independently decode as one stream.

use std::io::{self, BufRead, Read, Write};

use flate2::Compression;
use flate2::bufread::{GzEncoder, MultiGzDecoder};
use pipeline_plugin_sdk::io::{InputReader, OutputWriter, pump};
use pipeline_plugin_sdk::{
    InputStream, OutputStream, Plugin, PluginError, PluginInfo, PluginKind, StagePlan, Transform,
    config,
};

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(Integer, default(6), "Compression level, 0 (none, fastest) to 9 (smallest)")]
        level: i64,
    }
}

impl Config {
    fn parse(json: &str) -> Result<Self, PluginError> {
        let config: Config = config::parse(json)?;
        if !(0..=9).contains(&config.level) {
            return Err(PluginError::Config(format!(
                "key `level`: must be between 0 (no compression) and 9 (smallest), got {}",
                config.level
            )));
        }
        Ok(config)
    }

    fn compression(&self) -> Compression {
        Compression::new(u32::try_from(self.level).unwrap_or(6))
    }
}

struct Gzip;

impl Plugin for Gzip {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "gzip".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Transform,
            description: "Compresses with gzip (and decompresses for restore)".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        Config::parse(&config)?;
        Ok(StagePlan {
            extension: Some("gz".into()),
            content_type: Some("application/gzip".into()),
            grants: vec![],
        })
    }
}

impl Transform for Gzip {
    fn encode(config: String, input: InputStream, out: OutputStream) -> Result<(), PluginError> {
        let config = Config::parse(&config)?;
        encode(
            config.compression(),
            InputReader::new(input),
            OutputWriter::new(out),
        )
        .map(drop)
    }

    fn decode(config: String, input: InputStream, out: OutputStream) -> Result<(), PluginError> {
        Config::parse(&config)?;
        decode(InputReader::new(input), OutputWriter::new(out)).map(drop)
    }
}

pipeline_plugin_sdk::export_transform!(Gzip);

/// Compress `input` into `out`; returns the compressed size.
fn encode(level: Compression, input: impl BufRead, out: impl Write) -> Result<u64, PluginError> {
    let encoder = GzEncoder::new(input, level);
    pump(encoder, out, "compressing", describe)
}

/// Decompress `input` (one or more gzip members) into `out`; returns the decompressed
/// size. Empty or truncated input is an error, never an empty or short result.
fn decode(input: impl BufRead, out: impl Write) -> Result<u64, PluginError> {
    let mut input = CountingReader {
        inner: input,
        count: 0,
    };
    let mut decoder = MultiGzDecoder::new(&mut input);
    let written = pump(&mut decoder, out, "decompressing", describe)?;
    drop(decoder);
    if input.count == 0 {
        return Err(PluginError::Io(
            "decompressing: the input is empty, not a gzip stream".into(),
        ));
    }
    Ok(written)
}

/// flate2 reports a truncated stream as a bare `UnexpectedEof`.
fn describe(err: &io::Error) -> String {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        format!("the input ends in the middle of a gzip stream (truncated?): {err}")
    } else {
        err.to_string()
    }
}

/// Counts the bytes consumed from a `BufRead`.
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: BufRead> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.count += amt as u64;
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `describe()` lists exactly the keys `Config` accepts.
    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &Gzip::describe().config_keys,
            &serde_json::json!({}),
        );
    }

    fn sample() -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..200_000u32 {
            data.extend_from_slice(format!("INSERT INTO t VALUES ({i}, 'row {i}');\n").as_bytes());
        }
        data
    }

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut out = Vec::new();
        encode(Compression::new(level), data, &mut out).expect("encode");
        out
    }

    #[test]
    fn round_trip() {
        let data = sample();
        for level in [0, 1, 6, 9] {
            let compressed = gz(&data, level);
            let mut back = Vec::new();
            let n = decode(compressed.as_slice(), &mut back).expect("decode");
            assert_eq!(n, data.len() as u64);
            assert_eq!(back, data);
        }
    }

    #[test]
    fn concatenated_members_decode_as_one() {
        let mut compressed = gz(b"first\n", 6);
        compressed.extend(gz(b"second\n", 1));
        let mut back = Vec::new();
        decode(compressed.as_slice(), &mut back).expect("decode");
        assert_eq!(back, b"first\nsecond\n");
    }

    #[test]
    fn empty_input_round_trips_but_empty_gzip_is_an_error() {
        let compressed = gz(b"", 6);
        assert!(!compressed.is_empty());
        let mut back = Vec::new();
        decode(compressed.as_slice(), &mut back).expect("decode");
        assert!(back.is_empty());
        assert!(matches!(
            decode(&b""[..], &mut back),
            Err(PluginError::Io(_))
        ));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let compressed = gz(&sample(), 6);
        for cut in [5, 30, compressed.len() / 2, compressed.len() - 4] {
            let mut back = Vec::new();
            let result = decode(&compressed[..cut], &mut back);
            assert!(
                matches!(result, Err(PluginError::Io(_))),
                "cut {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut back = Vec::new();
        assert!(decode(&b"not gzip at all"[..], &mut back).is_err());
    }

    /// A reader that fails after some bytes, like a failed input stream.
    struct Failing<'a>(&'a [u8]);

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("input stream failed: upstream died"));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn input_errors_propagate() {
        let data = sample();
        let mut out = Vec::new();
        let err = encode(
            Compression::default(),
            io::BufReader::new(Failing(&data[..1000])),
            &mut out,
        )
        .expect_err("must fail");
        assert!(err.message().contains("upstream died"), "{err}");

        let compressed = gz(&data, 6);
        let err = decode(io::BufReader::new(Failing(&compressed[..1000])), &mut out)
            .expect_err("must fail");
        assert!(err.message().contains("upstream died"), "{err}");
    }

    #[test]
    fn config() {
        assert_eq!(Config::parse("{}").expect("default").level, 6);
        assert_eq!(Config::parse(r#"{"level": 9}"#).expect("9").level, 9);
        assert!(matches!(
            Config::parse(r#"{"level": 10}"#),
            Err(PluginError::Config(m)) if m.contains("between 0")
        ));
        assert!(matches!(
            Config::parse(r#"{"level": -1}"#),
            Err(PluginError::Config(_))
        ));
        assert!(matches!(
            Config::parse(r#"{"lvl": 1}"#),
            Err(PluginError::Config(m)) if m == "unknown key `lvl` (this plugin accepts: level)"
        ));
        let plan = <Gzip as Plugin>::plan("{}".into()).expect("plan");
        assert_eq!(plan.extension.as_deref(), Some("gz"));
        assert_eq!(Gzip::describe().name, "gzip");
    }
}
