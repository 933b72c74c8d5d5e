//! SIGHUP re-reads the configuration (command line, environment, config file), as
//! gunicorn's HUP does, and the new workers take it. What the front tier or the master
//! itself were set up with cannot change while they run (HUP keeps the front tier and
//! its connections up, and the sockets stay bound): such changes are named in the log,
//! kept for the next restart or USR2, and the running value stays.

use tracing::{info, warn};

use super::Arbiter;
use crate::config::Settings;

impl Arbiter {
    /// Takes the settings `new` read on SIGHUP for every worker started from now on.
    pub(super) fn adopt(&mut self, mut new: Settings) {
        let old = &self.settings;
        let same =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
        let tls_sources = |s: &Settings| s.tls.as_ref().map(|t| (t.sources.clone(), t.hsts));
        // Set up once, by the master or in the front tier.
        let kept = [
            ("bind", same(&old.binds, &new.binds)),
            (
                "redirect_http",
                same(&old.redirect_http, &new.redirect_http),
            ),
            ("metrics_bind", same(&old.metrics_bind, &new.metrics_bind)),
            ("error_logfile", same(&old.error_log, &new.error_log)),
            ("chdir", same(&old.chdir, &new.chdir)),
            ("preload", old.preload == new.preload),
            ("reload", old.reload.is_some() == new.reload.is_some()),
            ("pid", same(&old.pidfile, &new.pidfile)),
            ("umask", same(&old.umask, &new.umask)),
            ("user/group", same(&old.credentials, &new.credentials)),
            ("front_threads", old.front_threads == new.front_threads),
            (
                "worker_class/threads",
                same(&old.worker_class, &new.worker_class),
            ),
            ("max_queue", old.max_queue == new.max_queue),
            ("prefetch", old.prefetch == new.prefetch),
            ("static/internal", same(&old.files, &new.files)),
            ("compress", same(&old.compress, &new.compress)),
            ("health_path", same(&old.health_path, &new.health_path)),
            (
                "limits and timeouts of the front tier",
                same(&old.limits, &new.limits),
            ),
            (
                "forwarded_allow_ips",
                same(&old.forwarded_allow, &new.forwarded_allow),
            ),
            ("tls/hsts", tls_sources(old) == tls_sources(&new)),
            (
                "acme",
                same(
                    &old.tls.as_ref().map(|t| &t.acme),
                    &new.tls.as_ref().map(|t| &t.acme),
                ),
            ),
        ];
        let changed: Vec<&str> = kept
            .iter()
            .filter(|(_, same)| !same)
            .map(|(name, _)| *name)
            .collect();
        if !changed.is_empty() {
            warn!(
                "HUP: changed settings that apply only after a restart or USR2 (the front tier \
                 and the sockets stay as they are): {}",
                changed.join(", ")
            );
        }
        new.binds = old.binds.clone();
        new.redirect_http = old.redirect_http.clone();
        new.metrics_bind = old.metrics_bind.clone();
        new.error_log = old.error_log.clone();
        new.chdir = old.chdir.clone();
        new.preload = old.preload;
        new.pidfile = old.pidfile.clone();
        new.umask = old.umask;
        new.credentials = old.credentials;
        // The scoreboard and the master's watch are laid out for the class at start.
        new.worker_class = old.worker_class;
        new.asgi_if_found = old.asgi_if_found;
        if new.reload.is_some() != old.reload.is_some() {
            new.reload = old.reload.clone();
        }
        // A count TTIN/TTOU set stays, unless the configuration itself changed it.
        let configured = new.workers;
        if configured == self.configured_workers {
            new.workers = old.workers;
        } else {
            info!("HUP: {configured} workers (was {})", old.workers);
        }
        self.configured_workers = configured;
        self.watchdog.set_timeout(new.timeout);
        self.settings = new;
    }
}
