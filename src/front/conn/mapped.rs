//! Files sent with sendfile(2) on plain connections: the kernel hands the page cache's
//! pages to the socket, where writing a body would copy each byte twice (read from the
//! file into memory, then from memory into the socket's buffers).
//!
//! hyper writes bodies, it cannot send files. But on a socket that writes vectored, its
//! HTTP/1 writer hands each body chunk to the connection untouched, as one slice of a
//! `writev`. So a file range of a static response on a plain HTTP/1 connection becomes
//! a [`Bytes`] over a read-only `mmap` of that range, recorded here (its address range →
//! the open file and offset); the guard, about to write, finds which slices lie in a
//! recorded mapping and sends those with sendfile(2) from the file instead. The slices
//! before them (the response head) go with `MSG_MORE`, to share a packet with the
//! file's first bytes, as nginx's `tcp_nopush` has them: sent alone, each head was a
//! packet of its own, and the client spent a third more CPU per megabyte received
//! (wrk, measured: bench/README.md).
//!
//! Nothing in the front tier reads the mapped memory: the body only slices the
//! `Bytes`, the access log and metrics read its length, hyper queues it as it is, and
//! the guard passes the file and offset to the kernel, which reads the page cache, not
//! the mapping. That matters: code reading a mapping past the end of a file truncated
//! meanwhile gets SIGBUS, which would end the front tier. A file that shrinks while it
//! is sent makes sendfile stop short (0 bytes at the new end): [`send`] turns that into
//! an error, and hyper closes the connection before the promised length, as when a body
//! read from a shrinking file fails (never a hang). Were a slice ever written without
//! passing the guard, `writev` would copy from the mapping inside the kernel: the
//! file's bytes, or past a new end an error (EFAULT, not a signal).
//!
//! As with nginx's sendfile, bytes handed to the socket still refer to the page cache
//! until they are transmitted: a file rewritten or truncated in place meanwhile may
//! reach the client changed (a truncation zeroes what the pages it keeps held past the
//! new end). Deployments replace files by renaming a new one into place, which leaves the
//! old file's pages as they were.
//!
//! Not for TLS or HTTP/2: rustls encrypts every byte and h2 copies the start of each
//! DATA frame into its buffer, both reading in the front tier what they send, so their
//! file bodies are read into memory as before. It must never record a mapping for a
//! response that anything but the guard's sendfile(2) would read.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// The most one sendfile(2) call moves (Linux's limit for one transfer).
const MAX_SEND: usize = 0x7fff_f000;

/// The file ranges mapped for one connection's responses, by address.
#[derive(Default)]
pub struct MappedFiles {
    /// Set once the connection's socket is known to send files (plain, write-vectored).
    enabled: AtomicBool,
    /// How many ranges are recorded: none (most writes) needs no lock.
    live: AtomicUsize,
    ranges: Mutex<Vec<Range>>,
}

/// One mapping: its addresses and what they show.
struct Range {
    start: usize,
    len: usize,
    file: Arc<File>,
    /// The file offset at `start`.
    offset: u64,
}

/// Slices of a write that are bytes of a file: the first `count` slices from `index`
/// on, contiguous, `len` bytes of `file` at `offset`.
pub struct FileSlices {
    pub index: usize,
    pub count: usize,
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
}

impl MappedFiles {
    /// The connection's socket can send files: responses may map theirs.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Whether responses on this connection may map their files.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// `len` bytes of `file` from `offset`, as bytes of a read-only mapping recorded
    /// for the connection's guard to send with sendfile(2). The mapping is undone when
    /// the last slice of the returned bytes is dropped.
    pub fn map(self: &Arc<Self>, file: &Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
        // mmap wants a page-aligned offset: the mapping starts at the page holding
        // `offset`, and the bytes returned skip what comes before it.
        let page = page_size();
        let skip = (offset % page as u64) as usize;
        let start_offset = offset - skip as u64;
        let map_len = len
            .checked_add(skip)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let at = libc::off_t::try_from(start_offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh read-only shared mapping chosen by the kernel (no address
        // given), of an open descriptor; nothing else owns those addresses.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                at,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = addr as usize;
        {
            let mut ranges = crate::lock::lock(&self.ranges);
            ranges.push(Range {
                start,
                len: map_len,
                file: file.clone(),
                offset: start_offset,
            });
            self.live.store(ranges.len(), Ordering::Release);
        }
        let mapping = Mapping {
            start,
            len: map_len,
            files: self.clone(),
        };
        Ok(Bytes::from_owner(mapping).slice(skip..))
    }

    /// The first run of `bufs` that lies in recorded mappings of one file, contiguous
    /// (hyper queues consecutive chunks of one response), if any.
    pub fn find(&self, bufs: &[IoSlice<'_>]) -> Option<FileSlices> {
        if self.live.load(Ordering::Acquire) == 0 {
            return None;
        }
        let ranges = crate::lock::lock(&self.ranges);
        let within = |buf: &IoSlice<'_>| {
            let at = buf.as_ptr() as usize;
            ranges
                .iter()
                .find(|r| !buf.is_empty() && at >= r.start && at + buf.len() <= r.start + r.len)
                .map(|r| (r, at))
        };
        let (index, (range, at)) = bufs
            .iter()
            .enumerate()
            .find_map(|(i, buf)| within(buf).map(|found| (i, found)))?;
        let mut len = bufs[index].len();
        let mut count = 1;
        for buf in &bufs[index + 1..] {
            let follows = buf.as_ptr() as usize == at + len
                && at + len + buf.len() <= range.start + range.len;
            if !follows || buf.is_empty() {
                break;
            }
            len += buf.len();
            count += 1;
        }
        Some(FileSlices {
            index,
            count,
            file: range.file.clone(),
            offset: range.offset + (at - range.start) as u64,
            len,
        })
    }

    /// Whether no mapping is recorded.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }

    fn forget(&self, start: usize) {
        let mut ranges = crate::lock::lock(&self.ranges);
        ranges.retain(|r| r.start != start);
        self.live.store(ranges.len(), Ordering::Release);
    }
}

/// The owner of a mapping's memory, inside the [`Bytes`] that show it.
struct Mapping {
    start: usize,
    len: usize,
    files: Arc<MappedFiles>,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `start..start + len` is a readable mapping for as long as `self` lives
        // (unmapped only in its drop). Making the slice reads nothing (see the module's
        // note on SIGBUS).
        unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Forgotten before it is unmapped: a range the guard finds is always mapped.
        self.files.forget(self.start);
        // SAFETY: the mapping made in `map`, with its length; no slice of it outlives
        // this owner (the Bytes that showed it are gone).
        unsafe { libc::munmap(self.start as *mut libc::c_void, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// A connection socket that sendfile(2) can write to, or not (the defaults).
pub trait SendFile {
    /// Whether it can (a plain socket, not TLS).
    const CAN_SEND_FILES: bool = false;

    /// Sends up to `len` bytes of `file` from `offset`, when the socket is writable.
    fn poll_send_file(
        &self,
        _cx: &mut Context<'_>,
        _file: &File,
        _offset: u64,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        // Never called where it cannot: no mapping is recorded on such a connection.
        Poll::Ready(Err(io::Error::from(io::ErrorKind::Unsupported)))
    }

    /// The socket's descriptor if it is a TCP socket's (see [`super::last`]).
    fn tcp_fd(&self) -> Option<RawFd> {
        None
    }

    /// Writes `bufs`, which more bytes follow at once (a file's): the kernel may hold
    /// them back to fill a packet with what follows (`MSG_MORE`: they go at the latest
    /// with the next send that says no more).
    fn poll_write_more(
        &self,
        _cx: &mut Context<'_>,
        _bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::Error::from(io::ErrorKind::Unsupported)))
    }
}

/// Waits for write readiness (`ready`), then tries `send`; a send that would block
/// clears the readiness (tokio's `try_io` does) and waits again, as tokio's own writes
/// do.
fn poll_ready_send(
    cx: &mut Context<'_>,
    mut ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut send: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(ready(cx))?;
        match send() {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            sent => return Poll::Ready(sent),
        }
    }
}

/// A tokio socket sends a file when it is writable, as its own writes do.
macro_rules! socket_sends_files {
    ($($socket:ty: tcp $tcp:expr),*) => {$(
        impl SendFile for $socket {
            const CAN_SEND_FILES: bool = true;

            fn tcp_fd(&self) -> Option<RawFd> {
                $tcp.then(|| self.as_raw_fd())
            }

            fn poll_send_file(
                &self,
                cx: &mut Context<'_>,
                file: &File,
                offset: u64,
                len: usize,
            ) -> Poll<io::Result<usize>> {
                poll_ready_send(
                    cx,
                    |cx| self.poll_write_ready(cx),
                    || self.try_io(Interest::WRITABLE, || send(self.as_fd(), file, offset, len)),
                )
            }

            fn poll_write_more(
                &self,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                poll_ready_send(
                    cx,
                    |cx| self.poll_write_ready(cx),
                    || self.try_io(Interest::WRITABLE, || send_more(self.as_fd(), bufs)),
                )
            }
        }
    )*};
}

socket_sends_files!(TcpStream: tcp true, UnixStream: tcp false);

/// TLS encrypts in the front tier: its records are written, not its files sent.
impl<S> SendFile for tokio_rustls::server::TlsStream<S> {}

/// One sendfile(2) of up to `len` bytes of `file` at `offset` to `socket`. Nothing sent
/// although the socket took no error means the file ends before `offset + len`: it
/// shrank since it was opened, and the response cannot be completed.
pub fn send(socket: BorrowedFd<'_>, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut at =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len = len.min(MAX_SEND);
    loop {
        // SAFETY: both descriptors are open for the call (`socket` borrowed, `file`
        // owned by the caller), `at` is a valid offset the call may update.
        let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut at, len) };
        match sent {
            0 if len > 0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file became shorter while being sent",
                ));
            }
            n if n >= 0 => return Ok(n as usize),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// One `sendmsg` of `bufs` with `MSG_MORE`: the kernel may wait for the bytes sent next
/// to fill a packet with them (it sends at once when the next send says no more).
fn send_more(socket: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let count = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: msghdr is plain data, for which all zeroes is valid (no name, no control
    // message).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is an iovec on Unix (the standard library guarantees the layout).
    message.msg_iov = bufs.as_ptr().cast_mut().cast();
    message.msg_iovlen = count;
    loop {
        // SAFETY: the descriptor is open for the call; the message points at `count`
        // iovecs, each over a slice borrowed for the call, which sendmsg only reads.
        let sent = unsafe {
            libc::sendmsg(
                socket.as_raw_fd(),
                &message,
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A temporary file holding `content` (the guard's tests send from it too).
    pub(in crate::front::conn) fn file_of(content: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        Arc::new(file)
    }

    #[test]
    fn mapped_bytes_are_found_with_their_offsets_and_forgotten_when_dropped() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let file = file_of(&content);
        let files = Arc::new(MappedFiles::default());
        // An offset off a page boundary.
        let bytes = files.map(&file, 5000, 200_000).unwrap();
        assert_eq!(bytes.len(), 200_000);
        let (first, second) = (bytes.slice(..70_000), bytes.slice(70_000..));
        let other = [7u8; 100];
        {
            let bufs = [
                IoSlice::new(&other),
                IoSlice::new(&first),
                IoSlice::new(&second),
                IoSlice::new(&other),
            ];
            let found = files.find(&bufs).unwrap();
            assert_eq!((found.index, found.count), (1, 2));
            assert_eq!((found.offset, found.len), (5000, 200_000));
            assert!(files.find(&bufs[..1]).is_none());
            let later = files.find(&bufs[2..]).unwrap();
            assert_eq!((later.index, later.offset, later.len), (0, 75_000, 130_000));
        }
        drop(bytes);
        drop(first);
        assert_eq!(
            files.live.load(Ordering::Acquire),
            1,
            "a slice still shows it"
        );
        drop(second);
        assert_eq!(files.live.load(Ordering::Acquire), 0);
    }

    #[test]
    fn sendfile_sends_the_range_and_fails_past_the_end() {
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let file = file_of(&content);
        let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let sent = send(writer.as_fd(), &file, 10, 1000).unwrap();
        assert_eq!(sent, 1000);
        let mut got = vec![0; sent];
        reader.read_exact(&mut got).unwrap();
        assert!(got == content[10..1010]);
        let past = send(writer.as_fd(), &file, 100_000, 10).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
    }
}
