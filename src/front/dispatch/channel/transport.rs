//! How frames cross one worker's channel, for its reader and writer tasks: over the
//! Unix socket, or through the shared-memory rings (`protocol::ring`) with the socket
//! kept for doorbells and for telling when the worker is gone. Nothing here knows of
//! streams or requests; it must never trust a byte the worker wrote (the rings' checks
//! and the decoder do the judging) nor wait on a worker except through the reactor.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::WorkerConn;
use crate::protocol::ring::RingMap;
use crate::protocol::{Decoder, Frame, HEADER_LEN, Kind, ProtocolError, encode_frame_header};

/// How long the writer waits for room in a full ring before it looks again, at most:
/// a worker leaves its requests unread only while it is busy with one.
const ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Pushes `bytes` into the worker's ring, as much at a time as there is room, and rings
/// the worker's doorbell when it sleeps. A full ring is waited out (the worker reads
/// its requests in its own time); a closed channel or a corrupt ring ends the writer.
pub(super) async fn push_all(
    ring: &RingMap,
    socket: &UnixStream,
    mut bytes: &[u8],
    conn: &WorkerConn,
) -> std::io::Result<()> {
    let ring = ring.to_worker();
    let mut wait = std::time::Duration::from_millis(1);
    while !bytes.is_empty() {
        let pushed = ring.push_partial(bytes).map_err(std::io::Error::other)?;
        if pushed > 0 {
            bytes = &bytes[pushed..];
            wait = std::time::Duration::from_millis(1);
            if ring.take_parked() {
                ring_doorbell(socket)?;
            }
            continue;
        }
        if conn.outbox().closed {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        // Said in the ring: the worker rings the doorbell once it has made room, and the
        // reader passes the word on. A while later the writer looks again regardless.
        let needed = bytes.len().min(ring.capacity());
        // Said before the ring is asked, so that the doorbell it leads to finds it said.
        conn.room_wanted.store(true, Ordering::SeqCst);
        if ring.wait_for_room(needed).map_err(std::io::Error::other)? {
            let _ = tokio::time::timeout(wait, conn.outbox_ready.notified()).await;
            wait = (wait * 2).min(ROOM_WAIT);
        }
        conn.room_wanted.store(false, Ordering::SeqCst);
    }
    Ok(())
}

/// Rings a worker's doorbell: one byte on its socket. A full socket buffer already
/// holds doorbells the worker has yet to read, so that is no error.
pub(super) fn ring_doorbell(socket: &UnixStream) -> std::io::Result<()> {
    match socket.try_write(b"!") {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(err) => Err(err),
    }
}

/// Sends the [`Kind::Ring`] frame with the rings' descriptor: the first bytes the
/// front tier writes on a channel whose worker asked for rings.
pub(in crate::front) async fn send_ring(
    socket: &UnixStream,
    fd: &std::os::fd::OwnedFd,
) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, sendmsg};
    let mut frame = Vec::with_capacity(HEADER_LEN);
    encode_frame_header(&mut frame, Kind::Ring, 0, 0);
    let fds = [fd.as_raw_fd()];
    loop {
        socket.writable().await?;
        let sent = socket.try_io(Interest::WRITABLE, || {
            let iov = [std::io::IoSlice::new(&frame)];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                socket.as_raw_fd(),
                &iov,
                &cmsg,
                nix::sys::socket::MsgFlags::empty(),
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(n) if n == HEADER_LEN => return Ok(()),
            Ok(_) => return Err(std::io::ErrorKind::WriteZero.into()),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}

pub(super) async fn write_all(socket: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// [`read_frame`] for a channel with rings: frames come from the worker's ring, and
/// the reader sleeps on the socket only after saying so in the ring (`park`), so that
/// a worker rings the doorbell only then. The reader passes a doorbell on to `conn`'s
/// writer when it waits for room. Under load the ring is read again after the
/// shard's other tasks had their turn, often without any wake-up. `Ok(None)` when the
/// worker closed its socket.
pub(in crate::front) async fn read_ring_frame(
    reader: &UnixStream,
    ring: &RingMap,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    conn: &WorkerConn,
) -> Result<Option<Frame>, ProtocolError> {
    let ring = ring.to_front();
    let corrupt = |_| ProtocolError::Invalid("a corrupt shared-memory ring");
    let mut yielded = 0;
    // The worker closed its socket: what it pushed before is still read, then the end.
    let mut closed = false;
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return Ok(Some(frame));
        }
        if ring.pop_into(buf, RING_READ).map_err(corrupt)? > 0 {
            yielded = 0;
            continue;
        }
        if closed {
            return Ok(None);
        }
        if yielded < RING_YIELDS {
            yielded += 1;
            tokio::task::yield_now().await;
            continue;
        }
        if ring.park().map_err(corrupt)? {
            let woken = reader.readable().await;
            ring.unpark();
            if woken.is_err() {
                closed = true;
                continue;
            }
            closed = drain_doorbells(reader);
            // A doorbell may also say that the worker made room in its requests' ring;
            // the writer is woken for it only when it waits for room (a wake-up of the
            // writer task per response otherwise, for nothing).
            if conn.room_wanted.load(Ordering::SeqCst) {
                conn.outbox_ready.notify_one();
            }
        }
        yielded = 0;
    }
}

/// Reads the doorbell bytes the worker wrote (their value means nothing); true if the
/// worker closed its socket. A short read has drained the socket ([`recv_once`]): no
/// second read only to be told EAGAIN, once per wake-up.
fn drain_doorbells(reader: &UnixStream) -> bool {
    let mut doorbells = [std::mem::MaybeUninit::<u8>::uninit(); 256];
    loop {
        match recv_once(reader, &mut doorbells) {
            Ok(0) => return true,
            Ok(n) if n < doorbells.len() => return false,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// How often the reader lets the shard's other tasks run before it sleeps on an empty
/// ring: a worker about to answer often does so meanwhile, sparing both doorbells.
const RING_YIELDS: usize = 1;

/// The most read from a worker's ring at a time.
const RING_READ: usize = 256 * 1024;

/// Reads until one whole frame is buffered; `Ok(None)` at a clean end of the channel.
pub(in crate::front) async fn read_frame(
    reader: &UnixStream,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, ProtocolError> {
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return Ok(Some(frame));
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match read_some(reader, buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// One read of the channel into `buf`'s spare capacity, waiting for it; a short read
/// clears readiness ([`recv_once`]), sparing a syscall per response.
async fn read_some(reader: &UnixStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    loop {
        reader.readable().await?;
        match recv_once(reader, buf.spare_capacity_mut()) {
            Ok(got) => {
                // SAFETY: recv initialised the first `got` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + got) };
                return Ok(got);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

/// One `recv` into `into`, without waiting: the bytes read (0 at the end of the
/// stream), or WouldBlock when there were none. A read that leaves room in `into` has
/// drained the socket, so tokio's readiness is cleared then and there: the next wait
/// goes straight to the reactor, sparing the read that would only say EAGAIN.
fn recv_once(
    reader: &UnixStream,
    into: &mut [std::mem::MaybeUninit<u8>],
) -> std::io::Result<usize> {
    let room = into.len();
    let mut got = 0;
    let read = reader.try_io(Interest::READABLE, || {
        // SAFETY: recv writes at most `room` bytes into `into`, which is valid for
        // writes of that many.
        let n = unsafe { libc::recv(reader.as_raw_fd(), into.as_mut_ptr().cast(), room, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        got = n as usize;
        if got > 0 && got < room {
            // Returning WouldBlock is what makes tokio clear the readiness.
            Err(std::io::ErrorKind::WouldBlock.into())
        } else {
            Ok(got)
        }
    });
    match read {
        Err(_) if got > 0 => Ok(got),
        read => read,
    }
}
