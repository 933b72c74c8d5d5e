//! The master's side of the control socket: handing each new worker's channel to the
//! front tier with SCM_RIGHTS, asking it to reload its TLS certificates, telling it of a
//! worker timed out, and hearing which workers are ready (layout in `protocol::control`).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, recv, sendmsg};
use tracing::warn;

use crate::protocol::control::{AddWorker, MESSAGE_LEN, Message};

/// Sends the front end of a worker's channel to the front tier.
pub fn send_worker(control: &OwnedFd, worker: AddWorker, channel: RawFd) -> nix::Result<()> {
    let message = worker.encode();
    let fds = [channel];
    sendmsg::<UnixAddr>(
        control.as_raw_fd(),
        &[IoSlice::new(&message)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
}

/// Asks the front tier to read its TLS certificates again.
pub fn send_reload_tls(control: &OwnedFd) -> nix::Result<()> {
    send(control, Message::ReloadTls)
}

/// Tells the front tier that a new master takes over (its stop is a restart).
pub fn send_replaced(control: &OwnedFd) -> nix::Result<()> {
    send(control, Message::Replaced)
}

/// Tells the front tier that a worker was timed out.
pub fn send_worker_timed_out(control: &OwnedFd, worker: AddWorker) -> nix::Result<()> {
    send(control, Message::WorkerTimedOut(worker))
}

/// Tells the front tier that requests of the gthread worker `worker` timed out.
pub fn send_streams_timed_out(control: &OwnedFd, worker: AddWorker) -> nix::Result<()> {
    send(control, Message::StreamsTimedOut(worker))
}

/// Sends a message with no descriptor, never blocking the master's loop.
fn send(control: &OwnedFd, message: Message) -> nix::Result<()> {
    let message = message.encode();
    sendmsg::<UnixAddr>(
        control.as_raw_fd(),
        &[IoSlice::new(&message)],
        &[],
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map(|_| ())
}

/// The messages the front tier has sent, without waiting for more.
pub fn receive(control: &OwnedFd) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut buf = [0u8; MESSAGE_LEN];
    loop {
        match recv(control.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            // The front tier is gone: its death is reaped like any child's.
            Ok(0) | Err(_) => return messages,
            Ok(length) => match Message::decode(buf.get(..length).unwrap_or(&[])) {
                Some(message) => messages.push(message),
                None => warn!("ignoring a malformed message from the front tier"),
            },
        }
    }
}
