//! The front tier's side of the control socket: receiving each new worker's channel
//! from the master (SCM_RIGHTS), the master's requests to reload the TLS certificates
//! and word of workers (or requests) it timed out; and telling the master when a
//! worker is ready. The master's side is `master::control`.
//!
//! Here too each worker's life in the front tier ([`start`]): its Hello, its place in
//! the pool, the task reading its channel, its leaving. Above both `channel` and
//! `pool`, so that neither imports the other's caller.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use bytes::BytesMut;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::channel::WorkerConn;
use super::channel::transport::{read_frame, read_ring_frame, send_ring};
use super::pool::Pool;
use crate::protocol::control::{AddWorker, MESSAGE_LEN, Message};
use crate::protocol::ring::RingMap;
use crate::protocol::{Decoder, Hello, Kind, ProtocolError};
use crate::scoreboard;

/// The front tier's way back to the master over the control socket.
#[derive(Clone)]
pub struct Reporter(Arc<OwnedFd>);

impl Reporter {
    /// Tells the master that worker `id` said Hello and takes requests.
    pub fn worker_ready(&self, id: u32, pid: u32) {
        let message = Message::WorkerReady(AddWorker { id, pid }).encode();
        // A message is 12 bytes and the master reads them at every pass of its loop, so a
        // full socket means the master is gone (its death is handled on its own).
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        if let Err(err) = send(self.0.as_raw_fd(), &message, flags) {
            debug!("cannot tell the master that worker {id} is ready: {err}");
        }
    }
}

/// Receives workers until the master closes the control socket (the master is gone);
/// a reload request wakes `reload`; word that a new master takes over sets `replaced`.
pub async fn receive(
    control: OwnedFd,
    pool: Arc<Pool>,
    shards: Vec<tokio::runtime::Handle>,
    reload: Arc<Notify>,
    ring_size: usize,
    replaced: Arc<std::sync::atomic::AtomicBool>,
) {
    let reporter = match control.try_clone() {
        Ok(fd) => Reporter(Arc::new(fd)),
        Err(err) => return warn!("cannot share the control socket: {err}"),
    };
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same
    // for the AsyncFd's whole life.
    let registered = unsafe { AsyncFd::register_with_interest(control, Interest::READABLE) };
    let control = match registered.map_err(|e| e.into_parts().1) {
        Ok(fd) => fd,
        Err(err) => return warn!("cannot watch the control socket: {err}"),
    };
    loop {
        let received = control
            .async_io(Interest::READABLE, |fd| {
                let mut message = [0u8; MESSAGE_LEN];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [IoSliceMut::new(&mut message)];
                let msg = recvmsg::<()>(
                    fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just installed these descriptors for us; each
                        // is owned by nothing else in this process.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                Ok((msg.bytes, message, fds))
            })
            .await;
        let (length, message, mut fds) = match received {
            Ok(received) => received,
            Err(err) => return warn!("control socket failed: {err}"),
        };
        if length == 0 {
            return; // The master closed its end.
        }
        let message = Message::decode(message.get(..length).unwrap_or(&[]));
        match message {
            Some(Message::ReloadTls) if fds.is_empty() => {
                reload.notify_one();
                continue;
            }
            Some(Message::Replaced) if fds.is_empty() => {
                // The coming stop is a restart: its WebSockets close with 1012.
                replaced.store(true, std::sync::atomic::Ordering::Release);
                continue;
            }
            Some(Message::StreamsTimedOut(worker)) if fds.is_empty() => {
                // Out of the pool (it is retiring); its other requests go on.
                if let Some(conn) = pool.timed_out(worker.id, worker.pid) {
                    conn.time_out_streams(&scoreboard::timed_out_streams(worker.pid));
                }
                continue;
            }
            Some(Message::WorkerTimedOut(worker)) if fds.is_empty() => {
                // Its channel may be gone already (then its requests were answered).
                if let Some(conn) = pool.timed_out(worker.id, worker.pid) {
                    conn.time_out();
                }
                continue;
            }
            _ => {}
        }
        let (Some(Message::AddWorker(worker)), Some(fd), true) =
            (message, fds.pop(), fds.is_empty())
        else {
            warn!("ignoring a malformed control message ({length} bytes)");
            continue;
        };
        let stream = std::os::unix::net::UnixStream::from(fd);
        let shard = pool.assign_shard();
        let Some(runtime) = shards.get(shard).or(shards.first()) else {
            return warn!("the front tier has no runtime for worker {}", worker.id);
        };
        start(
            worker.id,
            (shard, runtime),
            stream,
            pool.clone(),
            reporter.clone(),
            ring_size,
        );
    }
}

/// Takes over a worker's channel on shard `shard` (from [`Pool::assign_shard`]): waits
/// for its Hello, adds it to the pool (and tells the master), then routes its frames
/// until the channel closes.
pub fn start(
    id: u32,
    (shard, runtime): (usize, &tokio::runtime::Handle),
    stream: std::os::unix::net::UnixStream,
    pool: Arc<Pool>,
    reporter: Reporter,
    ring_size: usize,
) {
    // Registered with the shard's own reactor, so that its thread alone reads it.
    let _entered = runtime.enter();
    let stream = match stream
        .set_nonblocking(true)
        .and_then(|_| UnixStream::from_std(stream))
    {
        Ok(stream) => stream,
        Err(err) => {
            pool.unassign_shard(shard);
            return warn!("cannot use worker {id}'s channel: {err}");
        }
    };
    tokio::spawn(async move {
        let socket = Arc::new(stream);
        let reader = socket.clone();
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let hello = match read_frame(&reader, &mut decoder, &mut buf).await {
            Ok(Some(frame)) if frame.kind == Kind::Hello => Hello::decode(frame.payload),
            Ok(Some(_)) => Err(ProtocolError::Invalid("first frame is not Hello")),
            Ok(None) => {
                pool.unassign_shard(shard);
                return debug!("worker {id} closed its channel before it was ready");
            }
            Err(err) => Err(err),
        };
        let hello = match hello {
            Ok(hello) => hello,
            Err(err) => {
                pool.unassign_shard(shard);
                return warn!("worker {id} spoke badly on its channel: {err}");
            }
        };
        let ring = match hello.ring {
            false => None,
            true => {
                let made = RingMap::create(ring_size)
                    .map_err(std::io::Error::other)
                    .map(|(map, fd)| (Arc::new(map), fd));
                let sent = match made {
                    Ok((map, fd)) => send_ring(&socket, &fd).await.map(|_| map),
                    Err(err) => Err(err),
                };
                match sent {
                    Ok(map) => Some(map),
                    Err(err) => {
                        pool.unassign_shard(shard);
                        return warn!("cannot give worker {id} its rings: {err}");
                    }
                }
            }
        };
        let conn = WorkerConn::new(id, hello.pid, shard, hello.capacity == 1, socket, ring);
        pool.add(conn.clone(), hello.capacity as usize);
        reporter.worker_ready(id, hello.pid);
        debug!("worker {} (pid {}) is ready", id, hello.pid);
        loop {
            let frame = match &conn.ring {
                Some(ring) => read_ring_frame(&reader, ring, &mut decoder, &mut buf, &conn).await,
                None => read_frame(&reader, &mut decoder, &mut buf).await,
            };
            match frame {
                Ok(Some(frame)) if frame.kind == Kind::Retire => {
                    // Out of the pool first, so no new lease names it; a request that
                    // already holds one is turned away by `open_stream`.
                    pool.remove(id);
                    conn.retire();
                    debug!("worker {} (pid {}) is retiring", id, hello.pid);
                }
                Ok(Some(frame)) => match conn.route(frame) {
                    Ok(None) => {}
                    Ok(Some(pause)) => pause.wait().await,
                    Err(err) => {
                        warn!("worker {} broke the channel protocol: {err}", hello.pid);
                        break;
                    }
                },
                Ok(None) => break,
                Err(err) => {
                    warn!("worker {} broke the channel protocol: {err}", hello.pid);
                    break;
                }
            }
        }
        pool.forget(id, shard);
        conn.close();
    });
}
