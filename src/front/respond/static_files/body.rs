//! The body of a file response: pieces of one open file, with literal bytes between them
//! (the part headers of a `multipart/byteranges` body). What the page cache holds is
//! read in place; a read that would wait for the disk goes to a blocking thread, so that
//! it never holds up the connections that share the thread.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// The most read from the file at once.
const CHUNK: u64 = 256 * 1024;
/// Reads up to this size are done in place whatever the page cache holds.
pub const INLINE_READ: usize = 64 * 1024;

/// One piece of the body.
pub enum Segment {
    /// Bytes made up front.
    Bytes(Bytes),
    /// `length` bytes of the file from `offset`.
    File { offset: u64, length: u64 },
}

/// Where a file's bytes come from.
#[derive(Debug)]
pub enum Source {
    /// The open file, read piece by piece.
    File(File),
    /// The whole file, already in memory (a small file read recently).
    Memory(Bytes),
}

/// A body read from a file, piece by piece.
pub struct FileBody {
    file: Arc<Source>,
    segments: VecDeque<Segment>,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    remaining: u64,
}

impl FileBody {
    /// A body of these pieces of `file`.
    pub fn new(file: Source, segments: Vec<Segment>) -> FileBody {
        let remaining = segments
            .iter()
            .map(|s| match s {
                Segment::Bytes(b) => b.len() as u64,
                Segment::File { length, .. } => *length,
            })
            .sum();
        FileBody {
            file: Arc::new(file),
            segments: segments.into(),
            reading: None,
            remaining,
        }
    }
}

impl FileBody {
    /// Accounts for the bytes a read produced and makes them the next frame.
    fn deliver(&mut self, read: io::Result<Bytes>) -> Result<Frame<Bytes>, io::Error> {
        let data = match read {
            Ok(data) if data.is_empty() => {
                // The file shrank under us: the promised length cannot be met.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file became shorter while being sent",
                ));
            }
            Ok(data) => data,
            Err(err) => return Err(err),
        };
        if let Some(Segment::File { offset, length }) = self.segments.front_mut() {
            *offset += data.len() as u64;
            *length -= data.len() as u64;
            if *length == 0 {
                self.segments.pop_front();
            }
        }
        self.remaining -= data.len() as u64;
        Ok(Frame::data(data))
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(reading) = &mut this.reading {
                let read = match Pin::new(reading).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(read)) => read,
                    Poll::Ready(Err(join)) => Err(io::Error::other(join)),
                };
                this.reading = None;
                return Poll::Ready(Some(this.deliver(read)));
            }
            match this.segments.front() {
                None => return Poll::Ready(None),
                Some(Segment::Bytes(_)) => {
                    if let Some(Segment::Bytes(bytes)) = this.segments.pop_front() {
                        this.remaining -= bytes.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Some(Segment::File { length: 0, .. }) => {
                    this.segments.pop_front();
                }
                Some(&Segment::File { offset, length }) => {
                    let want = length.min(CHUNK) as usize;
                    if want <= INLINE_READ || matches!(*this.file, Source::Memory(_)) {
                        // A small read from the page cache costs less than a trip to a
                        // blocking thread and back (nginx reads in its event loop too).
                        let read = read_at(&this.file, offset, want);
                        return Poll::Ready(Some(this.deliver(read)));
                    }
                    // What the page cache holds is read in place too, as nginx reads in
                    // its event loop; only a read that would wait for the disk goes to a
                    // blocking thread (each trip there and back cost two context
                    // switches, four per megabyte).
                    if let Source::File(file) = &*this.file
                        && let Some(read) = read_cached(file, offset, want).transpose()
                    {
                        return Poll::Ready(Some(this.deliver(read)));
                    }
                    let file = this.file.clone();
                    this.reading = Some(tokio::task::spawn_blocking(move || {
                        read_at(&file, offset, want)
                    }));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Up to `want` bytes at `offset`; fewer only at the end of the file.
fn read_at(source: &Source, offset: u64, want: usize) -> io::Result<Bytes> {
    match source {
        Source::File(file) => read_file_at(file, offset, want),
        Source::Memory(bytes) => {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = start.saturating_add(want).min(bytes.len());
            Ok(bytes.slice(start..end))
        }
    }
}

/// Up to `want` bytes at `offset` if the page cache holds them (`preadv2` with
/// `RWF_NOWAIT`, Linux 4.14): `Ok(None)` when the read would wait for the disk, or the
/// kernel or file system cannot say, or at the end of the file (the caller then reads
/// the usual way). Fewer bytes when only some are cached.
fn read_cached(file: &File, offset: u64, want: usize) -> io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd;
    let Ok(at) = libc::off_t::try_from(offset) else {
        return Ok(None);
    };
    let mut buf = BytesMut::with_capacity(want);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len().min(want),
    };
    // SAFETY: the iovec points at `buf`'s spare capacity, valid for writes of its length
    // for the duration of the call; the descriptor belongs to the open file.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
    if n == 0 {
        return Ok(None);
    }
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::EINTR) => {
                Ok(None)
            }
            _ => Err(err),
        };
    }
    // SAFETY: preadv2 initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(n as usize) };
    Ok(Some(buf.freeze()))
}

/// Reads up to `want` bytes at `offset`; fewer only at the end of the file.
pub fn read_file_at(file: &File, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    #[test]
    fn cached_reads_give_the_file_bytes_and_none_at_the_end() {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        file.write_all(&content).unwrap();
        // Just written: in the page cache.
        let mut got = Vec::new();
        while let Some(piece) = read_cached(&file, got.len() as u64, 128 * 1024).unwrap() {
            assert!(!piece.is_empty());
            got.extend_from_slice(&piece);
        }
        assert!(got == content, "the bytes read differ from the file's");
        assert!(
            read_cached(&file, content.len() as u64, 10)
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn pieces_in_order() {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        let body = FileBody::new(
            Source::File(file),
            vec![
                Segment::Bytes(Bytes::from_static(b"<")),
                Segment::File {
                    offset: 10,
                    length: 500_000,
                },
                Segment::Bytes(Bytes::from_static(b">")),
                Segment::File {
                    offset: 0,
                    length: 0,
                },
            ],
        );
        assert_eq!(body.size_hint().exact(), Some(500_002));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 500_002);
        assert_eq!(&all[1..500_001], &content[10..500_010]);
        assert_eq!((all[0], all[500_001]), (b'<', b'>'));
    }

    #[tokio::test]
    async fn a_shrunk_file_is_an_error() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"short").unwrap();
        let body = FileBody::new(
            Source::File(file),
            vec![Segment::File {
                offset: 0,
                length: 100,
            }],
        );
        assert!(body.collect().await.is_err());
    }
}
