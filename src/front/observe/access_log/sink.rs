//! Where access log lines go: a shared buffer that a thread of its own writes out.
//!
//! A request's line is appended to the buffer under a short lock (a copy of ~200
//! bytes); no request ever waits for a `write(2)`. The writer thread takes the whole
//! buffer when it passes [`FLUSH_SIZE`] or every [`FLUSH_INTERVAL`], and writes it with
//! one `write_all`: lines are whole in the buffer, so they are whole in the file, and
//! only this thread writes. It is also the thread that reopens the file (by name) after
//! a USR1, so the signal handler does nothing but count.
//!
//! If the target cannot keep up (a blocked stdout pipe), the buffer stops at
//! [`MAX_BUFFERED`] and further lines are counted, then reported on the error log:
//! never dropped silently, never unbounded.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::config::AccessTarget;

/// A buffer this full is written out at once.
const FLUSH_SIZE: usize = 64 * 1024;
/// The longest a line waits in the buffer (and a USR1 for its reopen).
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Past this many buffered bytes, lines are dropped (and counted).
const MAX_BUFFERED: usize = 16 << 20;

/// The shared end: requests append lines to it.
pub struct Sink {
    state: Mutex<State>,
    /// Wakes the writer: a full buffer, or the end.
    wake: Condvar,
    /// Lines dropped because the buffer was full, not yet reported.
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    stopping: bool,
}

/// The writer thread, joined (after a last flush) by [`Writer::finish`].
pub struct Writer {
    sink: Arc<Sink>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }

    /// Appends one whole line (its newline included).
    pub fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        let before = state.buffer.len();
        if before + line.len() > MAX_BUFFERED {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.buffer.extend_from_slice(line);
        let crossed = before < FLUSH_SIZE && state.buffer.len() >= FLUSH_SIZE;
        drop(state);
        if crossed {
            self.wake.notify_one();
        }
    }
}

/// Opens `target` and starts the writer thread.
pub fn start(target: &AccessTarget) -> io::Result<(Arc<Sink>, Writer)> {
    let output = Output::open(target)?;
    let sink = Arc::new(Sink {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        dropped: AtomicU64::new(0),
    });
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn({
            let sink = sink.clone();
            move || write_loop(&sink, output)
        })?;
    Ok((
        sink.clone(),
        Writer {
            sink,
            thread: Some(thread),
        },
    ))
}

impl Writer {
    /// Writes what is buffered and stops the thread (the front tier is exiting).
    pub fn finish(mut self) {
        self.sink.lock().stopping = true;
        self.sink.wake.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("the access log writer panicked; its last lines are lost");
        }
    }
}

fn write_loop(sink: &Sink, mut output: Output) {
    let mut spare = Vec::new();
    let mut usr1 = crate::log::usr1_count();
    let mut failing = false;
    loop {
        let (batch, stopping) = {
            let mut state = sink.lock();
            let deadline = Instant::now() + FLUSH_INTERVAL;
            while state.buffer.len() < FLUSH_SIZE && !state.stopping {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = sink
                    .wake
                    .wait_timeout(state, deadline - now)
                    .map(|(state, _)| state)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            // The next buffer reuses the last one's memory.
            spare.clear();
            (
                std::mem::replace(&mut state.buffer, std::mem::take(&mut spare)),
                state.stopping,
            )
        };
        let seen = crate::log::usr1_count();
        if seen != usr1 {
            usr1 = seen;
            match output.reopen() {
                Ok(true) => info!("Handling signal: usr1; the access log was reopened"),
                Ok(false) => {}
                Err(err) => error!("Handling signal: usr1; cannot reopen the access log: {err}"),
            }
        }
        let dropped = sink.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            warn!("the access log could not keep up: {dropped} lines dropped");
        }
        if !batch.is_empty() {
            match output.write_all(&batch) {
                Ok(()) => failing = false,
                // Said once per run of failures, not once a batch.
                Err(err) if !failing => {
                    failing = true;
                    error!("cannot write the access log: {err}");
                }
                Err(_) => {}
            }
        }
        spare = batch;
        if stopping {
            return;
        }
    }
}

/// The open target.
enum Output {
    Stdout,
    File(File, std::path::PathBuf),
}

impl Output {
    fn open(target: &AccessTarget) -> io::Result<Output> {
        Ok(match target {
            AccessTarget::Stdout => Output::Stdout,
            AccessTarget::File(path) => Output::File(append(path)?, path.clone()),
        })
    }

    /// Opens the file again by name (logrotate moved it away); stdout stays as it is.
    /// Whether there was a file to reopen.
    fn reopen(&mut self) -> io::Result<bool> {
        match self {
            Output::File(file, path) => {
                *file = append(path)?;
                Ok(true)
            }
            Output::Stdout => Ok(false),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => {
                let mut stdout = io::stdout().lock();
                stdout.write_all(bytes)?;
                stdout.flush()
            }
            Output::File(file, _) => file.write_all(bytes),
        }
    }
}

fn append(path: &std::path::Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}
