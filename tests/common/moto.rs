//! A second, independent S3 implementation: moto's server (from PyPI, installed by
//! ./scripts/test), on 127.0.0.1. Unlike s3s-fs it implements ListMultipartUploads.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TestMoto {
    child: Child,
    pub port: u16,
}

impl TestMoto {
    /// Start moto_server on a free port with one bucket; fails loudly when it is missing.
    pub fn start(bucket: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server cannot start ({e}): run ./scripts/test, which installs moto[server] into its virtual environment")
            });
        let moto = TestMoto { child, port };
        super::wait_for(Duration::from_secs(60), "moto_server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let made = super::http_request(
            &format!("127.0.0.1:{port}"),
            "PUT",
            &format!("/{bucket}"),
            &[],
            None,
        );
        assert_eq!(made.status, 200, "create bucket: {}", made.text());
        moto
    }

    /// Create another bucket, with Object Lock enabled when `locked`.
    pub fn bucket(&self, bucket: &str, locked: bool) {
        let headers: &[(&str, &str)] = match locked {
            true => &[("x-amz-bucket-object-lock-enabled", "true")],
            false => &[],
        };
        let made = super::http_request(
            &format!("127.0.0.1:{}", self.port),
            "PUT",
            &format!("/{bucket}"),
            headers,
            None,
        );
        assert_eq!(made.status, 200, "create bucket: {}", made.text());
    }

    /// A GET of `path` on the server (`/bucket?versions`, `/bucket/key?retention`).
    pub fn get(&self, path: &str) -> String {
        let r = super::http_request(&format!("127.0.0.1:{}", self.port), "GET", path, &[], None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.text()
    }

    /// The version ids of `key` in `bucket`.
    pub fn version_ids(&self, bucket: &str, key: &str) -> Vec<String> {
        let xml = self.get(&format!("/{bucket}?versions&prefix={key}"));
        xml.split("<Version>")
            .skip(1)
            .filter(|v| v.contains(&format!("<Key>{key}</Key>")))
            .filter_map(|v| {
                let id = v
                    .split("<VersionId>")
                    .nth(1)?
                    .split("</VersionId>")
                    .next()?;
                Some(id.to_string())
            })
            .collect()
    }

    /// DELETE one version of `key` (as anyone with write access could): the status.
    pub fn delete_version(&self, bucket: &str, key: &str, version: &str) -> u16 {
        super::http_request(
            &format!("127.0.0.1:{}", self.port),
            "DELETE",
            &format!("/{bucket}/{key}?versionId={version}"),
            &[],
            None,
        )
        .status
    }

    /// The object at `key` in `bucket`, read whole (a signed GET, with boto3 from the
    /// tests' virtual environment).
    pub fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.boto3(
            "sys.stdout.buffer.write(s3.get_object(Bucket=b, Key=k)['Body'].read())",
            bucket,
            key,
            &[],
        )
    }

    /// PUT `body` at `key` in `bucket`, over what is there (as anyone with write access
    /// to the bucket could).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.boto3(
            "s3.put_object(Bucket=b, Key=k, Body=sys.stdin.buffer.read())",
            bucket,
            key,
            body,
        );
    }

    /// Run `call` in Python with `s3` (a client of this server), `b` and `k`; `input` on
    /// its stdin; its stdout.
    fn boto3(&self, call: &str, bucket: &str, key: &str, input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let script = format!(
            "import sys, boto3\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             b, k = sys.argv[1], sys.argv[2]\n{call}\n",
            self.endpoint()
        );
        let mut child = Command::new("python3")
            .args(["-c", &script, bucket, key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 with boto3 (./scripts/test installs it)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "boto3 {call}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The keys under `prefix` in `bucket`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml = self.get(&format!("/{bucket}?list-type=2&prefix={prefix}"));
        xml.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next().map(str::to_string))
            .collect()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `[storage.s3]` section for a config pointing at this server.
    pub fn config_section(&self, bucket: &str, prefix: &str, extra: &str) -> String {
        format!(
            "[storage.s3]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             force_path_style = true\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n\
             max_attempts = 3\nretry_base_delay = \"100ms\"\n{extra}\n",
            self.endpoint()
        )
    }
}

impl Drop for TestMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
