//! S3-compatible object storage: `<prefix>/<target>/<file>` keys, paginated listing,
//! retries with backoff, errors by kind, and aborting of multipart uploads left behind by
//! failures. The streaming multipart writer is in `upload.rs`.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ObjectLockMode, ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{DateTime, Utc};

mod upload;

pub use upload::settle;

use super::{ObjectInfo, ObjectWriter, Storage, StorageError};
use crate::config::S3Config;
use crate::error::ErrorKind;
use crate::metrics;

/// The time of the run whose archive or manifest `file` is (`<target>_<YYYYMMDD_HHMMSS>.`
/// starts the name; catalog's rule, read here without it).
fn run_time(target: &str, file: &str) -> Option<DateTime<Utc>> {
    let rest = file.strip_prefix(target)?.strip_prefix('_')?;
    if rest.get(15..16) != Some(".") {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(rest.get(..15)?, "%Y%m%d_%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

/// When the objects of the run started at `run` stop being locked: its time plus the
/// period, or, for a run that started longer ago than that (S3 refuses a date in the
/// past), `period` from `now`.
pub fn retain_until(run: DateTime<Utc>, period: Duration, now: DateTime<Utc>) -> DateTime<Utc> {
    let period = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::days(36_500));
    let planned = run + period;
    if planned > now + chrono::Duration::seconds(1) {
        planned
    } else {
        now + period
    }
}

fn smithy_time(t: DateTime<Utc>) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_secs(t.timestamp())
}

/// Abandoned multipart uploads (the abort itself failed) are remembered here, in the work
/// folder, and aborted at the next run.
const ABANDONED_FILE: &str = ".dbkeep-s3-abandoned.json";

/// The abandoned-uploads file of a destination: each remembers its own.
fn abandoned_file(name: &str) -> String {
    match name {
        "s3" => ABANDONED_FILE.to_string(),
        mirror => format!(".dbkeep-s3-{mirror}-abandoned.json"),
    }
}
/// Multipart uploads older than this under a target's prefix are leftovers of a crash.
const STALE_UPLOAD_AGE: chrono::Duration = chrono::Duration::hours(24);

pub struct S3Storage {
    inner: Arc<Inner>,
}

struct Inner {
    /// `s3`, or the mirror's name.
    name: &'static str,
    client: Client,
    cfg: S3Config,
    /// "bucket `x` at <endpoint>", for messages (never credentials).
    place: String,
    abandoned_path: PathBuf,
    abandoned_lock: Mutex<()>,
    /// Set once the bucket's Object Lock configuration was found to match.
    lock_checked: tokio::sync::OnceCell<()>,
}

/// Tries of a request whose endpoint did not answer within `read_timeout`.
const SILENT_ATTEMPTS: u32 = 2;

impl S3Storage {
    pub async fn new(cfg: S3Config, work_dir: PathBuf) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(cfg.region.clone()))
            // dbkeep retries itself, with a log line per retry.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    // A server that accepted the connection and then says nothing (hung,
                    // stopped) is given up on within this per read, not minutes.
                    .read_timeout(cfg.read_timeout)
                    .build(),
            );
        if let (Some(ak), Some(sk)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                ak.expose(),
                sk.expose(),
                cfg.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "dbkeep-config",
            ));
        }
        let shared = loader.load().await;
        let mut b =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        if cfg.checksum_when_required {
            b = b
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let place = format!(
            "bucket `{}` at {}",
            cfg.bucket,
            cfg.endpoint.as_deref().unwrap_or("AWS S3")
        );
        S3Storage {
            inner: Arc::new(Inner {
                client: Client::from_conf(b.build()),
                name: super::intern(&cfg.name),
                abandoned_path: work_dir.join(abandoned_file(&cfg.name)),
                cfg,
                place,
                abandoned_lock: Mutex::new(()),
                lock_checked: tokio::sync::OnceCell::new(),
            }),
        }
    }
}

impl Inner {
    fn key(&self, target: &str, file: &str) -> String {
        format!("{}/{target}/{file}", self.cfg.prefix)
    }

    fn target_prefix(&self, target: &str) -> String {
        format!("{}/{target}/", self.cfg.prefix)
    }

    /// The Object Lock an object at `key` is written with: archives and manifests (whose
    /// names carry their run's id) are retained until the run's time plus the configured
    /// period; dbkeep's own small files (commit markers, pins, probes) are not locked.
    fn lock_of(&self, key: &str) -> Option<(ObjectLockMode, DateTime<Utc>)> {
        let lock = self.cfg.object_lock.as_ref()?;
        let rest = key.strip_prefix(&self.cfg.prefix)?.strip_prefix('/')?;
        let (target, file) = rest.split_once('/')?;
        let run = run_time(target, file)?;
        Some((
            ObjectLockMode::from(lock.mode.as_str()),
            retain_until(run, lock.period, Utc::now()),
        ))
    }

    /// With `object_lock` configured, the bucket must have Object Lock enabled (else the
    /// promise of write-once backups is not kept), and a bucket default of compliance mode
    /// must not be weakened to governance. Checked before the first write, once.
    async fn check_lock(&self) -> Result<(), StorageError> {
        let Some(lock) = &self.cfg.object_lock else {
            return Ok(());
        };
        self.lock_checked
            .get_or_try_init(|| async {
                let bucket = &self.cfg.bucket;
                let mismatch = |message: String| StorageError::Remote {
                    storage: self.name,
                    place: self.place.clone(),
                    action: "checking the bucket's Object Lock configuration".into(),
                    message,
                    kind: ErrorKind::Usage,
                    source: None,
                };
                let got = self
                    .client
                    .get_object_lock_configuration()
                    .bucket(bucket)
                    .send()
                    .await;
                let conf = match got {
                    Ok(out) => out.object_lock_configuration,
                    Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => None,
                    Err(e) => return Err(self.err("read the Object Lock configuration of", bucket, e)),
                };
                let enabled = conf.as_ref().and_then(|c| c.object_lock_enabled()).map(|e| e.as_str()) == Some("Enabled");
                if !enabled {
                    return Err(mismatch(format!(
                        "`object_lock` is set but bucket {bucket} has no Object Lock, so its objects could be deleted or replaced: use a bucket created with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket), or remove `object_lock`"
                    )));
                }
                let default_mode = conf
                    .as_ref()
                    .and_then(|c| c.rule())
                    .and_then(|r| r.default_retention())
                    .and_then(|d| d.mode())
                    .map(|m| m.as_str().to_string());
                if default_mode.as_deref() == Some("COMPLIANCE") && lock.mode == "GOVERNANCE" {
                    return Err(mismatch(format!(
                        "bucket {bucket} retains in compliance mode by default, and `object_lock.mode` is governance, which would write weaker locks than the bucket asks for: set mode = \"compliance\""
                    )));
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Delete every version of `key` (and its delete markers): on a versioned (Object
    /// Lock) bucket a plain delete only hides an object. A version still locked is an
    /// error that says until when.
    async fn delete_versions(&self, key: &str) -> Result<(), StorageError> {
        let listed = self
            .retry("list versions of", key, || {
                self.client
                    .list_object_versions()
                    .bucket(&self.cfg.bucket)
                    .prefix(key)
                    .send()
            })
            .await?;
        let mut ids: Vec<String> = Vec::new();
        for v in listed.versions() {
            if v.key() == Some(key) {
                ids.extend(v.version_id().map(str::to_string));
            }
        }
        for m in listed.delete_markers() {
            if m.key() == Some(key) {
                ids.extend(m.version_id().map(str::to_string));
            }
        }
        for id in ids {
            self.retry("delete", key, || {
                self.client
                    .delete_object()
                    .bucket(&self.cfg.bucket)
                    .key(key)
                    .version_id(&id)
                    .send()
            })
            .await
            .map_err(|e| match e {
                StorageError::Remote { storage, place, action, message, source, .. }
                    if message.starts_with("AccessDenied") =>
                {
                    StorageError::Remote {
                        storage,
                        place,
                        action,
                        message: format!("{message} (the object is still under its Object Lock retention; it is deleted by a cleanup after the date)"),
                        kind: ErrorKind::Refused,
                        source,
                    }
                }
                other => other,
            })?;
        }
        Ok(())
    }

    fn err<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        action: &str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError {
        let kind = classify(&e);
        if e.code() == Some("PreconditionFailed") {
            return StorageError::Exists {
                storage: self.name,
                path: PathBuf::from(key),
            };
        }
        if e.code() == Some("NoSuchKey") || e.code() == Some("NotFound") {
            return StorageError::NotFound {
                storage: self.name,
                path: PathBuf::from(key),
            };
        }
        StorageError::Remote {
            storage: self.name,
            place: self.place.clone(),
            action: format!("{action} {key}"),
            message: describe(&e),
            kind,
            source: Some(Box::new(e)),
        }
    }

    /// Run `op`, retrying transient failures with exponential backoff and jitter.
    async fn retry<T, E, F, Fut>(
        &self,
        action: &str,
        key: &str,
        mut op: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
            Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
        >,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => {
                    metrics::storage_up(self.name, true);
                    return Ok(v);
                }
                Err(e) => {
                    let transient = is_transient(&e);
                    // An endpoint that does not answer at all gets one more try, not
                    // max_attempts: each try already waited read_timeout, and a backup must
                    // not sit behind a hung mirror (it becomes pending instead).
                    let silent = match &e {
                        SdkError::TimeoutError(_) => true,
                        SdkError::DispatchFailure(d) => d.is_timeout(),
                        _ => false,
                    };
                    let limit = if silent {
                        self.cfg.max_attempts.min(SILENT_ATTEMPTS)
                    } else {
                        self.cfg.max_attempts
                    };
                    if !transient || attempt >= limit {
                        if transient {
                            metrics::storage_up(self.name, false);
                        }
                        return Err(self.err(action, key, e));
                    }
                    let base = self.cfg.retry_base_delay;
                    let backoff = base
                        .saturating_mul(1 << (attempt - 1).min(16))
                        .min(Duration::from_secs(30));
                    let delay = backoff
                        + Duration::from_millis(rand::random_range(
                            0..base.as_millis().max(1) as u64,
                        ));
                    tracing::warn!(
                        storage = self.name,
                        action,
                        key,
                        attempt,
                        max_attempts = self.cfg.max_attempts,
                        delay_ms = delay.as_millis() as u64,
                        error = %describe(&e),
                        "transient S3 error; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn put_object(&self, key: &str, body: Bytes) -> Result<(), StorageError> {
        let lock = self.lock_of(key);
        if lock.is_some() {
            self.check_lock().await?;
        }
        self.retry("upload", key, || {
            self.client
                .put_object()
                .set_object_lock_mode(lock.as_ref().map(|l| l.0.clone()))
                .set_object_lock_retain_until_date(lock.as_ref().map(|l| smithy_time(l.1)))
                .bucket(&self.cfg.bucket)
                .key(key)
                .set_storage_class(self.cfg.storage_class.as_deref().map(StorageClass::from))
                .set_server_side_encryption(self.cfg.sse.as_deref().map(ServerSideEncryption::from))
                .set_ssekms_key_id(self.cfg.sse_kms_key_id.clone())
                // Create only: an existing archive or manifest is never replaced.
                .if_none_match("*")
                .body(ByteStream::from(body.clone()))
                .customize()
                // The archive's sha256 is in its manifest and checked on restore; signing
                // the payload would hash every byte again on both ends.
                .disable_payload_signing()
                .send()
        })
        .await
        .map(|_| ())
    }

    /// The size of the object at `key`, if there is one (and the store answers).
    async fn object_size(&self, key: &str) -> Option<u64> {
        let out = self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        out.content_length().map(|l| l.max(0) as u64)
    }

    /// Start a multipart upload of `key` with the configured storage class and encryption;
    /// returns its upload id.
    async fn start_upload(&self, key: &str) -> Result<String, StorageError> {
        let cfg = &self.cfg;
        let lock = self.lock_of(key);
        if lock.is_some() {
            self.check_lock().await?;
        }
        let created = self
            .retry("start multipart upload of", key, || {
                self.client
                    .create_multipart_upload()
                    .set_object_lock_mode(lock.as_ref().map(|l| l.0.clone()))
                    .set_object_lock_retain_until_date(lock.as_ref().map(|l| smithy_time(l.1)))
                    .bucket(&cfg.bucket)
                    .key(key)
                    .set_storage_class(cfg.storage_class.as_deref().map(StorageClass::from))
                    .set_server_side_encryption(cfg.sse.as_deref().map(ServerSideEncryption::from))
                    .set_ssekms_key_id(cfg.sse_kms_key_id.clone())
                    .send()
            })
            .await?;
        Ok(created.upload_id().unwrap_or_default().to_string())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.retry("abort multipart upload of", key, || {
            self.client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
        })
        .await
        .map(|_| ())
        .or_else(|e| match &e {
            // Already gone (a late abort of ours went through, or the store expired it):
            // what an abort is for is done.
            StorageError::Remote { message, .. } if message.starts_with("NoSuchUpload") => Ok(()),
            _ => Err(e),
        })
    }

    fn load_abandoned(&self) -> BTreeMap<String, String> {
        crate::files::read_no_follow(&self.abandoned_path, 16 * 1024 * 1024)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_abandoned(&self, all: &BTreeMap<String, String>) {
        let result = if all.is_empty() {
            match std::fs::remove_file(&self.abandoned_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            serde_json::to_vec_pretty(all)
                .map_err(io::Error::other)
                .and_then(|b| crate::files::write_atomic(&self.abandoned_path, &b))
        };
        if let Err(e) = result {
            tracing::error!(path = %self.abandoned_path.display(), error = %e, "cannot record abandoned multipart uploads");
        }
    }

    /// Remember an upload whose abort failed (upload id -> key), to abort it next time.
    fn remember_abandoned(&self, key: &str, upload_id: &str) {
        let _g = self
            .abandoned_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut all = self.load_abandoned();
        all.insert(upload_id.to_string(), key.to_string());
        self.save_abandoned(&all);
    }
}

/// Service errors carry a code and message; transport errors their cause.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = e.code().unwrap_or("error");
            let msg = e.message().unwrap_or("");
            let hint = match code {
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "InvalidToken" | "ExpiredToken" => {
                    ": check access_key_id / secret_access_key (or the credential chain) and the bucket policy"
                }
                "NoSuchBucket" => ": check storage.s3.bucket, region and endpoint",
                _ => "",
            };
            format!("{code} (HTTP {status}) {msg}{hint}")
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            format!("cannot reach the endpoint: {}", DisplayErrorContext(e))
        }
        other => DisplayErrorContext(other).to_string(),
    }
}

/// 5xx, 429, throttling, timeouts and connection failures are worth another try.
fn is_transient<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            status >= 500
                || status == 429
                || matches!(
                    e.code(),
                    Some(
                        "SlowDown"
                            | "Throttling"
                            | "ThrottlingException"
                            | "RequestTimeout"
                            | "InternalError"
                    )
                )
        }
        _ => false,
    }
}

/// What kind of failure an SDK error is, for the operator and the exit code.
fn classify<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> ErrorKind {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => ErrorKind::Unreachable,
        _ => match e.code() {
            Some(
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "AccessDenied"
                | "InvalidToken"
                | "ExpiredToken",
            ) => ErrorKind::Auth,
            Some("NoSuchBucket" | "NoSuchKey" | "NotFound") => ErrorKind::NotFound,
            _ => ErrorKind::Failed,
        },
    }
}

/// A blocking reader over an object's body.
struct BodyReader(tokio_util::io::SyncIoBridge<Box<dyn tokio::io::AsyncRead + Send + Unpin>>);

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn probe(&self, target: &str) -> Vec<(&'static str, Result<(), StorageError>)> {
        let name = super::probe_name();
        let mut out = super::probe_basic(self, target, &name).await;
        // Large archives go up in parts: an upload is started, then aborted, as a run
        // that is stopped does.
        let key = self.inner.key(target, &format!("{name}.multipart"));
        match self.inner.start_upload(&key).await {
            Ok(id) => {
                out.push(("start multipart upload", Ok(())));
                out.push((
                    "abort multipart upload",
                    self.inner.abort_upload(&key, &id).await,
                ));
            }
            Err(e) => out.push(("start multipart upload", Err(e))),
        }
        out
    }

    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn retention(&self) -> (Option<u32>, Option<u32>) {
        (self.inner.cfg.keep_days, self.inner.cfg.min_keep)
    }

    fn max_upload_rate(&self) -> Option<u64> {
        self.inner.cfg.max_upload_rate
    }

    fn object_key(&self, target: &str, file: &str) -> Option<String> {
        Some(self.inner.key(target, file))
    }

    fn location(&self, target: &str) -> String {
        format!(
            "s3://{}/{}",
            self.inner.cfg.bucket,
            self.inner.target_prefix(target)
        )
    }

    async fn create(
        &self,
        target: &str,
        file: &str,
    ) -> Result<Box<dyn ObjectWriter>, StorageError> {
        Ok(Box::new(upload::S3Writer::new(
            self.inner.clone(),
            self.inner.key(target, file),
            target,
        )))
    }

    async fn put_bytes(
        &self,
        target: &str,
        file: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError> {
        let body = Bytes::from(bytes);
        match self
            .inner
            .put_object(&self.inner.key(target, file), body.clone())
            .await
        {
            // A retried PUT whose first try landed (its answer was lost) finds its own
            // object: the same bytes are not a conflict.
            Err(StorageError::Exists { .. })
                if self.get_bytes(target, file).await.ok().as_deref() == Some(&body[..]) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    async fn get_bytes(&self, target: &str, file: &str) -> Result<Vec<u8>, StorageError> {
        let key = self.inner.key(target, file);
        let out = self.get(&key, None, None).await?;
        let len = out.content_length().unwrap_or(0).max(0) as u64;
        if len > super::MAX_SMALL_OBJECT {
            return Err(StorageError::TooLarge {
                storage: self.inner.name,
                path: PathBuf::from(key),
                bytes: len,
                limit: super::MAX_SMALL_OBJECT,
            });
        }
        let body = out.body.collect().await.map_err(|e| StorageError::Remote {
            storage: self.inner.name,
            place: self.inner.place.clone(),
            action: format!("download {key}"),
            message: e.to_string(),
            kind: ErrorKind::Unreachable,
            source: Some(Box::new(e)),
        })?;
        Ok(body.into_bytes().to_vec())
    }

    async fn open(&self, target: &str, file: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        Ok(self.open_version(target, file, None).await?.reader)
    }

    /// The version is the object's ETag, and its version id in a versioned bucket; a
    /// pinned open asks for exactly that (`If-Match`, `versionId`), so an object replaced
    /// since is refused by the store before a byte of it is sent.
    async fn open_version(
        &self,
        target: &str,
        file: &str,
        pin: Option<&str>,
    ) -> Result<super::Opened, StorageError> {
        let key = self.inner.key(target, file);
        let (etag, version_id) = match pin.map(|p| p.split_once('\n').unwrap_or((p, ""))) {
            Some((etag, id)) => (Some(etag), Some(id).filter(|id| !id.is_empty())),
            None => (None, None),
        };
        let changed = |detail: String| StorageError::Changed {
            storage: self.inner.name,
            file: file.to_string(),
            detail,
        };
        let out = match self.get(&key, etag, version_id).await {
            // 412 to an If-Match, or the pinned version gone.
            Err(StorageError::Exists { .. } | StorageError::NotFound { .. }) if pin.is_some() => {
                return Err(changed(
                    "the store no longer has the proven object (ETag and version) under its key"
                        .into(),
                ))
            }
            other => other?,
        };
        // A store that ignores If-Match still names what it sends.
        if let Some(want) = etag.filter(|e| out.e_tag() != Some(*e)) {
            return Err(changed(format!(
                "ETag {}, proven as {want}",
                out.e_tag().unwrap_or("none")
            )));
        }
        let version = out
            .e_tag()
            .map(|e| format!("{e}\n{}", out.version_id().unwrap_or("")));
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> =
            Box::new(out.body.into_async_read());
        Ok(super::Opened {
            reader: Box::new(BodyReader(tokio_util::io::SyncIoBridge::new(reader))),
            version,
        })
    }

    async fn list(&self, target: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let prefix = self.inner.target_prefix(target);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .inner
                .retry("list", &prefix, || {
                    self.inner
                        .client
                        .list_objects_v2()
                        .bucket(&self.inner.cfg.bucket)
                        .prefix(&prefix)
                        .set_continuation_token(token.clone())
                        .send()
                })
                .await?;
            for o in page.contents() {
                let Some(file) = o.key().and_then(|k| k.strip_prefix(&prefix)) else {
                    continue;
                };
                // Only the target's own folder, not anything nested below it.
                if file.is_empty() || file.contains('/') {
                    continue;
                }
                let modified = o
                    .last_modified()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0))
                    .unwrap_or_else(Utc::now);
                out.push(ObjectInfo {
                    file: file.to_string(),
                    bytes: o.size().unwrap_or(0).max(0) as u64,
                    modified,
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() || page.is_truncated() != Some(true) {
                break;
            }
        }
        Ok(out)
    }

    fn lock_period(&self) -> Option<Duration> {
        self.inner.cfg.object_lock.as_ref().map(|l| l.period)
    }

    async fn delete(&self, target: &str, file: &str) -> Result<(), StorageError> {
        let key = self.inner.key(target, file);
        if self.inner.cfg.object_lock.is_some() {
            return self.inner.delete_versions(&key).await;
        }
        self.inner
            .retry("delete", &key, || {
                self.inner
                    .client
                    .delete_object()
                    .bucket(&self.inner.cfg.bucket)
                    .key(&key)
                    .send()
            })
            .await
            .map(|_| ())
    }

    /// Abort multipart uploads left behind for this target: the ones remembered after a
    /// failed abort, and (where the store can list them) ones older than a day.
    async fn remove_temp_files(&self, target: &str) -> Result<Vec<String>, StorageError> {
        let prefix = self.inner.target_prefix(target);
        let mut removed = Vec::new();
        let remembered: Vec<(String, String)> = {
            let _g = self
                .inner
                .abandoned_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.inner
                .load_abandoned()
                .into_iter()
                .filter(|(_, key)| key.starts_with(&prefix))
                .collect()
        };
        for (upload_id, key) in remembered {
            match self.inner.abort_upload(&key, &upload_id).await {
                Ok(()) => {
                    let _g = self
                        .inner
                        .abandoned_lock
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let mut all = self.inner.load_abandoned();
                    all.remove(&upload_id);
                    self.inner.save_abandoned(&all);
                    removed.push(format!("multipart upload {upload_id} of {key}"));
                }
                Err(e) => {
                    tracing::warn!(storage = self.inner.name, key = %key, error = %e, "abandoned multipart upload still cannot be aborted")
                }
            }
        }
        let listed = self
            .inner
            .client
            .list_multipart_uploads()
            .bucket(&self.inner.cfg.bucket)
            .prefix(&prefix)
            .send()
            .await;
        match listed {
            Ok(page) => {
                let cutoff = Utc::now() - STALE_UPLOAD_AGE;
                for u in page.uploads() {
                    let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                        continue;
                    };
                    let old = u
                        .initiated()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0))
                        .is_some_and(|t| t < cutoff);
                    if old && self.inner.abort_upload(key, id).await.is_ok() {
                        removed.push(format!("multipart upload {id} of {key}"));
                    }
                }
            }
            // Not every S3-compatible store implements ListMultipartUploads.
            Err(e) => {
                tracing::debug!(storage = self.inner.name, error = %describe(&e), "cannot list multipart uploads")
            }
        }
        Ok(removed)
    }
}

impl S3Storage {
    /// The keys of multipart uploads still open under the configured prefix, where the
    /// store can list them (ListMultipartUploads).
    pub async fn open_multipart_uploads(&self) -> Result<Vec<String>, StorageError> {
        let prefix = format!("{}/", self.inner.cfg.prefix);
        let page = self
            .inner
            .retry("list multipart uploads under", &prefix, || {
                self.inner
                    .client
                    .list_multipart_uploads()
                    .bucket(&self.inner.cfg.bucket)
                    .prefix(&prefix)
                    .send()
            })
            .await?;
        Ok(page
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect())
    }
}

impl S3Storage {
    /// Download `key`; with `etag` only while it still has that ETag, with `version_id`
    /// that version.
    async fn get(
        &self,
        key: &str,
        etag: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        let result = self
            .inner
            .retry("download", key, || {
                self.inner
                    .client
                    .get_object()
                    .bucket(&self.inner.cfg.bucket)
                    .key(key)
                    .set_if_match(etag.map(str::to_string))
                    .set_version_id(version_id.map(str::to_string))
                    .send()
            })
            .await;
        result
    }
}
