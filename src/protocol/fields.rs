//! The field encoding inside head payloads: big-endian integers and byte strings with a
//! `u32` length prefix. The reader checks every length against what remains before it
//! slices, so a hostile length can neither panic nor allocate.

use bytes::{Buf, Bytes};

use super::ProtocolError;

/// Appends fields to a payload under construction.
pub struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> FieldWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> FieldWriter<'a> {
        FieldWriter { out }
    }

    /// One byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.out.push(value);
        self
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.out.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.out.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.out.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Where the next field goes, for [`FieldWriter::patch_u32`].
    pub fn position(&self) -> usize {
        self.out.len()
    }

    /// Overwrites the `u32` written at `at` (from [`FieldWriter::position`]).
    pub fn patch_u32(&mut self, at: usize, value: u32) {
        if let Some(slot) = self.out.get_mut(at..at + 4) {
            slot.copy_from_slice(&value.to_be_bytes());
        }
    }

    /// A byte string with its `u32` length first.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.u32(value.len() as u32);
        self.out.extend_from_slice(value);
        self
    }

    /// Bytes without a length: only as a payload's last field, which runs to its end.
    pub fn raw(&mut self, value: &[u8]) -> &mut Self {
        self.out.extend_from_slice(value);
        self
    }
}

/// Reads fields off a received payload, sharing its memory.
pub struct FieldReader {
    buf: Bytes,
    what: &'static str,
}

impl FieldReader {
    /// A reader over `buf`; `what` names the message in errors.
    pub fn new(buf: Bytes, what: &'static str) -> FieldReader {
        FieldReader { buf, what }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated(self.what));
        }
        Ok(self.buf.split_to(n))
    }

    /// The next `N` bytes, copied: an integer needs no share of the payload (a
    /// refcount taken and given back per field otherwise).
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let Some(array) = self.buf.first_chunk::<N>().copied() else {
            return Err(ProtocolError::Truncated(self.what));
        };
        self.buf.advance(N);
        Ok(array)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<Bytes, ProtocolError> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    /// All that is left: a payload's last field, written with [`FieldWriter::raw`].
    pub fn rest(self) -> Bytes {
        self.buf
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), ProtocolError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(ProtocolError::TrailingBytes(self.what, n)),
        }
    }
}
