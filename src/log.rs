//! The error log: gunicorn-style lines on stderr, `[time] [pid] [LEVEL] message`.
//!
//! Each process formats its own lines and writes each with one `write`, so lines from the
//! master, the front tier and the workers interleave whole on a shared stderr. The role
//! of a child process is named in its lines so they can be told apart.
//!
//! With `--error-logfile FILE` the file (opened for appending) becomes every process's
//! stderr, so Python's tracebacks, `wsgi.errors` and faulthandler dumps land in it too.
//! On USR1 each process opens the file again by name and puts it in place of stderr: the
//! master first, then (sent by the master) every child, in a signal handler that does
//! only that (open and dup2 are async-signal-safe), so logrotate can move the file away.
//! The handler also counts the signal ([`usr1_count`]): the front tier's access log
//! writer reopens its file when the count moves.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

static ROLE: OnceLock<&'static str> = OnceLock::new();

/// Names this process's role in its log lines; called once, right after a fork.
pub fn set_role(role: &'static str) {
    let _ = ROLE.set(role);
}

/// The error log file, when it is not the stderr rwsgi was started with.
static LOG_PATH: OnceLock<CString> = OnceLock::new();

/// Makes `path` this process's stderr (and so its children's), remembering it for
/// [`reopen`]. Called once, before the first fork.
pub fn redirect_stderr(path: &Path) -> io::Result<()> {
    // Absolute: --chdir must not change which file a reopen finds.
    let path = std::path::absolute(path)?;
    let path = CString::new(path.into_os_string().into_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    open_as_stderr(&path)?;
    let _ = LOG_PATH.set(path);
    Ok(())
}

/// Whether the error log is a file (which USR1 reopens).
pub fn logs_to_file() -> bool {
    LOG_PATH.get().is_some()
}

/// Opens the error log file again in place of stderr (USR1, in the master).
pub fn reopen() -> io::Result<()> {
    LOG_PATH.get().map_or(Ok(()), |path| open_as_stderr(path))
}

/// Makes USR1 reopen the error log in this process: called in every child right after
/// the fork, so that a USR1 never ends a child, even one still booting.
pub fn reopen_on_usr1() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_usr1),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions (open, dup2, close).
    let _ = unsafe { sigaction(Signal::SIGUSR1, &action) };
}

/// USR1 signals this process has received since it started (children: since the fork).
static USR1_SEEN: AtomicU64 = AtomicU64::new(0);

/// How many USR1 this child has received: a file other than stderr (the access log) is
/// reopened by whoever writes it when the count moves, outside the signal handler.
pub fn usr1_count() -> u64 {
    USR1_SEEN.load(Ordering::Acquire)
}

extern "C" fn on_usr1(_: libc::c_int) {
    // An atomic add is async-signal-safe (lock-free, no allocation).
    USR1_SEEN.fetch_add(1, Ordering::AcqRel);
    // SAFETY: errno is this thread's; it is put back so the interrupted code sees its own.
    let errno = unsafe { *libc::__errno_location() };
    if let Some(path) = LOG_PATH.get() {
        let _ = open_as_stderr(path);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Opens `path` for appending and puts it on descriptor 2. Async-signal-safe: no
/// allocation, only system calls.
fn open_as_stderr(path: &CStr) -> io::Result<()> {
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup2 onto 2 replaces stderr atomically; `fd` is ours to close after.
    let duplicated = unsafe { libc::dup2(fd, libc::STDERR_FILENO) };
    let result = if duplicated < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `fd` was opened above and nothing else refers to it.
    unsafe { libc::close(fd) };
    result
}

/// Installs the subscriber writing to stderr, at `level` (`--log-level`), else the one
/// in `RWSGI_LOG`, else info.
pub fn init(level: Option<&str>) {
    let chosen = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RWSGI_LOG").ok());
    let level = match chosen.as_deref() {
        Some("debug") => Level::DEBUG,
        Some("trace") => Level::TRACE,
        Some("warning") | Some("warn") => Level::WARN,
        // tracing has no level above error: critical is error.
        Some("error") | Some("critical") => Level::ERROR,
        _ => Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(GunicornFormat)
        .try_init();
}

struct GunicornFormat;

impl<S, N> FormatEvent<S, N> for GunicornFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        write!(
            writer,
            "[{}] [{}] [{}] ",
            Timestamp::now(),
            std::process::id(),
            level
        )?;
        if let Some(role) = ROLE.get() {
            write!(writer, "[{role}] ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// A UTC wall-clock time printed as `2026-11-25 03:20:00 +0000`.
pub struct Timestamp(u64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = Civil::from_unix(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        )
    }
}

/// A UTC date and time of day, broken down for printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// The year, as 2026.
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59.
    pub second: u32,
}

impl Civil {
    /// The date and time `secs` seconds after 1970-01-01 00:00:00 UTC.
    pub fn from_unix(secs: u64) -> Civil {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Civil {
            year: yoe + era * 400 + (month <= 2) as i64,
            month: month as u32,
            day: day as u32,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn timestamps() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01 00:00:00 +0000");
        assert_eq!(
            Timestamp(1_795_000_000).to_string(),
            "2026-11-18 11:06:40 +0000"
        );
        assert_eq!(
            Timestamp(951_782_400).to_string(),
            "2000-02-29 00:00:00 +0000"
        );
    }
}
