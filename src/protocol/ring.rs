//! The shared-memory transport: two single-producer single-consumer byte rings per
//! worker, in one sealed memfd that the front tier creates and the worker maps.
//!
//! The rings carry exactly the byte stream the Unix socket carries today (frames as
//! described in the module above); only the path changes. The job of this module is to
//! move bytes between two processes with no system call while both are busy, and to stay
//! safe when the other side lies. It must never panic, never read or write outside the
//! mapping, and never allocate more than the caller allows, whatever the shared memory
//! holds: the worker runs arbitrary application code that may scribble on the mapping,
//! and a corrupt ring must cost the front tier that worker (502 for its requests), never
//! itself. Everything the other process wrote is therefore validated where it is read.
//!
//! # Byte layout
//!
//! One memfd of `4096 + 2 × capacity` bytes. Integers are in native byte order (both ends
//! are one machine running one build); each control field sits alone on its own 64-byte
//! cache line so that the producer's and the consumer's stores never share a line.
//!
//! ```text
//! offset            size      field
//! 0                 4         magic "RWRG"
//! 4                 4         version: u32 (RING_VERSION)
//! 8                 4         capacity: u32, bytes of each data area, a power of two,
//!                             MIN_CAPACITY ..= MAX_CAPACITY
//! 12                52        zero
//! 64                8         to_worker write position: u64   (front tier writes)
//! 128               8         to_worker read position: u64    (worker writes)
//! 192               4         to_worker parked: u32           (worker sets, front clears)
//! 256               4         to_worker waiting: u32          (front sets, worker clears)
//! 320 .. 576                  to_front: the same four fields (roles reversed)
//! 576               3520      zero
//! 4096              capacity  to_worker data area (requests)
//! 4096 + capacity   capacity  to_front data area (responses)
//! ```
//!
//! A position counts every byte ever written to (or read from) its ring: it only grows,
//! and is never reduced modulo anything; byte `p` of the stream lives at offset
//! `p & (capacity - 1)` of the data area. `write - read` (wrapping) is the number of
//! published bytes not yet consumed, and must be at most `capacity`: anything else is
//! [`RingError::Corrupt`]. Each side keeps its own position in private memory and only
//! publishes it to the mapping, so a scribbler can lie about its own position (which is
//! checked) but cannot move ours.
//!
//! `parked` is 1 while the consumer sleeps (or is about to) until a doorbell; `waiting`
//! is 1 while the producer sleeps until there is room. Whoever finds the flag at 1 swaps
//! it to 0 and rings the doorbell. The front tier also reads a worker's `parked` without
//! changing it ([`Ring::consumer_parked`]), to give a request to a free worker still
//! awake before a sleeping one: a hint only (a lie costs a doorbell or a wake-up, never
//! a request).
//!
//! # Why the mapping is safe to share
//!
//! The memfd is sealed with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` before it is
//! mapped, and [`RingMap::open`] refuses one that is not: a process holding the fd can
//! then neither truncate it (which would turn our mapped pages into SIGBUS) nor add other
//! seals. It can still write any byte of it, which is what the checks are for.
//!
//! # Use
//!
//! The doorbell is one byte on the channel's existing Unix socket, which also keeps
//! telling each side when the other died (EOF) and still carries control traffic. A
//! producer pushes, then calls [`Ring::take_parked`] and writes a doorbell byte only if it
//! returns true; with both sides busy no system call is made. A consumer drains with
//! [`Ring::pop_into`], calls [`Ring::take_waiting`] (doorbell if true), and before it
//! sleeps calls [`Ring::park`]: true means sleep until the socket is readable, false
//! means bytes arrived meanwhile. After waking it drains the doorbell bytes and calls
//! [`Ring::unpark`]. The worker parks right before its `poll(2)`, after looking at the
//! ring for up to 50 µs more while requests have been coming close together (yielding
//! its core between looks: `worker::spin`), which spares the doorbell and both wake-ups
//! for most requests under load; the front tier's reader task, finding its ring empty,
//! first lets the shard's other tasks run once (a worker
//! about to answer often does meanwhile), then parks and waits for the doorbell on the
//! socket with tokio. Neither side uses `waiting` yet: a producer short of room waits a
//! little and looks again (rooms run short only while a slow client holds a response
//! back or a body larger than the ring passes). Doorbells can be
//! spurious (both sides saw each other), so a wake-up is only a hint to look again.

use std::fmt;
use std::fs::File;
use std::mem::offset_of;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use bytes::BytesMut;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// Default bytes of each ring's data area (`--ring-size`): a whole request body the
/// front tier holds in memory (1 MiB) fits with room to spare, so that it goes in at once.
pub const DEFAULT_CAPACITY: usize = 2 << 20;

/// The smallest data area: one page.
pub const MIN_CAPACITY: usize = 4096;

/// The largest data area (it must fit the header's u32, and two must fit a mapping).
pub const MAX_CAPACITY: usize = 1 << 30;

/// Bytes of the header page, before the first data area.
pub const HEADER_PAGE: usize = 4096;

/// The ring layout version; [`RingMap::open`] refuses any other.
pub const RING_VERSION: u32 = 1;

/// Magic bytes opening the header page.
pub const RING_MAGIC: &[u8; 4] = b"RWRG";

/// Why a ring region cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A system call on the memfd or the mapping failed.
    #[error("ring memory: {0}")]
    Io(#[from] std::io::Error),
    /// The region handed to `open` is not one `create` made (or not sealed).
    #[error("bad ring region: {0}")]
    BadHeader(&'static str),
    /// The other side published positions that cannot be true.
    #[error("corrupt ring: {0}")]
    Corrupt(&'static str),
    /// `create` was asked for more than [`MAX_CAPACITY`] bytes.
    #[error("ring capacity of {0} bytes exceeds the limit of {MAX_CAPACITY}")]
    Capacity(usize),
}

impl From<nix::errno::Errno> for RingError {
    fn from(errno: nix::errno::Errno) -> RingError {
        RingError::Io(errno.into())
    }
}

/// One field alone on a cache line.
#[repr(C, align(64))]
struct CacheLine<T>(T);

/// The shared control fields of one ring.
#[repr(C)]
struct Control {
    write: CacheLine<AtomicU64>,
    read: CacheLine<AtomicU64>,
    parked: CacheLine<AtomicU32>,
    waiting: CacheLine<AtomicU32>,
}

/// The start of the header page. Every field is an atomic: the other process may store
/// to any of them at any time.
#[repr(C)]
struct Header {
    magic: AtomicU32,
    version: AtomicU32,
    capacity: AtomicU32,
    rings: [Control; 2],
}

// The byte table above is the contract; the compiler checks that the structs match it.
const _: () = {
    assert!(offset_of!(Header, version) == 4);
    assert!(offset_of!(Header, capacity) == 8);
    assert!(offset_of!(Header, rings) == 64);
    assert!(offset_of!(Control, read) == 64);
    assert!(offset_of!(Control, parked) == 128);
    assert!(offset_of!(Control, waiting) == 192);
    assert!(std::mem::size_of::<Control>() == 256);
    assert!(std::mem::size_of::<Header>() <= HEADER_PAGE);
    assert!(std::mem::align_of::<Header>() <= HEADER_PAGE);
};

const TO_WORKER: usize = 0;
const TO_FRONT: usize = 1;

/// This process's own positions of one ring, in private memory: the truth for the side
/// that owns each one (the copy in the mapping is only what we publish).
#[derive(Default)]
struct Positions {
    write: AtomicU64,
    read: AtomicU64,
}

/// An owned `mmap` of the whole region, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of a memfd already checked to be sealed against resizing.
    fn new(fd: &OwnedFd, len: usize) -> Result<Mapping, RingError> {
        let length = NonZeroUsize::new(len).ok_or(RingError::BadHeader("empty region"))?;
        // SAFETY: a new shared mapping aliases no Rust object. The memfd is sealed
        // against shrinking, so every page of it stays backed for as long as it is mapped
        // (no SIGBUS), and all access to it goes through atomics or raw copies.
        let base = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )?
        };
        Ok(Mapping {
            base: base.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned, and no `Ring` (which
        // borrows the RingMap that owns this) can outlive it.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// Both rings of one worker's channel in one sealed memfd mapping.
pub struct RingMap {
    mapping: Mapping,
    capacity: usize,
    local: [Positions; 2],
}

// SAFETY: the mapping is only reached through atomics and through raw copies whose
// exclusivity the callers guarantee (one producer and one consumer per ring); the
// pointer itself is as shareable as the memory it owns.
unsafe impl Send for RingMap {}
// SAFETY: as above; `&RingMap` gives only `Ring`s, whose methods take `&self`.
unsafe impl Sync for RingMap {}

impl fmt::Debug for RingMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingMap")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The seals that make a mapping safe from the other holder of the fd.
fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// Bytes of a region whose data areas have `capacity` bytes each.
fn region_len(capacity: usize) -> usize {
    HEADER_PAGE + 2 * capacity
}

impl RingMap {
    /// Front tier: a new memfd (memfd_create with MFD_CLOEXEC|MFD_ALLOW_SEALING), sized,
    /// sealed against shrinking and growing (F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL) so
    /// that no process can make a mapped page vanish (SIGBUS), mapped, both rings
    /// initialised. `capacity` is rounded up to a power of two, at least 4096. Returns the
    /// fd to pass to the worker.
    pub fn create(capacity: usize) -> Result<(RingMap, OwnedFd), RingError> {
        let rounded = capacity
            .max(MIN_CAPACITY)
            .checked_next_power_of_two()
            .filter(|&c| c <= MAX_CAPACITY)
            .ok_or(RingError::Capacity(capacity))?;
        let fd = memfd_create(
            c"rwsgi-ring",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let len = region_len(rounded);
        let size = libc::off_t::try_from(len).map_err(|_| RingError::Capacity(capacity))?;
        nix::unistd::ftruncate(&fd, size)?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(required_seals()))?;
        let map = RingMap {
            mapping: Mapping::new(&fd, len)?,
            capacity: rounded,
            local: Default::default(),
        };
        // A new memfd reads as zeros: positions and flags start at 0. The worker sees
        // these stores because the fd reaches it through fork or a socket, both of which
        // order them before anything it does.
        let header = map.header();
        header
            .magic
            .store(u32::from_ne_bytes(*RING_MAGIC), Ordering::Relaxed);
        header.version.store(RING_VERSION, Ordering::Relaxed);
        header.capacity.store(rounded as u32, Ordering::Release);
        Ok((map, fd))
    }

    /// Worker: maps a region the front tier made, checking its seals, size, magic and
    /// version first.
    pub fn open(fd: OwnedFd) -> Result<RingMap, RingError> {
        let seals = SealFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GET_SEALS)?);
        if !seals.contains(required_seals()) {
            return Err(RingError::BadHeader("memfd not sealed against resizing"));
        }
        let size = File::from(fd.try_clone()?).metadata()?.len();
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        if !(region_len(MIN_CAPACITY)..=region_len(MAX_CAPACITY)).contains(&len) {
            return Err(RingError::BadHeader("region size out of range"));
        }
        let mut map = RingMap {
            mapping: Mapping::new(&fd, len)?,
            capacity: 0,
            local: Default::default(),
        };
        let header = map.header();
        if header.magic.load(Ordering::Relaxed).to_ne_bytes() != *RING_MAGIC {
            return Err(RingError::BadHeader("bad magic"));
        }
        if header.version.load(Ordering::Relaxed) != RING_VERSION {
            return Err(RingError::BadHeader("unknown version"));
        }
        let capacity = header.capacity.load(Ordering::Acquire) as usize;
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(RingError::BadHeader("capacity not a power of two in range"));
        }
        if region_len(capacity) != len {
            return Err(RingError::BadHeader(
                "region size does not match its capacity",
            ));
        }
        map.capacity = capacity;
        // The front tier may already have pushed: take up both rings where they stand.
        for index in [TO_WORKER, TO_FRONT] {
            let control = &map.header().rings[index];
            let write = control.write.0.load(Ordering::Acquire);
            let read = control.read.0.load(Ordering::Acquire);
            used(write, read, capacity)?;
            map.local[index].write.store(write, Ordering::Relaxed);
            map.local[index].read.store(read, Ordering::Relaxed);
        }
        Ok(map)
    }

    /// Bytes of each ring's data area.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The ring the front tier writes and the worker reads (requests).
    pub fn to_worker(&self) -> Ring<'_> {
        self.ring(TO_WORKER)
    }

    /// The ring the worker writes and the front tier reads (responses).
    pub fn to_front(&self) -> Ring<'_> {
        self.ring(TO_FRONT)
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned, at least HEADER_PAGE bytes (checked
        // before mapping) and lives as long as `self`; a `Header` is only atomics, which
        // are valid for any bit pattern, so whatever the other side wrote is a `Header`.
        unsafe { self.mapping.base.cast::<Header>().as_ref() }
    }

    fn ring(&self, index: usize) -> Ring<'_> {
        // SAFETY: HEADER_PAGE + index × capacity + capacity <= the mapping's length
        // (region_len), so the data area is inside the mapping.
        let data = unsafe { self.mapping.base.add(HEADER_PAGE + index * self.capacity) };
        Ring {
            shared: &self.header().rings[index],
            local: &self.local[index],
            data,
            capacity: self.capacity,
        }
    }
}

/// Published bytes not yet consumed, or `Corrupt` if the positions cannot both be true.
fn used(write: u64, read: u64, capacity: usize) -> Result<usize, RingError> {
    let used = write.wrapping_sub(read);
    if used > capacity as u64 {
        return Err(RingError::Corrupt(
            "positions further apart than the capacity",
        ));
    }
    Ok(used as usize)
}

/// One single-producer single-consumer byte ring in the mapping. Exactly one process
/// writes and one reads each ring; within a process the caller serialises producers (a
/// Mutex) and consumers. Producer methods count from this mapping's own record of the
/// write position and consumer methods from its own read position, so each side's
/// methods are only meaningful in the process that plays that side.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    shared: &'a Control,
    local: &'a Positions,
    data: NonNull<u8>,
    capacity: usize,
}

// SAFETY: a `Ring` is a borrow of a `RingMap`, which is Send and Sync; `data` points
// into that mapping.
unsafe impl Send for Ring<'_> {}
// SAFETY: as above.
unsafe impl Sync for Ring<'_> {}

// Memory ordering, and why no wake-up is lost.
//
// Data: the producer copies bytes in, then stores `write` with Release; the consumer
// loads `write` with Acquire, so the bytes below it are visible, copies them out, then
// stores `read` with Release; the producer loads `read` with Acquire before reusing that
// room, so the consumer's copy is finished before the bytes are overwritten.
//
// Sleeping is a Dekker handshake, with a SeqCst fence on each side:
//
//   consumer (park)                 producer (push + take_parked)
//   C1 parked = 1                   P1 write = w + n   (Release)
//   C2 fence(SeqCst)                P2 fence(SeqCst)
//   C3 load write                   P3 load parked; if 1, swap to 0 and ring
//
// The two fences are totally ordered. If C2 comes first, P3 sees C1's store (parked = 1)
// and the producer rings. If P2 comes first, C3 sees P1's store and the consumer does not
// sleep. Both may happen (a spurious doorbell, harmless); neither not happening is
// impossible, so the consumer never sleeps on bytes nobody will announce. The same
// argument, with `read` and `waiting`, covers a producer waiting for room.
impl Ring<'_> {
    /// Bytes of this ring's data area.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Offset in the data area of stream position `position`.
    fn offset(&self, position: u64) -> usize {
        // The mask keeps every index inside the data area, whatever `position` is.
        (position as usize) & (self.capacity - 1)
    }

    // ---- producer side ----

    /// Bytes that can be written now.
    pub fn free(&self) -> Result<usize, RingError> {
        let write = self.local.write.load(Ordering::Relaxed);
        let read = self.shared.read.0.load(Ordering::Acquire);
        Ok(self.capacity - used(write, read, self.capacity)?)
    }

    /// Copies all of `bytes` in (wrapping) and publishes them (Release store of the write
    /// position), or writes nothing and returns Ok(false) if they do not fit. Ok(true)
    /// when written. More than [`Ring::capacity`] bytes never fit: use
    /// [`Ring::push_partial`] for those.
    pub fn push(&self, bytes: &[u8]) -> Result<bool, RingError> {
        if bytes.len() > self.free()? {
            return Ok(false);
        }
        self.publish(bytes);
        Ok(true)
    }

    /// Copies in and publishes as much of `bytes` as fits now; returns how many. For a
    /// stream longer than the ring (a large body): push the rest once there is room.
    pub fn push_partial(&self, bytes: &[u8]) -> Result<usize, RingError> {
        let n = bytes.len().min(self.free()?);
        self.publish(&bytes[..n]);
        Ok(n)
    }

    /// Copies `bytes`, which the caller checked fit, and publishes them.
    fn publish(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let write = self.local.write.load(Ordering::Relaxed);
        let start = self.offset(write);
        let first = bytes.len().min(self.capacity - start);
        // SAFETY: `start < capacity` and `start + first <= capacity`, and the rest,
        // `bytes.len() - first <= capacity - first`, goes to the area's start: both
        // copies stay in the data area. The source is our own slice, never the mapping.
        // This room is free (the consumer published a read position past it), so a
        // well-behaved consumer is not reading it; a hostile one only harms itself.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.as_ptr().add(start), first);
            ptr::copy_nonoverlapping(
                bytes.as_ptr().add(first),
                self.data.as_ptr(),
                bytes.len() - first,
            );
        }
        let write = write.wrapping_add(bytes.len() as u64);
        self.local.write.store(write, Ordering::Relaxed);
        self.shared.write.0.store(write, Ordering::Release);
    }

    /// Whether the consumer says it sleeps, without changing its flag: a hint (the
    /// consumer may park or wake the next moment; its bytes are not trusted anyway).
    pub fn consumer_parked(&self) -> bool {
        self.shared.parked.0.load(Ordering::Relaxed) != 0
    }

    /// After push: whether the consumer said it sleeps (its `parked` flag, atomically
    /// swapped to 0): then, and only then, the caller rings the doorbell (one byte on the
    /// channel's Unix socket).
    pub fn take_parked(&self) -> bool {
        take_flag(&self.shared.parked.0)
    }

    /// The producer found no room: it sets its `waiting` flag, then (after a SeqCst
    /// fence) re-checks; returns true if it may sleep until the doorbell (no room still),
    /// false if room appeared meanwhile (flag cleared). `needed` over the capacity counts
    /// as the capacity (wait for an empty ring).
    pub fn wait_for_room(&self, needed: usize) -> Result<bool, RingError> {
        let waiting = &self.shared.waiting.0;
        waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        match self.free() {
            Ok(free) if free < needed.min(self.capacity) => Ok(true),
            other => {
                waiting.store(0, Ordering::Relaxed);
                other.map(|_| false)
            }
        }
    }

    // ---- consumer side ----

    /// Appends every published byte to `out` (at most `max`), frees that room (Release
    /// store of the read position), returns how many. Never reads outside the data area,
    /// whatever the header says, and grows `out` by at most `max` bytes.
    pub fn pop_into(&self, out: &mut BytesMut, max: usize) -> Result<usize, RingError> {
        let n = self.pending()?.min(max);
        if n == 0 {
            return Ok(0);
        }
        out.reserve(n);
        // SAFETY: `out` has room for `n` more bytes (reserved above), which `copy_out`
        // fills before its length is extended.
        unsafe {
            self.copy_out(0, out.spare_capacity_mut().as_mut_ptr().cast::<u8>(), n);
            out.set_len(out.len() + n);
        }
        self.consume(n);
        Ok(n)
    }

    /// Like [`Ring::pop_into`], into `out` (as much as it takes, uninitialised or
    /// not): for a payload read straight to where it is wanted.
    pub fn pop_to(&self, out: &mut [std::mem::MaybeUninit<u8>]) -> Result<usize, RingError> {
        let n = self.pending()?.min(out.len());
        // SAFETY: `out` is valid for writes of `out.len() >= n` bytes.
        unsafe { self.copy_out(0, out.as_mut_ptr().cast::<u8>(), n) };
        self.consume(n);
        Ok(n)
    }

    /// Consumes `n` unread bytes without copying them (ones already [`Ring::peek`]ed);
    /// false, consuming nothing, when fewer have arrived.
    pub fn skip(&self, n: usize) -> Result<bool, RingError> {
        if self.pending()? < n {
            return Ok(false);
        }
        self.consume(n);
        Ok(true)
    }

    /// Copies the `out.len()` bytes that follow the first `skip` unread ones, without
    /// consuming anything; false (nothing copied) when fewer have arrived.
    pub fn peek(&self, skip: usize, out: &mut [u8]) -> Result<bool, RingError> {
        if self.pending()? < skip.saturating_add(out.len()) {
            return Ok(false);
        }
        // SAFETY: `out` is valid for writes of its length, and that many bytes lie
        // within the unread ones after `skip` (checked above).
        unsafe { self.copy_out(skip, out.as_mut_ptr(), out.len()) };
        Ok(true)
    }

    /// Copies `n` unread bytes, from `skip` bytes past the read position, to `dst`.
    ///
    /// # Safety
    /// `dst` is valid for writes of `n` bytes, and `skip + n` bytes are unread.
    unsafe fn copy_out(&self, skip: usize, dst: *mut u8, n: usize) {
        let read = self.local.read.load(Ordering::Relaxed);
        let start = self.offset(read.wrapping_add(skip as u64));
        let first = n.min(self.capacity - start);
        // SAFETY: the source ranges [start, start + first) and [0, n - first) lie in the
        // data area (n <= capacity, start < capacity); the caller vouches for `dst`. The
        // bytes are read once, by copy, and never trusted: a producer scribbling
        // concurrently can only change which bytes we get, and the frame decoder checks
        // those.
        unsafe {
            ptr::copy_nonoverlapping(self.data.as_ptr().add(start), dst, first);
            ptr::copy_nonoverlapping(self.data.as_ptr(), dst.add(first), n - first);
        }
    }

    /// Gives `n` read bytes' room back to the producer.
    fn consume(&self, n: usize) {
        if n == 0 {
            return;
        }
        let read = self
            .local
            .read
            .load(Ordering::Relaxed)
            .wrapping_add(n as u64);
        self.local.read.store(read, Ordering::Relaxed);
        self.shared.read.0.store(read, Ordering::Release);
    }

    /// After consuming: whether the producer waits for room (its `waiting` flag swapped
    /// to 0): then ring the doorbell.
    pub fn take_waiting(&self) -> bool {
        take_flag(&self.shared.waiting.0)
    }

    /// The consumer is about to sleep: sets `parked` = 1, SeqCst fence, re-checks; true
    /// if the ring is still empty (sleep until the doorbell), false if bytes arrived
    /// meanwhile (flag cleared; read them).
    pub fn park(&self) -> Result<bool, RingError> {
        let parked = &self.shared.parked.0;
        parked.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        match self.pending() {
            Ok(0) => Ok(true),
            other => {
                parked.store(0, Ordering::Relaxed);
                other.map(|_| false)
            }
        }
    }

    /// The consumer is awake and will read without a doorbell: clears `parked`.
    pub fn unpark(&self) {
        self.shared.parked.0.store(0, Ordering::Relaxed);
    }

    /// Bytes published and not yet consumed (a consumer-side check, validated).
    pub fn pending(&self) -> Result<usize, RingError> {
        let read = self.local.read.load(Ordering::Relaxed);
        let write = self.shared.write.0.load(Ordering::Acquire);
        used(write, read, self.capacity)
    }
}

/// The second half of the handshake: the fence orders our position store (already
/// done) before the flag load. A plain load first keeps the common case (the peer is
/// awake) free of a locked instruction on a shared line. Any non-zero value counts as
/// set, so a scribbled flag can cost a spurious doorbell, never a lost one.
fn take_flag(flag: &AtomicU32) -> bool {
    fence(Ordering::SeqCst);
    flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0
}

/// Writes `data` over a region through its fd, as a hostile worker could: the first 12
/// bytes over magic, version and capacity, the next 48 over both rings' control fields
/// (write u64, read u64, parked u32, waiting u32 each), the rest over the start of both
/// data areas. For fuzzing and tests; writes past the region's end are dropped.
pub(super) fn scribble(fd: &OwnedFd, data: &[u8]) -> std::io::Result<()> {
    let file = File::from(fd.try_clone()?);
    let len = file.metadata()?.len();
    let put = |at: u64, bytes: &[u8]| -> std::io::Result<()> {
        let room = usize::try_from(len.saturating_sub(at)).unwrap_or(usize::MAX);
        let bytes = &bytes[..bytes.len().min(room)];
        if bytes.is_empty() {
            return Ok(());
        }
        file.write_all_at(bytes, at)
    };
    let (head, rest) = data.split_at(data.len().min(12));
    put(0, head)?;
    let (controls, rest) = rest.split_at(rest.len().min(48));
    for (index, fields) in controls.chunks(24).enumerate() {
        let base = (offset_of!(Header, rings) + index * std::mem::size_of::<Control>()) as u64;
        // (offset in the control block, offset in the input, width) of each field.
        for (at, from, width) in [
            (0u64, 0usize, 8usize),
            (64, 8, 8),
            (128, 16, 4),
            (192, 20, 4),
        ] {
            if let Some(bytes) = fields.get(from..(from + width).min(fields.len())) {
                put(base + at, bytes)?;
            }
        }
    }
    let capacity = len.saturating_sub(HEADER_PAGE as u64) / 2;
    put(HEADER_PAGE as u64, rest)?;
    put(HEADER_PAGE as u64 + capacity, rest)
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
