//! Unit tests of the shared-memory rings: bytes round-trip across the wrap point at every
//! offset, a full ring refuses whole pushes, hostile headers and positions give errors
//! and never panics, the park handshake never loses a wake-up, and two mappings (and two
//! processes) see the same bytes.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::*;

/// `len` bytes of a pattern that differs for every `seed` and position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn pop_all(ring: Ring<'_>) -> Vec<u8> {
    let mut out = BytesMut::new();
    ring.pop_into(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

/// Moves both positions of a ring forward by `n` bytes.
fn advance(ring: Ring<'_>, n: usize) {
    assert!(ring.push(&vec![0xee; n]).unwrap());
    assert_eq!(pop_all(ring).len(), n);
}

#[test]
fn capacity_is_rounded_up_to_a_power_of_two_page() {
    for (asked, got) in [
        (0, 4096),
        (1, 4096),
        (4096, 4096),
        (4097, 8192),
        (DEFAULT_CAPACITY, DEFAULT_CAPACITY),
    ] {
        let (map, _fd) = RingMap::create(asked).unwrap();
        assert_eq!(
            (map.capacity(), map.to_worker().free().unwrap()),
            (got, got)
        );
    }
    assert!(matches!(
        RingMap::create(MAX_CAPACITY + 1),
        Err(RingError::Capacity(_))
    ));
    assert!(matches!(
        RingMap::create(usize::MAX),
        Err(RingError::Capacity(_))
    ));
}

/// "Shotgun" test: messages of many sizes start at every offset of the data area, so
/// every wrap point is crossed by each size, in both rings.
#[test]
fn every_wrap_offset_round_trips() {
    let (map, _fd) = RingMap::create(4096).unwrap();
    let sizes = [1, 2, 3, 7, 8, 63, 64, 65, 1000, 4095, 4096];
    for ring in [map.to_worker(), map.to_front()] {
        for start in 0..4096 {
            for (i, &size) in sizes.iter().enumerate() {
                let message = pattern((start * 16 + i) as u64, size);
                assert!(ring.push(&message).unwrap(), "size {size} at {start}");
                assert_eq!(ring.pending().unwrap(), size);
                assert_eq!(pop_all(ring), message, "size {size} at {start}");
                // Back to the same offset plus one for the next start.
                advance(ring, 4096 - size % 4096);
            }
            advance(ring, 1);
        }
    }
}

#[test]
fn pops_split_at_any_point_give_the_same_stream() {
    let (map, _fd) = RingMap::create(4096).unwrap();
    let ring = map.to_worker();
    advance(ring, 4000); // the stream below crosses the wrap point
    let message = pattern(7, 3000);
    for max in [1, 2, 5, 96, 97, 1000, 2999] {
        assert!(ring.push(&message).unwrap());
        let mut out = BytesMut::new();
        while ring.pending().unwrap() > 0 {
            let before = out.len();
            let n = ring.pop_into(&mut out, max).unwrap();
            assert!(n <= max && out.len() == before + n);
        }
        assert_eq!(&out[..], &message[..], "max {max}");
    }
}

#[test]
fn peeks_skips_and_pops_into_slices_across_the_wrap_give_the_same_stream() {
    let (map, _fd) = RingMap::create(4096).unwrap();
    let ring = map.to_worker();
    for start in [0, 1, 3990, 4000, 4095] {
        advance(ring, start);
        let message = pattern(start as u64, 3000);
        assert!(ring.push(&message).unwrap());
        // Peeks read without consuming, at any offset; past the end they read nothing.
        let mut peeked = [0u8; 10];
        assert!(ring.peek(95, &mut peeked).unwrap());
        assert_eq!(peeked, message[95..105]);
        assert!(ring.peek(2990, &mut peeked).unwrap());
        assert!(!ring.peek(2991, &mut peeked).unwrap());
        assert_eq!(ring.pending().unwrap(), 3000);
        // A skip consumes without copying; then slices take the rest in pieces.
        assert!(ring.skip(10).unwrap());
        assert!(!ring.skip(3000).unwrap());
        let mut out = vec![std::mem::MaybeUninit::new(0u8); 2990];
        let mut filled = 0;
        for piece in [1, 700, 1500] {
            let n = ring.pop_to(&mut out[filled..filled + piece]).unwrap();
            assert_eq!(n, piece);
            filled += n;
        }
        assert_eq!(ring.pop_to(&mut out[filled..]).unwrap(), 2990 - filled);
        assert_eq!(ring.pop_to(&mut out[..]).unwrap(), 0);
        // SAFETY: every element was initialised (to 0, then by the pops).
        let out: Vec<u8> = out.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(out, message[10..], "from {start}");
        assert_eq!(ring.free().unwrap(), 4096);
    }
}

#[test]
fn push_is_all_or_nothing_when_full() {
    let (map, _fd) = RingMap::create(4096).unwrap();
    let ring = map.to_front();
    advance(ring, 100);
    assert!(ring.push(&pattern(1, 4086)).unwrap());
    assert_eq!((ring.free().unwrap(), ring.pending().unwrap()), (10, 4086));
    assert!(!ring.push(&[1; 11]).unwrap(), "11 bytes do not fit in 10");
    assert_eq!(
        (ring.free().unwrap(), ring.pending().unwrap()),
        (10, 4086),
        "nothing written"
    );
    assert!(ring.push(&[2; 10]).unwrap());
    assert_eq!((ring.free().unwrap(), ring.pending().unwrap()), (0, 4096));
    assert!(!ring.push(&[3]).unwrap());
    assert!(ring.push(&[]).unwrap(), "nothing always fits");
    assert!(!ring.push(&[0; 4097]).unwrap());
    let mut expected = pattern(1, 4086);
    expected.extend_from_slice(&[2; 10]);
    assert_eq!(pop_all(ring), expected);
    assert_eq!((ring.free().unwrap(), ring.pending().unwrap()), (4096, 0));
}

#[test]
fn push_partial_writes_what_fits() {
    let (map, _fd) = RingMap::create(4096).unwrap();
    let ring = map.to_worker();
    let body = pattern(3, 10_000);
    let mut got = Vec::new();
    let mut sent = 0;
    while sent < body.len() {
        sent += ring.push_partial(&body[sent..]).unwrap();
        assert_eq!(ring.free().unwrap() + ring.pending().unwrap(), 4096);
        got.extend(pop_all(ring));
    }
    assert_eq!(got, body);
    assert_eq!(ring.push_partial(&[]).unwrap(), 0);
}

#[test]
fn free_and_pending_add_up_and_rings_are_independent() {
    let (map, _fd) = RingMap::create(8192).unwrap();
    let (requests, responses) = (map.to_worker(), map.to_front());
    let mut out = BytesMut::new();
    for step in 1..50usize {
        let n = step * 37 % 900;
        assert!(requests.push(&pattern(step as u64, n)).unwrap());
        let pending = requests.pending().unwrap();
        assert_eq!(requests.free().unwrap(), 8192 - pending);
        assert_eq!(
            (responses.pending().unwrap(), responses.free().unwrap()),
            (0, 8192)
        );
        if step % 3 == 0 {
            let taken = requests.pop_into(&mut out, pending / 2).unwrap();
            assert_eq!(taken, pending / 2);
            assert_eq!(requests.pending().unwrap(), pending - taken);
        }
    }
}

// ---- hostile regions ----

/// Writes a native-endian integer at `at` in the region behind `fd`, as the worker could.
fn poke(fd: &OwnedFd, at: u64, bytes: &[u8]) {
    File::from(fd.try_clone().unwrap())
        .write_all_at(bytes, at)
        .unwrap();
}

const TO_WORKER_WRITE: u64 = 64;
const TO_WORKER_READ: u64 = 128;
const TO_FRONT_WRITE: u64 = 320;
const TO_FRONT_READ: u64 = 384;

fn is_corrupt<T: fmt::Debug>(result: Result<T, RingError>) -> bool {
    matches!(result, Err(RingError::Corrupt(_)))
}

#[test]
fn write_position_beyond_capacity_is_corrupt_and_reads_nothing() {
    let (map, fd) = RingMap::create(4096).unwrap();
    let ring = map.to_front();
    for lie in [4097u64, u64::MAX, 1 << 40, u64::MAX / 2] {
        poke(&fd, TO_FRONT_WRITE, &lie.to_ne_bytes());
        let mut out = BytesMut::new();
        assert!(is_corrupt(ring.pop_into(&mut out, usize::MAX)), "{lie}");
        assert_eq!(
            (out.len(), out.capacity()),
            (0, 0),
            "nothing read or allocated"
        );
        assert!(is_corrupt(ring.pending()));
        assert!(is_corrupt(ring.park()));
    }
    // A lie within bounds is only garbage bytes, which the frame decoder judges.
    poke(&fd, TO_FRONT_WRITE, &4096u64.to_ne_bytes());
    assert_eq!(pop_all(ring).len(), 4096);
}

#[test]
fn read_position_ahead_of_write_is_corrupt() {
    let (map, fd) = RingMap::create(4096).unwrap();
    // The producer's view: the consumer claims to have read bytes never written.
    let requests = map.to_worker();
    assert!(requests.push(b"GET").unwrap());
    poke(&fd, TO_WORKER_READ, &10u64.to_ne_bytes());
    assert!(is_corrupt(requests.free()));
    assert!(is_corrupt(requests.push(b"x")));
    assert!(is_corrupt(requests.push_partial(b"x")));
    assert!(is_corrupt(requests.wait_for_room(1)));
    // Even when it lies about its read position, the producer's own stays ours.
    poke(&fd, TO_WORKER_READ, &3u64.to_ne_bytes());
    poke(&fd, TO_WORKER_WRITE, &9999u64.to_ne_bytes());
    assert_eq!(requests.free().unwrap(), 4096);
    // The consumer's view: the producer moved its write position back.
    let responses = map.to_front();
    advance(responses, 20);
    poke(&fd, TO_FRONT_WRITE, &5u64.to_ne_bytes());
    assert!(is_corrupt(responses.pending()));
    assert!(is_corrupt(responses.pop_into(&mut BytesMut::new(), 10)));
}

/// A memfd of `len` bytes holding `header`, with `seals` added.
fn region(header: &[u8], len: u64, seals: SealFlag) -> OwnedFd {
    let fd = memfd_create(c"test", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
    let file = File::from(fd);
    file.set_len(len).unwrap();
    file.write_all_at(header, 0).unwrap();
    let fd = OwnedFd::from(file);
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    fd
}

fn header_bytes(magic: &[u8; 4], version: u32, capacity: u32) -> Vec<u8> {
    let mut header = magic.to_vec();
    header.extend_from_slice(&version.to_ne_bytes());
    header.extend_from_slice(&capacity.to_ne_bytes());
    header
}

fn open_error(fd: OwnedFd) -> String {
    match RingMap::open(fd) {
        Ok(map) => panic!("opened a bad region: {map:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn open_accepts_what_create_makes() {
    let sealed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    let good = header_bytes(RING_MAGIC, RING_VERSION, 4096);
    let map = RingMap::open(region(&good, 3 * 4096, sealed)).unwrap();
    assert_eq!(map.capacity(), 4096);
}

#[test]
fn open_refuses_bad_headers_sizes_and_seals() {
    let sealed = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    let good = header_bytes(RING_MAGIC, RING_VERSION, 4096);
    let cases: Vec<(&str, OwnedFd)> = vec![
        (
            "magic",
            region(&header_bytes(b"RWSG", RING_VERSION, 4096), 3 * 4096, sealed),
        ),
        (
            "version",
            region(&header_bytes(RING_MAGIC, 2, 4096), 3 * 4096, sealed),
        ),
        (
            "capacity",
            region(
                &header_bytes(RING_MAGIC, RING_VERSION, 5000),
                4096 + 10_000,
                sealed,
            ),
        ),
        (
            "capacity",
            region(
                &header_bytes(RING_MAGIC, RING_VERSION, 2048),
                3 * 4096,
                sealed,
            ),
        ),
        (
            "does not match",
            region(
                &header_bytes(RING_MAGIC, RING_VERSION, 8192),
                3 * 4096,
                sealed,
            ),
        ),
        ("does not match", region(&good, 3 * 4096 + 1, sealed)),
        ("size out of range", region(&good, 4096, sealed)),
        ("size out of range", region(&[], 0, sealed)),
        ("not sealed", region(&good, 3 * 4096, SealFlag::empty())),
        (
            "not sealed",
            region(
                &good,
                3 * 4096,
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
            ),
        ),
        (
            "not sealed",
            region(
                &good,
                3 * 4096,
                SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        ),
    ];
    for (expected, fd) in cases {
        let error = open_error(fd);
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
    }
    // Not a memfd at all: it has no seals to read.
    let file = tempfile::tempfile().unwrap();
    assert!(matches!(RingMap::open(file.into()), Err(RingError::Io(_))));
}

#[test]
fn open_refuses_positions_that_cannot_be_true() {
    for (at, value) in [
        (TO_WORKER_WRITE, 4097u64),
        (TO_FRONT_READ, 1),
        (TO_FRONT_WRITE, u64::MAX),
    ] {
        let (_map, fd) = RingMap::create(4096).unwrap();
        poke(&fd, at, &value.to_ne_bytes());
        assert!(open_error(fd).contains("corrupt"), "{at} = {value}");
    }
}

#[test]
fn scribbled_garbage_never_panics() {
    // The fuzz target's entry point over deterministic pseudo-random regions; inputs are
    // biased towards small positions so that some pass the checks and reach the copies.
    let mut state: u64 = 0x2545f4914f6cdd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let len = (next() % 200) as usize;
        let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && input.len() >= 60 {
            input[..12].copy_from_slice(&header_bytes(RING_MAGIC, RING_VERSION, 4096));
            for field in [12, 36] {
                let write = next() % 6000;
                let read = write.saturating_sub(next() % 5000);
                input[field..field + 8].copy_from_slice(&write.to_ne_bytes());
                input[field + 8..field + 16].copy_from_slice(&read.to_ne_bytes());
            }
        }
        crate::protocol::fuzz_ring(&input);
    }
}

// ---- two mappings, two threads, two processes ----

#[test]
fn a_second_mapping_of_the_fd_sees_the_same_bytes() {
    let (front, fd) = RingMap::create(4096).unwrap();
    let requests = front.to_worker();
    assert!(requests.push(b"early request").unwrap()); // before the worker maps it
    let worker = RingMap::open(fd.try_clone().unwrap()).unwrap();
    assert_eq!(pop_all(worker.to_worker()), b"early request");
    assert_eq!(
        requests.free().unwrap(),
        4096,
        "the front sees the worker's read position"
    );
    for i in 0..300 {
        let message = pattern(i, (i as usize * 97) % 3000 + 1);
        assert!(worker.to_front().push(&message).unwrap());
        assert_eq!(front.to_front().pending().unwrap(), message.len());
        assert_eq!(pop_all(front.to_front()), message);
    }
}

/// Reads the doorbell, failing the test if it does not ring within `limit`.
fn wait_for_doorbell(socket: &mut UnixStream, what: &str) {
    let mut byte = [0u8; 64];
    match socket.read(&mut byte) {
        Ok(n) if n > 0 => {}
        Ok(_) => panic!("{what}: peer closed"),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("{what}: lost wake-up (no doorbell in time)")
        }
        Err(error) => panic!("{what}: {error}"),
    }
}

/// Two threads move a numbered stream through a small ring, each sleeping on a real
/// socket whenever the ring is empty (consumer) or full (producer). A lost wake-up leaves
/// one asleep and fails the read timeout; every message must arrive whole and in order.
#[test]
fn park_handshake_never_loses_a_wake_up() {
    const MESSAGES: u32 = 200_000;
    let (map, _fd) = RingMap::create(4096).unwrap();
    let (mut front_bell, mut worker_bell) = UnixStream::pair().unwrap();
    for socket in [&front_bell, &worker_bell] {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    let started = Instant::now();
    let (sleeps_producer, sleeps_consumer) = std::thread::scope(|scope| {
        let ring = map.to_worker();
        let consumer = scope.spawn(move || {
            let (mut expected, mut sleeps) = (0u32, 0u32);
            let mut buf = BytesMut::new();
            while expected < MESSAGES {
                ring.pop_into(&mut buf, usize::MAX).unwrap();
                if ring.take_waiting() {
                    worker_bell.write_all(&[1]).unwrap();
                }
                while buf.len() >= 4 {
                    let number = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    assert_eq!(number, expected, "message out of order");
                    let message = buf.split_to(4 + (number % 29) as usize);
                    assert!(message[4..].iter().all(|&b| b == number as u8));
                    expected += 1;
                }
                if expected < MESSAGES && ring.park().unwrap() {
                    sleeps += 1;
                    wait_for_doorbell(&mut worker_bell, "consumer");
                    ring.unpark();
                }
            }
            sleeps
        });
        let mut sleeps = 0u32;
        for number in 0..MESSAGES {
            let mut message = number.to_le_bytes().to_vec();
            message.resize(4 + (number % 29) as usize, number as u8);
            while !ring.push(&message).unwrap() {
                if ring.wait_for_room(message.len()).unwrap() {
                    sleeps += 1;
                    wait_for_doorbell(&mut front_bell, "producer");
                }
            }
            if ring.take_parked() {
                front_bell.write_all(&[1]).unwrap();
            }
            // Now and then let the consumer catch up and fall asleep.
            if number % 997 == 0 {
                std::thread::yield_now();
            }
        }
        (sleeps, consumer.join().unwrap())
    });
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        sleeps_consumer > 0,
        "the consumer never slept: nothing was tested"
    );
    eprintln!("producer slept {sleeps_producer} times, consumer {sleeps_consumer}");
}

/// A forked child maps nothing new: it opens a dup of the fd as a worker would, echoes
/// one message back and exits. The parent checks the echo.
#[test]
fn another_process_sees_the_same_ring() {
    let (front, fd) = RingMap::create(4096).unwrap();
    let worker_fd = fd.try_clone().unwrap();
    let message = pattern(99, 3000);
    // Allocated before the fork: the child must not allocate (another test thread may
    // hold the allocator's lock at the moment of the fork).
    let mut child_buf = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: the child only makes system calls (mmap, fcntl, fstat, clock reads) and
    // raw copies into memory allocated before the fork, then leaves with _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let code = match RingMap::open(worker_fd) {
                Ok(worker) => loop {
                    let ring = worker.to_worker();
                    match ring.pending() {
                        Ok(n) if n == message.len() => {
                            let ok = ring.pop_into(&mut child_buf, n).is_ok()
                                && worker.to_front().push(&child_buf).unwrap_or(false);
                            break if ok { 0 } else { 2 };
                        }
                        Ok(_) if Instant::now() < deadline => std::hint::spin_loop(),
                        _ => break 3,
                    }
                },
                Err(_) => 1,
            };
            // SAFETY: leaving without running the parent's destructors or test harness.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(worker_fd);
            assert!(front.to_worker().push(&message).unwrap());
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            assert_eq!(pop_all(front.to_front()), message);
            assert_eq!(front.to_worker().free().unwrap(), 4096);
        }
    }
}
