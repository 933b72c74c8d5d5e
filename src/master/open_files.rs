//! The limit of open files, raised at start so that `--max-connections` can be met.
//!
//! Under systemd and most login shells the soft limit is 1024 while the hard limit is
//! far higher: left alone, the front tier would run out of descriptors near 1,000
//! connections whatever `--max-connections` says. As nginx's `worker_rlimit_nofile`
//! and Go's runtime do, the master raises the soft limit before it forks (every child
//! inherits it), only as far as the connections need: a far higher limit gains nothing
//! and some programs an app may start still use select(). The hard limit is the
//! operator's; when it is too low the log says so, naming both numbers.

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// Descriptors the front tier needs beyond its connections: listeners, the worker
/// channels, log files, request bodies spooled to disk, static files being sent.
const MARGIN: u64 = 256;

/// Raises the soft limit of open files towards what `max_connections` needs (never
/// above the hard limit, never lowering it), and logs what it did or could not do.
pub fn raise(max_connections: usize) {
    let needed = (max_connections as u64).saturating_add(MARGIN);
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => return warn!("cannot read the limit of open files: {err}"),
    };
    if hard < needed {
        warn!(
            "the hard limit of open files ({hard}) is below the {needed} that \
             --max-connections {max_connections} needs: connections beyond about {} will \
             wait; raise it (ulimit -Hn, systemd's LimitNOFILE=) or lower --max-connections",
            hard.saturating_sub(MARGIN)
        );
    }
    let target = needed.min(hard);
    if soft >= target {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => info!("Raised the soft limit of open files from {soft} to {target}"),
        Err(err) => warn!("cannot raise the soft limit of open files from {soft}: {err}"),
    }
}
