//! Streaming compression with a sha256 of the stored bytes, in bounded memory.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::config::Compression;

/// Size of the read buffer between the source and the encoder.
const CHUNK: usize = 1024 * 1024;
/// Bytes per zstd worker job: zstd's own default at level 3 (4 x the 2 MiB window), so
/// the archive is as small as `zstd -3 -T2` makes it. 4 MiB jobs cost 23 MiB less memory
/// but lose matches at every job's edge: 0.6 % larger on 2,000 small tables (171.3 vs
/// 170.2 MB of 627 MB), and no faster (median of 5: 6.32 vs 5.78 s there, 3.35 vs 3.19 s
/// on one 420 MB table). 2 MiB jobs were 18 % slower still.
const ZSTD_JOB_SIZE: u32 = 8 * 1024 * 1024;
/// How many leading raw bytes are kept so the caller can check the format's magic.
pub const HEAD_LEN: usize = 16;

/// What one streamed archive amounted to.
#[derive(Debug, Clone)]
pub struct Summary {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    /// The first bytes of the uncompressed stream.
    pub head: Vec<u8>,
}

/// Counts and hashes every byte on its way to `inner`.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// The inner writer, the byte count and the hex sha256.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How many zstd worker threads to use: one per core, at least one, at most four.
fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get().clamp(1, 4) as u32)
        .unwrap_or(1)
}

/// Which side of a stream failed: the source being read, or the sink being written (a
/// full disk, a storage that went away). A failed sink explains a producer that then dies
/// of a closed pipe, so the caller reports it first.
#[derive(Debug)]
pub enum StreamError {
    Read(io::Error),
    Write(io::Error),
}

/// Read `input` to its end, compress with `codec`, encrypt to `recipients` when there are
/// any, into `out`; return the sizes and the sha256 of what `out` received (the stored
/// bytes). Blocking: call from a blocking thread.
pub fn compress<R: Read, W: Write>(
    mut input: R,
    codec: Compression,
    recipients: &[age::x25519::Recipient],
    out: W,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(W, Summary), StreamError> {
    let sink = crate::crypt::Sealed::new(HashingWriter::new(out), recipients)
        .map_err(StreamError::Write)?;
    let mut buf = vec![0u8; CHUNK];
    let mut head = Vec::with_capacity(HEAD_LEN);
    let mut raw_bytes = 0u64;
    let mut pump = |w: &mut dyn Write| -> Result<(), StreamError> {
        loop {
            // Checked between chunks: a stop does not wait for a slow codec (zstd -19)
            // to work through what is already buffered.
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            let n = match input.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Read(e)),
            };
            if head.len() < HEAD_LEN {
                let take = (HEAD_LEN - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
            }
            raw_bytes += n as u64;
            w.write_all(&buf[..n]).map_err(StreamError::Write)?;
        }
    };
    let w = StreamError::Write;
    let sink = match codec {
        Compression::Zstd { level } => {
            let mut z = Zstd::new(level).map_err(w)?;
            let mut sink = sink;
            let done = pump(&mut z.writer(&mut sink, cancel))
                .and_then(|()| z.finish(&mut sink, cancel).map_err(w));
            if let Err(e) = done {
                z.abandon();
                return Err(match cancel.is_cancelled() {
                    true => cancelled(),
                    false => e,
                });
            }
            sink
        }
        Compression::Gzip { level } => {
            let mut enc = flate2::write::GzEncoder::new(sink, flate2::Compression::new(level));
            pump(&mut enc)?;
            enc.finish().map_err(w)?
        }
        Compression::None => {
            let mut sink = sink;
            pump(&mut sink)?;
            sink
        }
    };
    let (mut out, stored_bytes, sha256) = sink.finish().map_err(w)?.finish();
    out.flush().map_err(w)?;
    Ok((
        out,
        Summary {
            raw_bytes,
            stored_bytes,
            sha256,
            head,
        },
    ))
}

fn cancelled() -> StreamError {
    StreamError::Read(io::Error::new(io::ErrorKind::Interrupted, "cancelled"))
}

/// A zstd stream driven step by step, so a stop is seen between steps: the encoder's
/// own `finish` would wait for every worker job (at level 19 one job covers 8 MiB and
/// takes many seconds), and so would dropping it.
struct Zstd {
    enc: Option<zstd::stream::raw::Encoder<'static>>,
    out: Vec<u8>,
}

impl Zstd {
    fn new(level: i32) -> io::Result<Zstd> {
        use zstd::stream::raw::CParameter;
        let mut enc = zstd::stream::raw::Encoder::new(level)?;
        enc.set_parameter(CParameter::ChecksumFlag(true))?;
        enc.set_parameter(CParameter::NbWorkers(zstd_workers()))?;
        // A fixed job size rather than zstd's default (4 x window): each worker holds its
        // job's input and output, so this bounds memory at high levels, whose windows
        // are large (32 MiB jobs at level 19 by default).
        enc.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
        Ok(Zstd {
            enc: Some(enc),
            out: vec![0u8; zstd::zstd_safe::CCtx::out_size()],
        })
    }

    fn writer<'a>(
        &'a mut self,
        sink: &'a mut dyn Write,
        cancel: &'a tokio_util::sync::CancellationToken,
    ) -> ZstdWriter<'a> {
        ZstdWriter {
            z: self,
            sink,
            cancel,
        }
    }

    /// One step: feed what `input` has left, move what came out to `sink`.
    fn step(
        &mut self,
        input: Option<&mut zstd::stream::raw::InBuffer<'_>>,
        sink: &mut dyn Write,
    ) -> io::Result<usize> {
        use zstd::stream::raw::{Operation, OutBuffer};
        let enc = self
            .enc
            .as_mut()
            .ok_or_else(|| io::Error::other("zstd stream already abandoned"))?;
        let mut out = OutBuffer::around(&mut self.out[..]);
        let left = match input {
            Some(i) => enc.run(i, &mut out)?,
            None => enc.finish(&mut out, true)?,
        };
        sink.write_all(out.as_slice())?;
        Ok(left)
    }

    /// End the frame (checksum included), a step at a time.
    fn finish(
        &mut self,
        sink: &mut dyn Write,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> io::Result<()> {
        loop {
            if cancel.is_cancelled() {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
            }
            if self.step(None, sink)? == 0 {
                return Ok(());
            }
        }
    }

    /// Give up the stream without waiting: the workers' jobs cannot be interrupted, so
    /// the encoder is freed on a thread of its own once they end (the sink, which holds
    /// the temp files and uploads, is the caller's and goes at once).
    fn abandon(&mut self) {
        if let Some(enc) = self.enc.take() {
            let _ = std::thread::Builder::new()
                .name("zstd-free".into())
                .spawn(move || drop(enc));
        }
    }
}

/// The `Write` side of [`Zstd`] for the chunk pump.
struct ZstdWriter<'a> {
    z: &'a mut Zstd,
    sink: &'a mut dyn Write,
    cancel: &'a tokio_util::sync::CancellationToken,
}

impl Write for ZstdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut input = zstd::stream::raw::InBuffer::around(buf);
        while input.pos() < buf.len() {
            // Each step returns once a worker made progress (or the input was taken).
            if self.cancel.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            self.z.step(Some(&mut input), self.sink)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A decoder of stored bytes that can hand back its source (to read what follows).
pub enum Decoder<R: Read> {
    Zstd(zstd::stream::read::Decoder<'static, io::BufReader<R>>),
    Gzip(flate2::read::MultiGzDecoder<R>),
    None(R),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::None(r) => r.read(buf),
        }
    }
}

/// The decoder for a manifest's `codec`.
pub fn decoder_for<R: Read>(codec: &str, input: R) -> io::Result<Decoder<R>> {
    Ok(match codec {
        "zstd" => Decoder::Zstd(zstd::stream::read::Decoder::new(input)?),
        "gzip" => Decoder::Gzip(flate2::read::MultiGzDecoder::new(input)),
        "none" => Decoder::None(input),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown codec {other:?} in manifest"),
            ))
        }
    })
}

/// The source reader, positioned after what the decoder consumed (bytes it buffered
/// are dropped: callers hash below the decoder, so those were counted already).
pub fn into_inner<R: Read>(d: Decoder<R>) -> R {
    match d {
        Decoder::Zstd(d) => d.finish().into_inner(),
        Decoder::Gzip(d) => d.into_inner(),
        Decoder::None(r) => r,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_cancelled_stream_stops_between_chunks() {
        // An endless producer: only the cancellation can end it.
        struct Endless;
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(7);
                Ok(buf.len())
            }
        }
        let cancel = tokio_util::sync::CancellationToken::new();
        let stopper = cancel.clone();
        let t = std::thread::spawn(move || {
            compress(
                Endless,
                Compression::Zstd { level: 19 },
                &[],
                io::sink(),
                &cancel,
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        stopper.cancel();
        let r = t.join().unwrap();
        assert!(matches!(r, Err(StreamError::Read(e)) if e.kind() == io::ErrorKind::Interrupted));
    }
    use super::*;

    fn roundtrip(codec: Compression) {
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (stored, s) = compress(&data[..], codec, &[], Vec::new(), &Default::default()).unwrap();
        assert_eq!(s.raw_bytes, data.len() as u64);
        assert_eq!(s.stored_bytes, stored.len() as u64);
        assert_eq!(s.sha256, hex::encode(Sha256::digest(&stored)));
        assert_eq!(s.head, data[..HEAD_LEN]);
        let mut back = Vec::new();
        decoder_for(codec.name(), &stored[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn zstd_roundtrip() {
        roundtrip(Compression::Zstd { level: 3 });
    }

    #[test]
    fn gzip_roundtrip() {
        roundtrip(Compression::Gzip { level: 6 });
    }

    #[test]
    fn none_roundtrip() {
        roundtrip(Compression::None);
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("source gone"))
        }
    }

    #[test]
    fn read_and_write_failures_are_told_apart() {
        let data = vec![1u8; 4 * CHUNK];
        for codec in [Compression::None, Compression::Zstd { level: 3 }] {
            assert!(matches!(
                compress(&data[..], codec, &[], Failing, &Default::default()),
                Err(StreamError::Write(e)) if e.raw_os_error() == Some(libc::ENOSPC)
            ));
            assert!(matches!(
                compress(Broken, codec, &[], Vec::new(), &Default::default()),
                Err(StreamError::Read(_))
            ));
        }
    }
}
