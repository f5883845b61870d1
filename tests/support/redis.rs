//! A throwaway Redis server (Debian's `redis-server`) on a free port of 127.0.0.1, with a
//! password, no persistence of its own, its files in a temp dir; or started from an RDB
//! file, to check a restore. Talked to with a small RESP client, so values are compared
//! byte for byte.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "install Redis (Debian/Ubuntu: `apt-get install redis-server \
     redis-tools`, or scripts/install-prerequisites.sh --tests)";

pub struct RedisServer {
    _tmp: tempfile::TempDir,
    port: u16,
    server: Child,
    log: PathBuf,
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    fn bytes(self) -> Vec<u8> {
        match self {
            Reply::Bulk(Some(b)) => b,
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }
    fn array(self) -> Vec<Reply> {
        match self {
            Reply::Array(a) => a,
            other => panic!("expected an array, got {other:?}"),
        }
    }
}

impl RedisServer {
    /// Password of the server: URL-hostile characters and a space.
    pub const PASSWORD: &'static str = "r3d!s p@ss:w/rd%?&=#x";

    /// An empty server.
    pub fn start() -> RedisServer {
        Self::spawn(None)
    }

    /// A server that loads `rdb` when it starts (its directory and file name).
    pub fn start_from(rdb: &Path) -> RedisServer {
        Self::spawn(Some(rdb))
    }

    fn spawn(rdb: Option<&Path>) -> RedisServer {
        let tmp = tempfile::Builder::new()
            .prefix("redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let log = tmp.path().join("redis.log");
        let (dir, file) = match rdb {
            Some(rdb) => (
                rdb.parent().expect("an RDB file's directory").to_path_buf(),
                rdb.file_name().expect("an RDB file name").to_os_string(),
            ),
            None => (tmp.path().to_path_buf(), "dump.rdb".into()),
        };
        let mut last = String::new();
        for _attempt in 0..5 {
            let port = super::free_port();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&dir)
                .arg("--dbfilename")
                .arg(&file)
                .arg("--logfile")
                .arg(&log)
                .args(["--requirepass", Self::PASSWORD])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut server = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start redis-server: {e}; {INSTALL_HINT}"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = server.try_wait() {
                    last = format!(
                        "redis-server exited ({status}):\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if let Ok(mut c) = Connection::open(port)
                    && c.call(&[b"PING"]) == Reply::Status("PONG".into())
                {
                    return RedisServer {
                        _tmp: tmp,
                        port,
                        server,
                        log,
                    };
                }
                if Instant::now() > deadline {
                    let _ = server.kill();
                    let _ = server.wait();
                    panic!(
                        "redis-server not ready in 30 s:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !last.contains("Address already in use") {
                break;
            }
        }
        panic!("redis-server did not start:\n{last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://:<percent-encoded password>@127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!(
            "redis://:{}@127.0.0.1:{}/0",
            super::percent_encode(Self::PASSWORD),
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn connect(&self) -> Connection {
        Connection::open(self.port)
            .unwrap_or_else(|e| panic!("cannot connect to redis on {}: {e}", self.port))
    }

    /// Strings (UTF-8 and binary, one of 300 KB), a list, a set, a sorted set, a hash, a
    /// stream, a key with a time to live, odd key names, 5000 more keys, and keys in
    /// database 5.
    pub fn load_sample(&self) {
        let mut c = self.connect();
        let binary: Vec<u8> = (0..=255u8).chain(*b"\r\n\0end").collect();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let calls: Vec<Vec<&[u8]>> = vec![
            vec![b"SET", b"greeting", "héllo wörld 🐘".as_bytes()],
            vec![b"SET", b"binary", &binary],
            vec![b"SET", b"big", &big],
            vec![b"SET", "ключ with spaces 🗝".as_bytes(), b""],
            vec![b"RPUSH", b"queue", b"first", b"", b"x\r\ny", b"first"],
            vec![b"SADD", b"tags", b"a", b"b", "ü".as_bytes()],
            vec![b"ZADD", b"scores", b"1.5", b"a", b"-2", b"b", b"1e10", b"c"],
            vec![b"HSET", b"user:1", b"name", b"Zo\xc3\xab", b"age", b"42"],
            vec![b"XADD", b"events", b"1-1", b"kind", b"created"],
            vec![
                b"XADD", b"events", b"2-5", b"kind", b"deleted", b"why", b"\x00",
            ],
            vec![b"SET", b"session", b"short-lived", b"EX", b"86400"],
            vec![b"SELECT", b"5"],
            vec![b"SET", b"other", b"database five"],
            vec![b"SELECT", b"0"],
        ];
        for call in &calls {
            if let Reply::Error(e) = c.call(call) {
                panic!("{call:?}: {e}");
            }
        }
        for batch in 0..5 {
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..1000)
                .map(|i| {
                    let n = batch * 1000 + i;
                    (
                        format!("k:{n}").into_bytes(),
                        format!("value {n}").into_bytes(),
                    )
                })
                .collect();
            let mut args: Vec<&[u8]> = vec![b"MSET"];
            for (k, v) in &pairs {
                args.push(k);
                args.push(v);
            }
            assert_eq!(c.call(&args), Reply::Status("OK".into()));
        }
    }

    /// Every key of every database with its type and value (sets and hashes sorted), and
    /// whether it expires: equal data gives equal text.
    pub fn contents(&self) -> String {
        let mut c = self.connect();
        let mut out = String::new();
        for db in 0..16u32 {
            let db_s = db.to_string();
            c.call(&[b"SELECT", db_s.as_bytes()]);
            let mut keys = Vec::new();
            let mut cursor = b"0".to_vec();
            loop {
                let mut r = c.call(&[b"SCAN", &cursor, b"COUNT", b"1000"]).array();
                let batch = r.pop().expect("keys").array();
                cursor = r.pop().expect("cursor").bytes();
                keys.extend(batch.into_iter().map(Reply::bytes));
                if cursor == b"0" {
                    break;
                }
            }
            keys.sort();
            for key in keys {
                let kind = match c.call(&[b"TYPE", &key]) {
                    Reply::Status(s) => s,
                    other => panic!("TYPE: {other:?}"),
                };
                let value = match kind.as_str() {
                    "string" => format!("{:?}", c.call(&[b"GET", &key])),
                    "list" => format!("{:?}", c.call(&[b"LRANGE", &key, b"0", b"-1"])),
                    "set" => {
                        let mut m = c.call(&[b"SMEMBERS", &key]).array();
                        m.sort_by_key(|r| format!("{r:?}"));
                        format!("{m:?}")
                    }
                    "zset" => format!(
                        "{:?}",
                        c.call(&[b"ZRANGE", &key, b"0", b"-1", b"WITHSCORES"])
                    ),
                    "hash" => {
                        let flat = c.call(&[b"HGETALL", &key]).array();
                        let mut pairs: Vec<String> =
                            flat.chunks(2).map(|p| format!("{p:?}")).collect();
                        pairs.sort();
                        pairs.join(",")
                    }
                    "stream" => format!("{:?}", c.call(&[b"XRANGE", &key, b"-", b"+"])),
                    other => panic!("unexpected type {other}"),
                };
                let expires = match c.call(&[b"PTTL", &key]) {
                    Reply::Int(ms) if ms > 0 => " (expires)",
                    _ => "",
                };
                out.push_str(&format!(
                    "db{db} {} {kind}{expires} = {value}\n",
                    key.escape_ascii()
                ));
            }
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// One authenticated RESP connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    fn open(port: u16) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Connection {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        match c.call(&[b"AUTH", RedisServer::PASSWORD.as_bytes()]) {
            Reply::Status(s) if s == "OK" => Ok(c),
            other => Err(std::io::Error::other(format!("AUTH: {other:?}"))),
        }
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Reply {
        let mut msg = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            msg.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            msg.extend_from_slice(a);
            msg.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&msg).expect("send to redis");
        read_reply(&mut self.reader)
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).expect("read from redis");
    String::from_utf8_lossy(line.strip_suffix(b"\r\n").unwrap_or(&line)).into_owned()
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Reply {
    let line = read_line(r);
    let (kind, rest) = line.split_at(1.min(line.len()));
    let n = || -> i64 {
        rest.parse()
            .unwrap_or_else(|_| panic!("bad RESP line {line:?}"))
    };
    match kind {
        "+" => Reply::Status(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(n()),
        "$" if n() < 0 => Reply::Bulk(None),
        "$" => {
            let mut buf = vec![0; n() as usize + 2];
            r.read_exact(&mut buf).expect("read a bulk string");
            buf.truncate(buf.len() - 2);
            Reply::Bulk(Some(buf))
        }
        "*" if n() < 0 => Reply::Array(Vec::new()),
        "*" => Reply::Array((0..n()).map(|_| read_reply(r)).collect()),
        _ => panic!("bad RESP line {line:?}"),
    }
}
