//! The fan-out writer: one archive stream written to the primary storage and every mirror
//! at once. A failure of the primary fails the write; a mirror that fails is dropped (its
//! partial object aborted) and reported, so the archive becomes pending upload there.

use std::io::{self, Write};

use super::{ObjectWriter, StorageError, Storages};

/// One storage's writer for the archive being streamed.
struct Sink {
    storage: &'static str,
    /// A failure of a required sink fails the write; of another, it is only reported.
    required: bool,
    writer: Option<Box<dyn ObjectWriter>>,
    error: Option<StorageError>,
}

/// Writes every buffer to each storage's writer.
pub struct FanOut {
    file: String,
    sinks: Vec<Sink>,
}

/// A mirror that did not get the archive, and why.
#[derive(Debug)]
pub struct MirrorFailure {
    pub storage: &'static str,
    pub error: StorageError,
}

impl FanOut {
    /// Start writing `file` of `target` to the primary and every mirror. A mirror that
    /// cannot even start is reported like one that fails later.
    pub async fn create(
        storages: &Storages,
        target: &str,
        file: &str,
    ) -> Result<FanOut, StorageError> {
        let mut sinks = Vec::new();
        let primary = storages.primary();
        sinks.push(Sink {
            storage: primary.name(),
            required: true,
            writer: Some(primary.create(target, file).await?),
            error: None,
        });
        // A rate-limited mirror is not written from the stream (it would hold the dump
        // back to its rate): it copies the primary's archive after the run.
        for m in storages.streamed_mirrors() {
            let (writer, error) = match m.create(target, file).await {
                Ok(w) => (Some(w), None),
                Err(e) => (None, Some(e)),
            };
            sinks.push(Sink {
                storage: m.name(),
                required: false,
                writer,
                error,
            });
        }
        Ok(FanOut {
            file: file.to_string(),
            sinks,
        })
    }

    fn fail(&mut self, i: usize, e: io::Error) {
        let sink = &mut self.sinks[i];
        sink.error = Some(StorageError::Write {
            storage: sink.storage,
            file: self.file.clone(),
            source: e,
        });
        if let Some(w) = sink.writer.take() {
            w.abort();
        }
    }

    /// Commit every writer still going. A primary failure is the result (the mirrors'
    /// partial objects are aborted when dropped); the mirrors that failed (while writing
    /// or committing) are returned.
    pub fn commit(self) -> Result<Vec<MirrorFailure>, StorageError> {
        let mut failed = Vec::new();
        for sink in self.sinks {
            match (sink.writer, sink.error) {
                (Some(w), _) => match w.commit() {
                    Ok(()) => {}
                    Err(e) if sink.required => return Err(e),
                    Err(e) => failed.push(MirrorFailure {
                        storage: sink.storage,
                        error: e,
                    }),
                },
                (None, Some(error)) if sink.required => return Err(error),
                (None, Some(error)) => failed.push(MirrorFailure {
                    storage: sink.storage,
                    error,
                }),
                (None, None) => {}
            }
        }
        Ok(failed)
    }
}

impl Write for FanOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for i in 0..self.sinks.len() {
            let Some(w) = self.sinks[i].writer.as_mut() else {
                continue;
            };
            if let Err(e) = w.write_all(buf) {
                if self.sinks[i].required {
                    return Err(e);
                }
                self.fail(i, e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        for i in 0..self.sinks.len() {
            let Some(w) = self.sinks[i].writer.as_mut() else {
                continue;
            };
            if let Err(e) = w.flush() {
                if self.sinks[i].required {
                    return Err(e);
                }
                self.fail(i, e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::MemoryStorage;
    use super::super::Storage;
    use super::*;

    #[tokio::test]
    async fn a_failing_mirror_is_reported_and_the_primary_kept() {
        let primary = MemoryStorage::new("local");
        let mirror = MemoryStorage::new("s3");
        mirror.fail_nth_write(2);
        let storages = Storages::new(Box::new(primary.clone()), vec![Box::new(mirror.clone())]);
        let mut out = FanOut::create(&storages, "t", "a.bin").await.unwrap();
        for _ in 0..4 {
            out.write_all(b"0123").unwrap();
        }
        let failed = tokio::task::spawn_blocking(move || out.commit())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].storage, "s3");
        assert_eq!(primary.get_bytes("t", "a.bin").await.unwrap().len(), 16);
        assert!(mirror.list("t").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failing_primary_fails_the_write() {
        let primary = MemoryStorage::new("local");
        primary.fail_nth_write(1);
        let storages = Storages::new(Box::new(primary.clone()), vec![]);
        let mut out = FanOut::create(&storages, "t", "a.bin").await.unwrap();
        assert!(out.write_all(b"x").is_err());
        drop(out);
        assert!(primary.list("t").await.unwrap().is_empty());
    }
}
