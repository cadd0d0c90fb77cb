//! A real S3-compatible server (s3s-fs) on 127.0.0.1, inside the test process, that a test
//! can stop and start again on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub const S3_ACCESS_KEY: &str = "dbkeep-test-access";
pub const S3_SECRET_KEY: &str = "dbkeep-test-secret-4f1c9a";

pub struct TestS3 {
    pub root: tempfile::TempDir,
    pub addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio_util::sync::CancellationToken>,
}

impl TestS3 {
    /// Start on a free port with one bucket, `bucket`.
    pub fn start(bucket: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix("dbkeep-s3-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s3 = TestS3 {
            root,
            addr,
            runtime,
            stop: None,
        };
        s3.serve(listener);
        s3
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let stop = tokio_util::sync::CancellationToken::new();
        self.runtime.spawn(serve(
            self.root.path().to_path_buf(),
            listener,
            stop.clone(),
        ));
        self.stop = Some(stop);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving: the port refuses connections and open ones are cut.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    /// Serve again on the same port.
    pub fn restart(&mut self) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .expect("rebind the S3 test port");
        self.serve(listener);
    }

    /// Where s3s-fs keeps an object's bytes.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// Keys of all objects under `prefix` in `bucket` (from the server's data folder).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let base = self.root.path().join(bucket);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        out
    }

    /// Multipart uploads still open (s3s-fs keeps `.upload-<id>.json` in its root).
    pub fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }

    /// Parts the server holds of multipart uploads still open (s3s-fs keeps
    /// `.upload_id-<id>.part-<n>`): a client that sent one knew the upload's id.
    pub fn uploaded_parts(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
            .count()
    }

    /// The `[storage.s3]` section for a config pointing at this server.
    pub fn config_section(&self, bucket: &str, prefix: &str, extra: &str) -> String {
        format!(
            "[storage.s3]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             force_path_style = true\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\n\
             max_attempts = 3\nretry_base_delay = \"100ms\"\n{extra}\n",
            self.endpoint()
        )
    }

    /// Put an object directly (to plant fake backups).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        let path = self.object_path(bucket, key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
        // s3s-fs keeps the checksum of what it stored beside the root: a planted object
        // replaces one without it, as a client's PUT would.
        let sidecar = format!(
            ".bucket-{}.object-{}.internal.json",
            base64_url(bucket),
            base64_url(key)
        );
        let _ = std::fs::remove_file(self.root.path().join(sidecar));
    }
}

/// Base64, URL-safe alphabet, no padding (how s3s-fs names its sidecar files).
fn base64_url(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serve s3s-fs on `listener` with the test credentials until `stop`; then cut every
/// open connection, as a server that goes down hard would.
pub async fn serve(
    root: PathBuf,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    let fs = s3s_fs::FileSystem::new(&root).expect("s3s-fs root");
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
    let service = b.build();
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let socket = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        conns.spawn(async move {
            let _ = conn.await;
        });
    }
    conns.abort_all();
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(base, &p, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}
