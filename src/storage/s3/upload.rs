//! The S3 writer: buffers up to one part, hands full parts to an uploader task that runs
//! at most `upload_concurrency` part uploads at once, completes the multipart upload on
//! commit, and aborts it on any failure, cancellation or drop.

use std::io::{self, Write};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Inner;
use crate::metrics;
use crate::storage::{ObjectWriter, StorageError};

/// Every multipart upload's task, so a process that is about to exit can wait until the
/// uploads it dropped have been aborted (an open upload is billed storage).
static UPLOADS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Wait, at most `limit`, until every multipart upload has completed or been aborted.
pub async fn settle(limit: std::time::Duration) -> bool {
    UPLOADS.close();
    let done = tokio::time::timeout(limit, UPLOADS.wait()).await.is_ok();
    UPLOADS.reopen();
    done
}

/// The storage error inside an io::Error from the writer, or the io::Error itself.
fn storage_error(name: &'static str, e: io::Error) -> StorageError {
    if !e.get_ref().is_some_and(|i| i.is::<StorageError>()) {
        return StorageError::Write {
            storage: name,
            file: String::new(),
            source: e,
        };
    }
    match e.into_inner().map(|i| i.downcast::<StorageError>()) {
        Some(Ok(se)) => *se,
        _ => StorageError::Task {
            storage: name,
            what: "multipart upload",
            message: "the upload failed".into(),
        },
    }
}

/// A part on its way, with the permit that counts it against `upload_concurrency`.
type PartMsg = (i32, Bytes, OwnedSemaphorePermit);

/// The multipart upload running behind an `S3Writer`.
struct Uploader {
    tx: mpsc::UnboundedSender<PartMsg>,
    task: JoinHandle<Result<(), StorageError>>,
    /// A part holds a permit from being handed over until its upload ends, so at most
    /// `upload_concurrency` parts are in flight plus the one being filled.
    permits: Arc<Semaphore>,
}

/// Buffers up to `part_size`, hands full parts to the uploader; small objects are one PUT.
pub(super) struct S3Writer {
    inner: Arc<Inner>,
    handle: Handle,
    key: String,
    target: String,
    buf: Vec<u8>,
    next_part: i32,
    uploader: Option<Uploader>,
    abort: CancellationToken,
    started: Instant,
    bytes: u64,
    done: bool,
}

impl S3Writer {
    pub(super) fn new(inner: Arc<Inner>, key: String, target: &str) -> Self {
        S3Writer {
            inner,
            handle: Handle::current(),
            key,
            target: target.to_string(),
            buf: Vec::new(),
            next_part: 0,
            uploader: None,
            abort: CancellationToken::new(),
            started: Instant::now(),
            bytes: 0,
            done: false,
        }
    }

    fn send_part(&mut self, part: Bytes) -> io::Result<()> {
        if self.uploader.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = UPLOADS.spawn_on(
                upload_parts(
                    self.inner.clone(),
                    self.key.clone(),
                    rx,
                    self.abort.clone(),
                    self.started,
                ),
                &self.handle,
            );
            let permits = Arc::new(Semaphore::new(self.inner.cfg.upload_concurrency));
            self.uploader = Some(Uploader { tx, task, permits });
        }
        self.next_part += 1;
        let n = self.next_part;
        let Some(up) = self.uploader.as_ref() else {
            return Err(io::Error::other("uploader missing"));
        };
        // Wait for a slot; a failed uploader drops its parts and the channel, so this
        // cannot hang on it.
        let (permits, tx) = (up.permits.clone(), up.tx.clone());
        let permit = self.handle.block_on(async move {
            tokio::select! {
                p = permits.acquire_owned() => p.ok(),
                _ = tx.closed() => None,
            }
        });
        let Some(permit) = permit else {
            return Err(self.uploader_error());
        };
        if up.tx.send((n, part, permit)).is_err() {
            return Err(self.uploader_error());
        }
        Ok(())
    }

    /// The uploader stopped early: wait for it and report its error.
    fn uploader_error(&mut self) -> io::Error {
        let Some(up) = self.uploader.take() else {
            return io::Error::other("uploader missing");
        };
        drop(up.tx);
        match self.handle.block_on(up.task) {
            // The storage error travels inside the io::Error, source chain intact.
            Ok(Err(e)) => io::Error::other(e),
            Ok(Ok(())) => io::Error::other("upload ended early"),
            Err(e) => io::Error::other(format!("upload task failed: {e}")),
        }
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // The buffer never grows past one part: a part leaves as exactly one allocation.
        let part_size = self.inner.cfg.part_size;
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(part_size);
            }
            let take = (part_size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == part_size {
                let part = std::mem::take(&mut self.buf);
                self.send_part(Bytes::from(part))?;
            }
        }
        self.bytes += data.len() as u64;
        if let Some(rate) = self.inner.cfg.max_upload_rate {
            // Paced: never ahead of `rate` bytes per second since the upload started. The
            // writer runs on a blocking thread (the compressor's, or a copy's).
            let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let name = self.inner.name;
        let task_err = |e: String| StorageError::Task {
            storage: name,
            what: "multipart upload",
            message: e,
        };
        let result = if self.uploader.is_none() {
            let body = Bytes::from(std::mem::take(&mut self.buf));
            let inner = self.inner.clone();
            let key = self.key.clone();
            self.handle
                .block_on(async move { inner.put_object(&key, body).await })
        } else {
            if !self.buf.is_empty() {
                let last = Bytes::from(std::mem::take(&mut self.buf));
                self.send_part(last)
                    .map_err(|e| storage_error(self.inner.name, e))?;
            }
            let up = self
                .uploader
                .take()
                .ok_or_else(|| task_err("uploader missing".into()))?;
            drop(up.tx);
            self.handle
                .block_on(up.task)
                .map_err(|e| task_err(format!("upload task failed: {e}")))?
        };
        self.done = true;
        if result.is_ok() {
            metrics::upload_finished(
                &self.target,
                self.inner.name,
                self.bytes,
                self.started.elapsed(),
            );
        }
        result
    }

    fn abort(self: Box<Self>) {
        // Drop does the work.
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if !self.done {
            // The uploader sees the cancellation and aborts the multipart upload.
            self.abort.cancel();
        }
    }
}

/// Upload parts as they arrive (at most `upload_concurrency` at once), then complete. On
/// any failure or cancellation the multipart upload is aborted; if even that fails, its id
/// is remembered and aborted at the next run.
async fn upload_parts(
    inner: Arc<Inner>,
    key: String,
    mut rx: mpsc::UnboundedReceiver<PartMsg>,
    abort: CancellationToken,
    started: Instant,
) -> Result<(), StorageError> {
    let cfg = &inner.cfg;
    let upload_id = inner.start_upload(&key).await?;
    let outcome: Result<(), StorageError> = async {
        let mut total = 0u64;
        let mut parts: Vec<CompletedPart> = Vec::new();
        let mut inflight: JoinSet<Result<CompletedPart, StorageError>> = JoinSet::new();
        loop {
            let msg = tokio::select! {
                _ = abort.cancelled() => return Err(StorageError::Task { storage: inner.name, what: "upload", message: "cancelled".into() }),
                m = rx.recv() => m,
            };
            let Some((n, body, permit)) = msg else {
                break;
            };
            total += body.len() as u64;
            // Collect finished parts as we go, so a failure stops the upload early.
            while let Some(r) = inflight.try_join_next() {
                parts.push(joined(inner.name, r)?);
            }
            let (inner, key, upload_id) = (inner.clone(), key.clone(), upload_id.clone());
            inflight.spawn(async move {
                let _permit = permit;
                let out = inner
                    .retry(&format!("upload part {n} of"), &key, || {
                        inner
                            .client
                            .upload_part()
                            .bucket(&inner.cfg.bucket)
                            .key(&key)
                            .upload_id(&upload_id)
                            .part_number(n)
                            .body(ByteStream::from(body.clone()))
                            .customize()
                            .disable_payload_signing()
                            .send()
                    })
                    .await?;
                Ok(CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build())
            });
        }
        while let Some(r) = inflight.join_next().await {
            parts.push(joined(inner.name, r)?);
        }
        // From the first byte written to the last part stored: the rate the limiter
        // (`max_upload_rate`) is about; completing the upload comes after.
        let transfer = started.elapsed();
        if abort.is_cancelled() {
            return Err(StorageError::Task { storage: inner.name, what: "upload", message: "cancelled".into() });
        }
        parts.sort_by_key(|p| p.part_number());
        let count = parts.len();
        let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
        let completed = inner
            .retry("complete multipart upload of", &key, || {
                inner
                    .client
                    .complete_multipart_upload()
                    .bucket(&cfg.bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .multipart_upload(done.clone())
                    // Create only: an existing archive is never replaced.
                    .if_none_match("*")
                    .send()
            })
            .await;
        match completed {
            Ok(_) => {}
            Err(e @ StorageError::Exists { .. }) => return Err(e),
            // The store may have completed it and then answered in a way the SDK cannot
            // read (seen with moto), or the answer was lost: the object with every byte
            // in it is the proof.
            Err(e) => match inner.object_size(&key).await {
                Some(size) if size == total => {
                    tracing::warn!(storage = inner.name, key = %key, error = %e, "the store's answer to completing the upload was unreadable, but the object is there with every byte");
                }
                _ => return Err(e),
            },
        }
        tracing::info!(
            storage = inner.name,
            key = %key,
            parts = count,
            bytes = total,
            transfer_seconds = transfer.as_secs_f64(),
            complete_seconds = (started.elapsed() - transfer).as_secs_f64(),
            "multipart upload completed"
        );
        Ok(())
    }
    .await;
    if outcome.is_err() {
        if let Err(e) = inner.abort_upload(&key, &upload_id).await {
            tracing::error!(storage = inner.name, key = %key, error = %e, "cannot abort the multipart upload now; it is remembered and aborted at the next run");
            inner.remember_abandoned(&key, &upload_id);
        }
    }
    outcome
}

fn joined(
    name: &'static str,
    r: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
) -> Result<CompletedPart, StorageError> {
    r.map_err(|e| StorageError::Task {
        storage: name,
        what: "part upload",
        message: format!("part upload task failed: {e}"),
    })?
}
