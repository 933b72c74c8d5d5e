//! The body of a file response: pieces of one open file, with literal bytes between them
//! (the part headers of a `multipart/byteranges` body). What the page cache holds is
//! read in place; a read that would wait for the disk goes to a blocking thread, so that
//! it never holds up the connections that share the thread. On a plain HTTP/1
//! connection a large piece is not read at all: it is mapped, and the connection sends
//! it from the file with sendfile(2) (see [`crate::front::conn::mapped`]).

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
use tracing::debug;

use crate::front::conn::mapped::MappedFiles;

/// The most read from the file at once.
const CHUNK: u64 = 256 * 1024;
/// Reads up to this size are done in place whatever the page cache holds.
pub const INLINE_READ: usize = 64 * 1024;
/// File pieces from this size on are mapped and sent with sendfile(2) where the
/// connection can; smaller ones cost less read (one copy of a few pages).
const MAPPED_FROM: u64 = 64 * 1024;
/// The most of a file mapped at once (address space only: nothing is read into it).
const MAP_WINDOW: u64 = 64 * 1024 * 1024;

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
    /// The open file, read piece by piece (or mapped).
    File(Arc<File>),
    /// The whole file, already in memory (a small file read recently).
    Memory(Bytes),
}

/// A body read from a file, piece by piece.
pub struct FileBody {
    file: Arc<Source>,
    segments: VecDeque<Segment>,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    remaining: u64,
    /// Where large pieces are mapped for the connection to send, when it can.
    mapped: Option<Arc<MappedFiles>>,
    /// What is left of the current piece's mapping, handed out a chunk at a time.
    window: Bytes,
}

impl FileBody {
    /// A body of these pieces of `file`; `mapped`: where the connection finds the
    /// pieces to send with sendfile(2), if it can.
    pub fn new(file: Source, segments: Vec<Segment>, mapped: Option<Arc<MappedFiles>>) -> FileBody {
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
            mapped,
            window: Bytes::new(),
        }
    }

    /// The next chunk of the file piece at `offset`, `length` long, as bytes of a
    /// mapping, if the piece is large and the connection sends mapped files. None: read
    /// it (a mapping that fails is not tried again for this body).
    fn mapped_chunk(&mut self, offset: u64, length: u64) -> Option<Bytes> {
        if self.window.is_empty() {
            let mapped = self.mapped.as_ref()?;
            let Source::File(file) = &*self.file else {
                return None;
            };
            if length < MAPPED_FROM {
                return None;
            }
            // The window ends with the piece (or earlier): a chunk never spans two.
            let len = usize::try_from(length.min(MAP_WINDOW)).ok()?;
            match mapped.map(file, offset, len) {
                Ok(window) => self.window = window,
                Err(err) => {
                    debug!("cannot map a file to send it, reading it instead: {err}");
                    self.mapped = None;
                    return None;
                }
            }
        }
        // Chunks as reads make: the access log counts a body as it is handed over.
        let chunk = self.window.len().min(CHUNK as usize);
        Some(self.window.split_to(chunk))
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
                    if let Some(chunk) = this.mapped_chunk(offset, length) {
                        return Poll::Ready(Some(this.deliver(Ok(chunk))));
                    }
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

    /// A file of 600 000 bytes that are not all alike, and its content.
    fn numbered_file() -> (Source, Vec<u8>) {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        (Source::File(Arc::new(file)), content)
    }

    /// "<", 500 000 bytes of the file from 10, ">", then `length` bytes from `offset`.
    fn bracketed(offset: u64, length: u64) -> Vec<Segment> {
        vec![
            Segment::Bytes(Bytes::from_static(b"<")),
            Segment::File {
                offset: 10,
                length: 500_000,
            },
            Segment::Bytes(Bytes::from_static(b">")),
            Segment::File { offset, length },
        ]
    }

    #[tokio::test]
    async fn pieces_in_order() {
        let (file, content) = numbered_file();
        let body = FileBody::new(file, bracketed(0, 0), None);
        assert_eq!(body.size_hint().exact(), Some(500_002));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 500_002);
        assert_eq!(&all[1..500_001], &content[10..500_010]);
        assert_eq!((all[0], all[500_001]), (b'<', b'>'));
    }

    #[tokio::test]
    async fn large_pieces_are_mapped_small_ones_read_and_all_unmapped_after() {
        let (file, content) = numbered_file();
        let mapped = Arc::new(MappedFiles::default());
        mapped.enable();
        let mut body = FileBody::new(file, bracketed(7, 100), Some(mapped.clone()));
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        let is_mapped = |b: &Bytes| mapped.find(&[std::io::IoSlice::new(b)]).is_some();
        // "<", the large piece in two chunks, ">", the small piece.
        assert_eq!(frames.len(), 5);
        assert!(is_mapped(&frames[1]) && is_mapped(&frames[2]));
        assert!(!is_mapped(&frames[4]));
        assert_eq!(frames[1].len() + frames[2].len(), 500_000);
        assert!(frames[1..3].concat() == content[10..500_010]);
        assert!(frames[4] == content[7..107]);
        drop(frames);
        drop(body);
        assert!(mapped.is_empty(), "a mapping outlived its bytes");
    }

    #[tokio::test]
    async fn a_shrunk_file_is_an_error() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"short").unwrap();
        let body = FileBody::new(
            Source::File(Arc::new(file)),
            vec![Segment::File {
                offset: 0,
                length: 100,
            }],
            None,
        );
        assert!(body.collect().await.is_err());
    }
}
