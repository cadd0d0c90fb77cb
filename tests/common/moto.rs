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
