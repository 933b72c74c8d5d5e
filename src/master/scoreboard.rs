//! A page of memory shared by the master and every child it forks, for the few facts
//! that must be agreed on across processes without a message: today, which worker
//! reports a failed application import (so its traceback is printed once, not once
//! per worker).
//!
//! The page is mapped `MAP_SHARED | MAP_ANONYMOUS` before the first fork, so every
//! child sees the same memory; each fact is an atomic.

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};

/// The layout of the shared page.
#[repr(C)]
struct Shared {
    /// 0; then [`CLAIMED`] once a process took on reporting an application import
    /// failure; then [`REPORTED`] once it has.
    boot_error_reported: AtomicU32,
}

const CLAIMED: u32 = 1;
const REPORTED: u32 = 2;

struct Board(NonNull<Shared>);

// SAFETY: the page is only reached through atomics, and it is never unmapped (it lives
// as long as the process).
unsafe impl Send for Board {}
unsafe impl Sync for Board {}

static BOARD: OnceLock<Board> = OnceLock::new();

/// Maps the shared page. Called by the master before its first fork; a failure only
/// means every worker prints its own traceback.
pub fn create() -> nix::Result<()> {
    if BOARD.get().is_some() {
        return Ok(());
    }
    let len = NonZeroUsize::new(std::mem::size_of::<Shared>().max(1)).unwrap_or(NonZeroUsize::MIN);
    // SAFETY: a fresh anonymous mapping aliases nothing; it is zero-filled, which is a
    // valid `Shared` (atomics of zero).
    let page = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )?
    };
    let _ = BOARD.set(Board(page.cast()));
    Ok(())
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: the mapping is valid, aligned (page-aligned) and never unmapped.
    BOARD.get().map(|board| unsafe { board.0.as_ref() })
}

/// Claims the right to report an application import failure: true for the first
/// process to ask (or when there is no shared page), false for all later ones.
pub fn claim_boot_error_report() -> bool {
    match shared() {
        Some(shared) => shared
            .boot_error_reported
            .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok(),
        None => true,
    }
}

/// The claimant has printed its report.
pub fn boot_error_reported() {
    if let Some(shared) = shared() {
        shared
            .boot_error_reported
            .store(REPORTED, Ordering::Release);
    }
}

/// Forgets that an import failure was reported (a reload's new code may fail anew).
pub fn reset_boot_error_report() {
    if let Some(shared) = shared() {
        shared.boot_error_reported.store(0, Ordering::Release);
    }
}

/// Waits (up to `limit`) until the claimant has printed its report, so that no process
/// exits, and makes the master stop everything, before the report is out.
pub fn wait_for_boot_error_report(limit: Duration) {
    let Some(shared) = shared() else { return };
    let deadline = Instant::now() + limit;
    while shared.boot_error_reported.load(Ordering::Acquire) != REPORTED
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}
