//! The control socket between the master and the front tier (a SOCK_SEQPACKET pair, so
//! each message arrives whole). Each message is 12 bytes: kind, worker id and worker
//! pid, big-endian `u32`s.
//!
//! - kind 1, `AddWorker`: carries the front end of the worker's channel as SCM_RIGHTS
//!   ancillary data.
//! - kind 2, `ReloadTls`: read the certificate files again (the master got SIGHUP); id
//!   and pid are zero.
//! - kind 3, `WorkerTimedOut`: the master timed this worker out (`--timeout`) and is
//!   about to abort it: send it nothing more and answer its requests 504 at once.
//! - kind 4, `WorkerReady` (front tier to master): the worker with this id and pid said
//!   Hello on its channel and takes requests. The master waits for it before retiring
//!   the worker it replaces (SIGHUP).
//! - kind 5, `StreamsTimedOut`: the master timed out one or more requests of this
//!   gthread worker (`--timeout`) and told it to retire: answer those requests 504 at
//!   once (the scoreboard names their streams) and send it nothing more; its other
//!   requests go on.
//! - kind 6, `Replaced`: a new master (USR2) takes over and this front tier is about to
//!   be stopped: its WebSockets close with 1012 (service restart), not 1001; id and pid
//!   are zero.

/// Bytes in one control message.
pub const MESSAGE_LEN: usize = 12;

const ADD_WORKER: u32 = 1;
const RELOAD_TLS: u32 = 2;
const WORKER_TIMED_OUT: u32 = 3;
const WORKER_READY: u32 = 4;
const STREAMS_TIMED_OUT: u32 = 5;
const REPLACED: u32 = 6;

/// One message between the master and the front tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A new worker, whose channel travels with the message.
    AddWorker(AddWorker),
    /// Reload the TLS certificates.
    ReloadTls,
    /// This worker (id, pid as in its `AddWorker`) was timed out.
    WorkerTimedOut(AddWorker),
    /// The front tier to the master: this worker is ready.
    WorkerReady(AddWorker),
    /// Some requests of this (gthread) worker were timed out.
    StreamsTimedOut(AddWorker),
    /// A new master takes over: the stop that follows is a restart.
    Replaced,
}

impl Message {
    /// The message bytes.
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        match self {
            Message::AddWorker(worker) => worker.encode(),
            Message::ReloadTls => words(RELOAD_TLS, 0, 0),
            Message::WorkerTimedOut(worker) => words(WORKER_TIMED_OUT, worker.id, worker.pid),
            Message::WorkerReady(worker) => words(WORKER_READY, worker.id, worker.pid),
            Message::StreamsTimedOut(worker) => words(STREAMS_TIMED_OUT, worker.id, worker.pid),
            Message::Replaced => words(REPLACED, 0, 0),
        }
    }

    /// Reads a message; `None` if it is not a well-formed one.
    pub fn decode(message: &[u8]) -> Option<Message> {
        match split(message)? {
            (ADD_WORKER, id, pid) => Some(Message::AddWorker(AddWorker { id, pid })),
            (RELOAD_TLS, 0, 0) => Some(Message::ReloadTls),
            (WORKER_TIMED_OUT, id, pid) => Some(Message::WorkerTimedOut(AddWorker { id, pid })),
            (WORKER_READY, id, pid) => Some(Message::WorkerReady(AddWorker { id, pid })),
            (STREAMS_TIMED_OUT, id, pid) => Some(Message::StreamsTimedOut(AddWorker { id, pid })),
            (REPLACED, 0, 0) => Some(Message::Replaced),
            _ => None,
        }
    }
}

fn words(kind: u32, id: u32, pid: u32) -> [u8; MESSAGE_LEN] {
    let mut message = [0u8; MESSAGE_LEN];
    message[0..4].copy_from_slice(&kind.to_be_bytes());
    message[4..8].copy_from_slice(&id.to_be_bytes());
    message[8..12].copy_from_slice(&pid.to_be_bytes());
    message
}

fn split(message: &[u8]) -> Option<(u32, u32, u32)> {
    let word = |i: usize| {
        message
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if message.len() != MESSAGE_LEN {
        return None;
    }
    Some((word(0)?, word(4)?, word(8)?))
}

/// A worker, named by the master's id and its pid. In `Message::AddWorker` its channel
/// travels with the message.
/// A worker, by the master's id and its pid (a new one's channel travels with the
/// message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddWorker {
    /// The master's id for the worker.
    pub id: u32,
    /// The worker's pid.
    pub pid: u32,
}

impl AddWorker {
    /// The message bytes.
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        words(ADD_WORKER, self.id, self.pid)
    }

    /// Reads a message; `None` if it is not a well-formed AddWorker.
    pub fn decode(message: &[u8]) -> Option<AddWorker> {
        match Message::decode(message)? {
            Message::AddWorker(worker) => Some(worker),
            Message::ReloadTls | Message::WorkerTimedOut(_) => None,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let message = AddWorker { id: 3, pid: 4242 };
        assert_eq!(AddWorker::decode(&message.encode()), Some(message));
        assert_eq!(AddWorker::decode(&message.encode()[..11]), None);
        let mut wrong = message.encode();
        wrong[3] = 9;
        assert_eq!(AddWorker::decode(&wrong), None);
    }

    #[test]
    fn reload_tls() {
        let bytes = Message::ReloadTls.encode();
        assert_eq!(Message::decode(&bytes), Some(Message::ReloadTls));
        assert_eq!(AddWorker::decode(&bytes), None);
        let mut stray = bytes;
        stray[7] = 1;
        assert_eq!(Message::decode(&stray), None);
        let worker = AddWorker { id: 1, pid: 2 };
        assert_eq!(
            Message::decode(&worker.encode()),
            Some(Message::AddWorker(worker))
        );
    }

    #[test]
    fn replaced() {
        let bytes = Message::Replaced.encode();
        assert_eq!(bytes[..4], 6u32.to_be_bytes());
        assert_eq!(Message::decode(&bytes), Some(Message::Replaced));
        assert_eq!(AddWorker::decode(&bytes), None);
        let mut stray = bytes;
        stray[11] = 1;
        assert_eq!(Message::decode(&stray), None);
    }

    #[test]
    fn worker_timed_out() {
        let worker = AddWorker { id: 5, pid: 777 };
        let bytes = Message::WorkerTimedOut(worker).encode();
        assert_eq!(bytes[..4], 3u32.to_be_bytes());
        assert_eq!(
            Message::decode(&bytes),
            Some(Message::WorkerTimedOut(worker))
        );
        // Not mistaken for a new worker, and refused when cut short.
        assert_eq!(AddWorker::decode(&bytes), None);
        assert_eq!(Message::decode(&bytes[..8]), None);
        let mut unknown = bytes;
        unknown[3] = 9;
        assert_eq!(Message::decode(&unknown), None);
    }

    #[test]
    fn worker_ready_is_not_an_add_worker() {
        let worker = AddWorker { id: 7, pid: 99 };
        let bytes = Message::WorkerReady(worker).encode();
        assert_eq!(Message::decode(&bytes), Some(Message::WorkerReady(worker)));
        assert_eq!(AddWorker::decode(&bytes), None);
    }

    #[test]
    fn streams_timed_out_is_its_own_kind() {
        let worker = AddWorker { id: 8, pid: 1234 };
        let bytes = Message::StreamsTimedOut(worker).encode();
        assert_eq!(bytes[..4], 5u32.to_be_bytes());
        assert_eq!(
            Message::decode(&bytes),
            Some(Message::StreamsTimedOut(worker))
        );
        assert_eq!(AddWorker::decode(&bytes), None);
    }
}
