//! The error log: gunicorn-style lines on stderr, `[time] [pid] [LEVEL] message`.
//!
//! Each process formats its own lines and writes each with one `write`, so lines from the
//! master, the front tier and the workers interleave whole on a shared stderr. The role
//! of a child process is named in its lines so they can be told apart.

use std::fmt;
use std::sync::OnceLock;
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

/// Installs the subscriber writing to stderr. Level from `RWSGI_LOG` (default info).
pub fn init() {
    let level = match std::env::var("RWSGI_LOG").as_deref() {
        Ok("debug") => Level::DEBUG,
        Ok("trace") => Level::TRACE,
        Ok("warning") | Ok("warn") => Level::WARN,
        Ok("error") => Level::ERROR,
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
        let secs = self.0;
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
        let year = yoe + era * 400 + (month <= 2) as i64;
        write!(
            f,
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
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
