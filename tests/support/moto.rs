//! moto's S3 server (PyPI `moto[server]`) on a free port, stopped when dropped: an
//! S3-compatible server that enforces Object Lock (s3s-fs does not implement it). The tests
//! look at the bucket through boto3 (which moto ships), as an operator or an attacker would.
//!
//! What moto 5.2 does not do, and so what these tests cannot show (one answer it gets wrong
//! for the AWS SDK is fixed in [`SERVER`]): it ignores the lock
//! headers of CreateMultipartUpload (the sink then sets the lock with PutObjectRetention,
//! which these tests do exercise), does not answer GetObjectRetention (HeadObject reports
//! the lock instead), lets PutObjectRetention shorten any lock, and has no IAM, so a
//! missing `s3:BypassGovernanceRetention` cannot be enforced.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::s3::free_port;

pub const ACCESS_KEY: &str = "AKIAMOTOPIPELINE";
pub const SECRET_KEY: &str = "moto-pipeline-secret-8d3a71c0";
pub const REGION: &str = "us-east-1";

const INSTALL_HINT: &str = "install it: python3 -m pip install 'moto[server]==5.2.1' \
     (or run scripts/install-prerequisites.sh --tests)";

/// `python3 -m moto.server`, with one fix: moto 5.2 names the root element of its
/// CompleteMultipartUpload answer `CompleteMultipartUploadResponse`, where S3 (and the AWS
/// SDK the sink uses, which refuses anything else) says `CompleteMultipartUploadResult`.
const SERVER: &str = r#"
import sys
import moto.s3.responses as r
from moto.server import main

serialized = r.S3Response.serialized

def fixed(self, result):
    status, headers, body = serialized(self, result)
    if self.data.get("Action") == "CompleteMultipartUpload":
        if isinstance(body, bytes):
            body = body.replace(b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult")
        else:
            body = body.replace("CompleteMultipartUploadResponse", "CompleteMultipartUploadResult")
        for k in list(headers):
            if k.lower() == "content-length":
                headers[k] = str(len(body.encode() if isinstance(body, str) else body))
    return status, headers, body

r.S3Response.serialized = fixed
main(sys.argv[1:])
"#;

/// A moto S3 server; killed when dropped.
pub struct MotoServer {
    pub port: u16,
    child: Child,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", SERVER, "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("\n\ncannot start python3 ({e}): the Object Lock tests run moto's S3 server.\n{INSTALL_HINT}\n\n")
            });
        let mut server = MotoServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!(
                    "\n\nmoto's S3 server exited ({status}): {err}\nthe Object Lock tests need it.\n{INSTALL_HINT}\n\n"
                );
            }
            assert!(Instant::now() < deadline, "moto did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its log goes nowhere: a full pipe must not stall it.
        drop(server.child.stderr.take());
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket`, with Object Lock enabled (and so versioning) when `object_lock`.
    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        let lock = if object_lock { "True" } else { "False" };
        self.boto(&format!(
            "s3.create_bucket(Bucket={bucket:?}, ObjectLockEnabledForBucket={lock})\nout(None)"
        ));
    }

    /// Runs `script` with a boto3 client `s3` for this server and returns what it passed to
    /// `out(value)` (printed as JSON; dates as RFC 3339 text). Errors of S3 calls are
    /// caught by `code(lambda: …)`, which returns the error code or None.
    pub fn boto(&self, script: &str) -> serde_json::Value {
        let prelude = format!(
            "import boto3, json, sys, datetime, botocore\n\
             s3 = boto3.client('s3', endpoint_url={endpoint:?}, region_name={REGION:?}, \
             aws_access_key_id={ACCESS_KEY:?}, aws_secret_access_key={SECRET_KEY:?})\n\
             def out(v):\n    print(json.dumps(v, default=lambda o: o.isoformat() if hasattr(o, 'isoformat') else str(o)))\n\
             def code(f):\n    try:\n        f()\n        return None\n    except botocore.exceptions.ClientError as e:\n        return e.response['Error']['Code']\n",
            endpoint = self.endpoint()
        );
        let output = Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{script}\n"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {INSTALL_HINT}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "boto3 script failed:\n{script}\n{}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let last = stdout.lines().last().unwrap_or("null");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// Every version and delete marker under `prefix`: (key, version id, is a delete marker).
    pub fn versions(&self, bucket: &str, prefix: &str) -> Vec<(String, String, bool)> {
        let v = self.boto(&format!(
            "r = s3.list_object_versions(Bucket={bucket:?}, Prefix={prefix:?})\n\
             out([[o['Key'], o['VersionId'], False] for o in r.get('Versions', [])] + \
                 [[o['Key'], o['VersionId'], True] for o in r.get('DeleteMarkers', [])])"
        ));
        let mut all: Vec<(String, String, bool)> =
            serde_json::from_value(v).expect("a list of versions");
        all.sort();
        all
    }

    /// The current objects' keys under `prefix`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let v = self.boto(&format!(
            "r = s3.list_objects_v2(Bucket={bucket:?}, Prefix={prefix:?})\n\
             out(sorted(o['Key'] for o in r.get('Contents', [])))"
        ));
        serde_json::from_value(v).expect("a list of keys")
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn pending_uploads(&self, bucket: &str) -> usize {
        let v = self.boto(&format!(
            "out(len(s3.list_multipart_uploads(Bucket={bucket:?}).get('Uploads', [])))"
        ));
        v.as_u64().expect("a count") as usize
    }

    /// The lock of the current version of `key`, as HeadObject reports it: (mode, retain
    /// until as RFC 3339, version id).
    pub fn lock_of(
        &self,
        bucket: &str,
        key: &str,
    ) -> (Option<String>, Option<jiff::Timestamp>, String) {
        let v = self.boto(&format!(
            "h = s3.head_object(Bucket={bucket:?}, Key={key:?})\n\
             out([h.get('ObjectLockMode'), h.get('ObjectLockRetainUntilDate'), h.get('VersionId')])"
        ));
        let mode = v[0].as_str().map(str::to_owned);
        let until = v[1].as_str().map(|t| {
            t.parse::<jiff::Timestamp>()
                .unwrap_or_else(|e| panic!("{t}: {e}"))
        });
        let version = v[2].as_str().expect("a versioned bucket").to_owned();
        (mode, until, version)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
