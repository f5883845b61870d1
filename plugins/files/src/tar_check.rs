//! Reads a tar stream block by block as it passes to `tar --extract`, and stops it at the
//! first entry that could write outside the target: an absolute name, a `..` component, a
//! hard link to such a name, or a name that goes through a symbolic link (one the archive
//! made, or one already in the target). A header reaches tar only after it was checked.
//!
//! To agree with GNU tar on where each header is, only the entry types `files` archives
//! are accepted (files, directories, symbolic and hard links, devices, FIFOs, GNU long
//! names, pax headers), a type that carries no data must say size 0, and a pax `size`
//! applies as tar applies it. Sparse files, multi-volume parts and anything else are
//! refused.

use std::collections::HashSet;
use std::io::{BufRead, Write};

/// The most a long name or a pax header may hold.
const MAX_META: usize = 1024 * 1024;
const BLOCK: usize = 512;

/// What decides whether an existing path in the target is a symbolic link.
pub trait Target {
    fn is_symlink(&mut self, relative: &str) -> bool;
}

/// A target known to be empty when the restore began: only the archive's own links count.
pub struct Empty;

impl Target for Empty {
    fn is_symlink(&mut self, _relative: &str) -> bool {
        false
    }
}

#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

enum Collect {
    None,
    LongName,
    LongLink,
    Pax { global: bool },
}

/// Checks and forwards a tar stream; `Ok` with the number of entries when it ended with
/// its end marker.
pub struct Checker<T: Target> {
    target: T,
    pending: Pending,
    symlinks: HashSet<String>,
    /// Directories of the target already checked for being links.
    checked: HashSet<String>,
    pub entries: u64,
}

impl<T: Target> Checker<T> {
    pub fn new(target: T) -> Self {
        Checker {
            target,
            pending: Pending::default(),
            symlinks: HashSet::new(),
            checked: HashSet::new(),
            entries: 0,
        }
    }

    /// Reads `input` to its end, writing every checked byte to `out`. Returns an error
    /// naming the first refused entry; the bytes of that entry's header are never written.
    pub fn run(&mut self, input: &mut impl BufRead, out: &mut impl Write) -> Result<u64, String> {
        let mut zero_blocks = 0;
        let mut block = [0u8; BLOCK];
        loop {
            if !read_block(input, &mut block)? {
                if zero_blocks == 0 {
                    return Err("the archive ends without its end marker: it is truncated".into());
                }
                break;
            }
            if block.iter().all(|&b| b == 0) {
                zero_blocks += 1;
                if zero_blocks <= 2 {
                    write(out, &block)?;
                }
                continue;
            }
            if zero_blocks > 0 {
                return Err("data after the archive's end marker".into());
            }
            let (size, collect) = self.header(&block)?;
            write(out, &block)?;
            let data = self.data(input, out, size, &collect)?;
            self.finish(collect, data)?;
        }
        out.flush().map_err(|e| format!("writing to tar: {e}"))?;
        Ok(self.entries)
    }

    /// Checks a header; returns its data size and what its data is.
    fn header(&mut self, h: &[u8; BLOCK]) -> Result<(u64, Collect), String> {
        if !checksum_ok(h) {
            return Err(
                "a header's checksum does not match: the archive is not a tar, or damaged".into(),
            );
        }
        let kind = h[156];
        let header_size = number(&h[124..136]).ok_or("a header has an unreadable size")?;
        match kind {
            b'L' => return Ok((header_size, Collect::LongName)),
            b'K' => return Ok((header_size, Collect::LongLink)),
            b'x' => return Ok((header_size, Collect::Pax { global: false })),
            b'g' => return Ok((header_size, Collect::Pax { global: true })),
            _ => {}
        }
        let pending = std::mem::take(&mut self.pending);
        let size = pending.size.unwrap_or(header_size);
        let path = match pending.path {
            Some(p) => p,
            None => {
                let name = field(&h[0..100]);
                // POSIX ustar keeps a prefix; GNU's `ustar  ` header uses that space otherwise.
                if &h[257..263] == b"ustar\0" {
                    let prefix = field(&h[345..500]);
                    if prefix.is_empty() {
                        name.to_vec()
                    } else {
                        [prefix, b"/", name].concat()
                    }
                } else {
                    name.to_vec()
                }
            }
        };
        let link = pending.link.unwrap_or_else(|| field(&h[157..257]).to_vec());
        let path = text(&path)?;
        let clean = relative(&path)?;
        let data_less = match kind {
            b'0' | 0 | b'7' => false,
            b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => true,
            other => {
                return Err(format!(
                    "entry `{path}` has type `{}`, which this restore does not accept (sparse \
                     files, multi-volume parts and vendor types are refused)",
                    other.escape_ascii()
                ));
            }
        };
        if data_less && size != 0 {
            return Err(format!(
                "entry `{path}` carries data its type does not have"
            ));
        }
        if !clean.is_empty() {
            self.not_through_a_link(&clean, &path)?;
        }
        match kind {
            b'1' => {
                let link = text(&link)?;
                let target = relative(&link)
                    .map_err(|e| format!("hard link `{path}` points to `{link}`: {e}"))?;
                self.not_through_a_link(&target, &link)?;
                if self.symlinks.contains(&target) {
                    return Err(format!(
                        "hard link `{path}` points to `{link}`, a symbolic link of the archive"
                    ));
                }
            }
            b'2' => {
                self.symlinks.insert(clean);
            }
            _ => {}
        }
        self.entries += 1;
        Ok((size, Collect::None))
    }

    /// Refuses a name one of whose parent directories is a symbolic link: one the archive
    /// made earlier, or one already in the target.
    fn not_through_a_link(&mut self, clean: &str, shown: &str) -> Result<(), String> {
        let mut at = 0;
        while let Some(i) = clean[at..].find('/') {
            let dir = &clean[..at + i];
            if self.symlinks.contains(dir) {
                return Err(format!(
                    "entry `{shown}` goes through `{dir}`, a symbolic link the archive created: \
                     it could write outside the target"
                ));
            }
            if !self.checked.contains(dir) {
                if self.target.is_symlink(dir) {
                    return Err(format!(
                        "entry `{shown}` goes through `{dir}`, a symbolic link in the target: it \
                         could write outside the target"
                    ));
                }
                self.checked.insert(dir.to_owned());
            }
            at += i + 1;
        }
        Ok(())
    }

    /// Forwards `size` bytes of data (and the padding to the next block), keeping them when
    /// they are metadata.
    fn data(
        &mut self,
        input: &mut impl BufRead,
        out: &mut impl Write,
        size: u64,
        collect: &Collect,
    ) -> Result<Vec<u8>, String> {
        let keep = !matches!(collect, Collect::None);
        if keep && size > MAX_META as u64 {
            return Err(format!(
                "a long name or pax header of {size} bytes: too large"
            ));
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let mut kept = Vec::new();
        let mut remaining = padded;
        let mut data_left = size;
        while remaining > 0 {
            let buf = input
                .fill_buf()
                .map_err(|e| format!("reading the backup: {e}"))?;
            if buf.is_empty() {
                return Err("the archive ends inside an entry: it is truncated".into());
            }
            let n = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            if keep {
                let d = usize::try_from(data_left).unwrap_or(usize::MAX).min(n);
                kept.extend_from_slice(&buf[..d]);
                data_left -= d as u64;
            }
            write(out, &buf[..n])?;
            input.consume(n);
            remaining -= n as u64;
        }
        Ok(kept)
    }

    fn finish(&mut self, collect: Collect, data: Vec<u8>) -> Result<(), String> {
        match collect {
            Collect::None => {}
            Collect::LongName => self.pending.path = Some(until_nul(data)),
            Collect::LongLink => self.pending.link = Some(until_nul(data)),
            Collect::Pax { global } => {
                for (key, value) in pax_records(&data)? {
                    let applies = matches!(key.as_str(), "path" | "linkpath" | "size")
                        || key.starts_with("GNU.sparse");
                    if global && applies {
                        return Err(format!(
                            "a global pax header sets `{key}`, which is refused"
                        ));
                    }
                    match key.as_str() {
                        "path" => self.pending.path = Some(value),
                        "linkpath" => self.pending.link = Some(value),
                        "size" => {
                            let s = std::str::from_utf8(&value)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .ok_or("a pax header has an unreadable size")?;
                            self.pending.size = Some(s);
                        }
                        k if k.starts_with("GNU.sparse") => {
                            return Err("sparse files are refused".into());
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

fn write(out: &mut impl Write, bytes: &[u8]) -> Result<(), String> {
    out.write_all(bytes)
        .map_err(|e| format!("writing to tar: {e}"))
}

/// Reads one whole block; `false` at a clean end before its first byte.
fn read_block(input: &mut impl BufRead, block: &mut [u8; BLOCK]) -> Result<bool, String> {
    let mut filled = 0;
    while filled < BLOCK {
        let buf = input
            .fill_buf()
            .map_err(|e| format!("reading the backup: {e}"))?;
        if buf.is_empty() {
            if filled == 0 {
                return Ok(false);
            }
            return Err("the archive ends inside a header: it is truncated".into());
        }
        let n = buf.len().min(BLOCK - filled);
        block[filled..filled + n].copy_from_slice(&buf[..n]);
        input.consume(n);
        filled += n;
    }
    Ok(true)
}

fn checksum_ok(h: &[u8; BLOCK]) -> bool {
    let Some(recorded) = number(&h[148..156]) else {
        return false;
    };
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    sum == recorded
}

/// An octal field (NUL- or space-terminated), or GNU's base-256 for large values.
fn number(f: &[u8]) -> Option<u64> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(f).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn field(f: &[u8]) -> &[u8] {
    match f.iter().position(|&b| b == 0) {
        Some(end) => &f[..end],
        None => f,
    }
}

fn until_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(end) = v.iter().position(|&b| b == 0) {
        v.truncate(end);
    }
    v
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("an entry name is not UTF-8: `{}`", bytes.escape_ascii()))
}

/// The name as a clean relative path (`./a//b/` → `a/b`, `.` → empty); an absolute name or
/// one with a `..` component is refused.
pub fn relative(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("an entry has no name".into());
    }
    if name.starts_with('/') {
        return Err(format!(
            "entry `{name}` has an absolute name: it would be written outside the target"
        ));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "entry `{name}` has a `..` component: it would be written outside the target"
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// `LEN key=value\n` records.
fn pax_records(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a pax record without a length")?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a pax record with an unreadable length")?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err("a malformed pax record".into());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a pax record without `=`")?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        out.push((key, record[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header for `name` of `kind` and `size`, with `link`.
    fn header(name: &str, kind: u8, size: u64, link: &str) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h[155] = b' ';
        h
    }

    fn archive(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, kind, data, link) in entries {
            v.extend_from_slice(&header(name, *kind, data.len() as u64, link));
            v.extend_from_slice(data);
            v.resize(v.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        v.extend_from_slice(&[0u8; 2 * BLOCK]);
        v.extend_from_slice(&[0u8; 4 * BLOCK]);
        v
    }

    fn check(bytes: &[u8]) -> (Result<u64, String>, Vec<u8>) {
        let mut out = Vec::new();
        let r = Checker::new(Empty).run(&mut &bytes[..], &mut out);
        (r, out)
    }

    #[test]
    fn a_plain_archive_passes_whole() {
        let a = archive(&[
            ("./", b'5', b"", ""),
            ("./a.txt", b'0', b"hello", ""),
            ("./d/", b'5', b"", ""),
            ("./d/l", b'2', b"", "/etc/passwd"),
            ("./d/h", b'1', b"", "./a.txt"),
        ]);
        let (r, out) = check(&a);
        assert_eq!(r, Ok(5));
        // Everything up to the end marker reaches tar; the padding after it does not.
        assert_eq!(out, a[..a.len() - 4 * BLOCK]);
    }

    #[test]
    fn hostile_names_are_refused_before_tar_sees_them() {
        for (entries, needle) in [
            (vec![("../x", b'0', &b"evil"[..], "")], "`..`"),
            (vec![("a/../../x", b'0', &b"evil"[..], "")], "`..`"),
            (vec![("/etc/x", b'0', &b"evil"[..], "")], "absolute"),
            (vec![("h", b'1', &b""[..], "/etc/shadow")], "absolute"),
            (vec![("h", b'1', &b""[..], "../x")], "`..`"),
            (
                vec![
                    ("l", b'2', &b""[..], "/tmp"),
                    ("l/x", b'0', &b"evil"[..], ""),
                ],
                "symbolic link",
            ),
            (vec![("s", b'S', &b""[..], "")], "type"),
            (vec![("d", b'5', &b"data"[..], "")], "data"),
        ] {
            let a = archive(&entries);
            let (r, out) = check(&a);
            let err = r.expect_err("refused");
            assert!(err.contains(needle), "{err}");
            // The refused header never reached tar.
            let bad = entries.last().map(|e| e.0).unwrap_or_default();
            assert!(
                !out.windows(bad.len()).any(|w| w == bad.as_bytes()) || entries.len() > 1,
                "{bad} was forwarded"
            );
        }
    }

    #[test]
    fn long_names_and_pax_paths_are_checked_too() {
        let long = archive(&[
            ("././@LongLink", b'L', b"../escape\0", ""),
            ("short", b'0', b"x", ""),
        ]);
        assert!(check(&long).0.expect_err("refused").contains("`..`"));
        let pax = archive(&[
            ("PaxHeaders/x", b'x', b"16 path=/etc/xx\n", ""),
            ("x", b'0', b"", ""),
        ]);
        assert!(check(&pax).0.expect_err("refused").contains("absolute"));
    }

    #[test]
    fn truncated_and_damaged_archives_fail() {
        let a = archive(&[("a", b'0', b"hello", "")]);
        assert!(
            check(&a[..BLOCK + 10])
                .0
                .expect_err("truncated")
                .contains("truncated")
        );
        assert!(
            check(&a[..2 * BLOCK])
                .0
                .expect_err("no end")
                .contains("end marker")
        );
        let mut bad = a.clone();
        bad[0] = b'b';
        assert!(check(&bad).0.expect_err("checksum").contains("checksum"));
    }

    #[test]
    fn links_in_the_target_are_not_gone_through() {
        struct Linked;
        impl Target for Linked {
            fn is_symlink(&mut self, relative: &str) -> bool {
                relative == "d"
            }
        }
        let a = archive(&[("d/x", b'0', b"evil", "")]);
        let r = Checker::new(Linked).run(&mut &a[..], &mut Vec::new());
        assert!(r.expect_err("refused").contains("in the target"));
    }
}
