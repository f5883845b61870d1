//! Checking an RDB snapshot as it streams: it starts with `REDIS` and a version, and ends
//! with the EOF opcode (0xFF) and a CRC-64 (Jones, reflected, little-endian) of everything
//! before it. A snapshot cut short or altered fails the check.
//!
//! `redis-cli --rdb -` has a quirk this also handles: when the server sends the snapshot
//! "diskless" (the default since Redis 7), the transfer ends with a 40-character marker
//! instead of announcing its length, and redis-cli writes that marker to stdout too (with
//! a file it cuts it off afterwards, which a pipe cannot do). [`Snapshot`] holds back the
//! last 48 bytes and, at the end, keeps the marker out when the CRC shows where the
//! snapshot really ends.

/// The reflected form of Redis's CRC-64 polynomial (0xad93d23594c935a9).
const POLY: u64 = 0x95ac_9329_ac4b_c9b5;

const fn table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u64; 256] = table();

/// Redis's CRC-64 of `bytes`, continuing from `crc` (0 to start).
pub fn crc64(mut crc: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        crc = TABLE[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The diskless transfer's end marker: 40 characters.
const MARK: usize = 40;
/// The CRC after the EOF opcode.
const CRC: usize = 8;
const HOLD: usize = MARK + CRC;
const EOF_OPCODE: u8 = 0xff;

/// Why a stream is not a whole RDB snapshot.
#[derive(Debug, PartialEq, Eq)]
pub struct NotRdb(pub String);

/// A snapshot being checked: feed it every byte with [`Snapshot::push`] (it returns what
/// may be passed on now), then [`Snapshot::finish`] returns the rest.
#[derive(Default)]
pub struct Snapshot {
    /// CRC of every byte passed on.
    crc: u64,
    passed: u64,
    /// The last byte passed on.
    last: Option<u8>,
    head: Vec<u8>,
    /// The bytes held back (at most [`HOLD`] after each push).
    held: Vec<u8>,
    /// A checksum of 0 was accepted (the server runs with `rdbchecksum no`).
    pub unchecked: bool,
}

impl Snapshot {
    /// Takes `chunk`; returns the bytes that may be passed on now (all but the last 48 seen).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.head.len() < 9 {
            let n = (9 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
        }
        self.held.extend_from_slice(chunk);
        if self.held.len() <= HOLD {
            return Vec::new();
        }
        let out: Vec<u8> = self.held.drain(..self.held.len() - HOLD).collect();
        self.pass(&out);
        out
    }

    fn pass(&mut self, bytes: &[u8]) {
        self.crc = crc64(self.crc, bytes);
        self.passed += bytes.len() as u64;
        if let Some(&b) = bytes.last() {
            self.last = Some(b);
        }
    }

    /// Bytes passed on so far.
    pub fn passed(&self) -> u64 {
        self.passed
    }

    /// The RDB format version from the header (`REDIS0011` → 11).
    pub fn version(&self) -> Option<u32> {
        let digits = self.head.get(5..9)?;
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// Ends the stream: the rest of the snapshot to pass on (the held bytes without a
    /// transfer marker), or why this is not a whole snapshot. `marker_expected`: redis-cli
    /// said the transfer ends with a marker (used only when the server writes no checksum).
    pub fn finish(mut self, marker_expected: bool) -> Result<(Vec<u8>, Snapshot), NotRdb> {
        if !self.head.starts_with(b"REDIS") || self.version().is_none() {
            return Err(NotRdb(
                "it does not start with an RDB header (REDIS and a version)".into(),
            ));
        }
        let held = std::mem::take(&mut self.held);
        let ends_whole = |crc_before: u64, opcode: Option<u8>, stored: &[u8]| -> (bool, bool) {
            let mut le = [0u8; 8];
            le.copy_from_slice(stored);
            let stored = u64::from_le_bytes(le);
            let eof = opcode == Some(EOF_OPCODE);
            (eof && stored == crc_before, eof && stored == 0)
        };
        // Without a marker: ... 0xFF, CRC (the last 8 held bytes).
        if held.len() > CRC {
            let body = &held[..held.len() - CRC];
            let crc = crc64(self.crc, body);
            let opcode = body.last().copied().or(self.last);
            let (good, zero) = ends_whole(crc, opcode, &held[held.len() - CRC..]);
            if good || (zero && !marker_expected) {
                self.unchecked = !good;
                self.pass(&held);
                return Ok((held, self));
            }
        }
        // With a marker: ... 0xFF, CRC, 40 characters of marker.
        if held.len() == HOLD && held[CRC..].iter().all(u8::is_ascii_alphanumeric) {
            let (good, zero) = ends_whole(self.crc, self.last, &held[..CRC]);
            if good || (zero && marker_expected) {
                self.unchecked = !good;
                let rest = held[..CRC].to_vec();
                self.pass(&rest);
                return Ok((rest, self));
            }
        }
        Err(NotRdb(
            "it does not end with the RDB end marker and a matching CRC-64: the snapshot is \
             cut short or damaged"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small snapshot of the given body with its EOF opcode and CRC.
    fn snapshot(body: &[u8]) -> Vec<u8> {
        let mut s = b"REDIS0011".to_vec();
        s.extend_from_slice(body);
        s.push(EOF_OPCODE);
        let crc = crc64(0, &s);
        s.extend_from_slice(&crc.to_le_bytes());
        s
    }

    /// Pushes `bytes` in chunks of `size` and finishes; returns what was passed on.
    fn run(bytes: &[u8], size: usize, marker: bool) -> Result<Vec<u8>, NotRdb> {
        let mut s = Snapshot::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(size) {
            out.extend(s.push(chunk));
        }
        let (rest, s) = s.finish(marker)?;
        out.extend(rest);
        assert_eq!(s.passed(), out.len() as u64);
        Ok(out)
    }

    #[test]
    fn crc64_is_redis_s() {
        assert_eq!(crc64(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(crc64(crc64(0, b"1234"), b"56789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn a_whole_snapshot_passes_with_or_without_the_transfer_marker() {
        for body in [
            &b""[..],
            b"\xfe\x00\xfb\x01\x00\x00\x01a\xc0\x01",
            &[7u8; 5000],
        ] {
            let rdb = snapshot(body);
            let mut marked = rdb.clone();
            marked.extend_from_slice(b"8affe34754489dadff67e8e9edc1992631e0c0b5");
            for size in [1, 7, 48, 49, 4096] {
                assert_eq!(run(&rdb, size, false).as_ref(), Ok(&rdb), "{size}");
                assert_eq!(run(&rdb, size, true).as_ref(), Ok(&rdb), "{size}");
                assert_eq!(run(&marked, size, true).as_ref(), Ok(&rdb), "{size}");
                assert_eq!(run(&marked, size, false).as_ref(), Ok(&rdb), "{size}");
            }
        }
    }

    #[test]
    fn a_cut_or_damaged_snapshot_fails() {
        let rdb = snapshot(&[7u8; 3000]);
        for cut in [rdb.len() - 1, rdb.len() - 9, 1500, 9, 0] {
            assert!(run(&rdb[..cut], 100, false).is_err(), "cut at {cut}");
        }
        let mut damaged = rdb.clone();
        damaged[100] ^= 1;
        assert!(run(&damaged, 100, false).is_err());
        let mut not = rdb.clone();
        not[0] = b'X';
        assert!(run(&not, 100, false).is_err());
        let mut extra = rdb.clone();
        extra.extend_from_slice(b"junk");
        assert!(run(&extra, 100, false).is_err());
    }

    #[test]
    fn no_checksum_is_accepted_and_said() {
        let mut rdb = snapshot(b"abc");
        let n = rdb.len();
        rdb[n - 8..].fill(0);
        let mut s = Snapshot::default();
        let mut out = s.push(&rdb);
        let (rest, s) = s.finish(false).expect("accepted");
        out.extend(rest);
        assert_eq!(out, rdb);
        assert!(s.unchecked);
        assert_eq!(s.version(), Some(11));
    }
}
