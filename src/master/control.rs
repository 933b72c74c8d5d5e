//! The master's side of the control socket: handing each new worker's channel to the
//! front tier with SCM_RIGHTS, and asking it to reload its TLS certificates (layout in
//! `protocol::control`).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

use crate::protocol::control::{AddWorker, Message};

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
    let message = Message::ReloadTls.encode();
    sendmsg::<UnixAddr>(
        control.as_raw_fd(),
        &[IoSlice::new(&message)],
        &[],
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map(|_| ())
}
