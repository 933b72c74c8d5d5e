//! The control socket between the master and the front tier (a SOCK_SEQPACKET pair, so
//! each message arrives whole). Each message is 12 bytes: kind, worker id and worker
//! pid, big-endian `u32`s; an `AddWorker` carries the front end of the worker's channel
//! as SCM_RIGHTS ancillary data.

/// Bytes in one control message.
pub const MESSAGE_LEN: usize = 12;

const ADD_WORKER: u32 = 1;

/// A new worker: its channel travels with the message.
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
        let mut message = [0u8; MESSAGE_LEN];
        message[0..4].copy_from_slice(&ADD_WORKER.to_be_bytes());
        message[4..8].copy_from_slice(&self.id.to_be_bytes());
        message[8..12].copy_from_slice(&self.pid.to_be_bytes());
        message
    }

    /// Reads a message; `None` if it is not a well-formed AddWorker.
    pub fn decode(message: &[u8]) -> Option<AddWorker> {
        let word = |i: usize| {
            message
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        if message.len() != MESSAGE_LEN || word(0)? != ADD_WORKER {
            return None;
        }
        Some(AddWorker {
            id: word(4)?,
            pid: word(8)?,
        })
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
}
