//! The `--reload` watcher: a child process of its own (the master must never run a
//! thread or a watcher, DESIGN.md §1) that watches the application's source trees and,
//! once a burst of changes has settled, asks the master to reload the workers (SIGHUP,
//! the same reload an operator asks for).
//!
//! It watches, with inotify through `notify`, every directory under the working
//! directory (after `--chdir`), the application's own directory and each `--pythonpath`,
//! one directory at a time (not recursively), so that the trees it skips — version
//! control, caches, virtualenvs (any directory with a `pyvenv.cfg`), `node_modules` —
//! cost no inotify watch. A directory created later is watched when it appears.
//!
//! A change is a file written, created, removed, renamed or touched whose name ends in
//! `.py` or matches a `--reload-extra-file` glob. An editor's save is several events
//! (a temporary file, a rename, a metadata update): they are one change once no event
//! has come for [`SETTLE`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher as _};
use tracing::{info, warn};

use crate::config::Settings;

/// How long the tree must be quiet before a burst of events counts as one change.
const SETTLE: Duration = Duration::from_millis(150);

/// Directory names never watched.
const SKIPPED: [&str; 10] = [
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "node_modules",
    ".venv",
    ".tox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
];

/// Runs the watcher until the master goes; returns the exit code.
pub fn run(settings: &Settings, master: Pid) -> i32 {
    let extra = match extra_globs(settings) {
        Ok(extra) => extra,
        Err(err) => {
            warn!("--reload-extra-file: {err}");
            return 1;
        }
    };
    let (events, received) = mpsc::channel();
    let mut watcher = match notify::recommended_watcher(events) {
        Ok(watcher) => watcher,
        Err(err) => {
            warn!("--reload: cannot watch files: {err}");
            return 1;
        }
    };
    let mut watched = HashSet::new();
    for root in roots(settings) {
        watch_tree(&mut watcher, &root, &mut watched);
    }
    // An extra pattern may name files outside those trees: watch where it starts.
    for pattern in settings.reload.iter().flat_map(|r| &r.extra) {
        let base: PathBuf = Path::new(pattern)
            .components()
            .take_while(|c| {
                !c.as_os_str()
                    .to_string_lossy()
                    .contains(['*', '?', '[', '{'])
            })
            .collect();
        match base.is_dir() {
            true => watch_tree(&mut watcher, &base, &mut watched),
            // A single file: its directory alone, not the tree under it.
            false => {
                if let Some(parent) = base.parent().filter(|p| p.is_dir())
                    && !watched.contains(parent)
                    && watcher.watch(parent, RecursiveMode::NonRecursive).is_ok()
                {
                    watched.insert(parent.to_path_buf());
                }
            }
        }
    }
    info!(
        "Watching {} directories for changes to *.py{}",
        watched.len(),
        match settings.reload.as_ref().map_or(0, |r| r.extra.len()) {
            0 => String::new(),
            n => format!(" and {n} more patterns"),
        }
    );
    loop {
        // The master's death (PR_SET_PDEATHSIG) ends this process; a closed channel
        // means the watcher itself failed.
        let Ok(event) = received.recv() else { return 1 };
        let mut changed = note(&mut watcher, event, &extra, &mut watched);
        if changed.is_none() {
            continue;
        }
        loop {
            match received.recv_timeout(SETTLE) {
                Ok(event) => {
                    let more = note(&mut watcher, event, &extra, &mut watched);
                    changed = changed.or(more);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return 1,
            }
        }
        if let Some(path) = changed {
            info!("Detected a change in {}; reloading", path.display());
            if kill(master, Signal::SIGHUP).is_err() {
                return 0; // The master is gone.
            }
        }
    }
}

/// The directories whose trees are watched: the working directory, the application's
/// own and each `--pythonpath`, without one inside another.
fn roots(settings: &Settings) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    let candidates = std::iter::once(PathBuf::from("."))
        .chain(settings.app.dir.clone())
        .chain(settings.pythonpath.iter().cloned());
    for candidate in candidates {
        let Ok(root) = candidate.canonicalize() else {
            continue;
        };
        if roots.iter().any(|r| root.starts_with(r)) {
            continue;
        }
        roots.retain(|r| !r.starts_with(&root));
        roots.push(root);
    }
    roots
}

fn extra_globs(settings: &Settings) -> Result<GlobSet, globset::Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in settings.reload.iter().flat_map(|r| &r.extra) {
        builder.add(Glob::new(pattern)?);
    }
    builder.build()
}

/// Whether a directory is one not to watch (see [`SKIPPED`], and virtualenvs).
fn skipped(dir: &Path) -> bool {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    SKIPPED.contains(&name) || dir.join("pyvenv.cfg").exists()
}

/// Watches `dir` and every directory under it that is not skipped.
fn watch_tree(watcher: &mut impl notify::Watcher, dir: &Path, watched: &mut HashSet<PathBuf>) {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if skipped(&dir) || watched.contains(&dir) {
            continue;
        }
        if let Err(err) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            // Most likely the inotify watch limit: say so once per directory.
            warn!("--reload: cannot watch {}: {err}", dir.display());
            continue;
        }
        watched.insert(dir.clone());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // Symbolic links are not followed: a link to / must not watch the disk.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
}

/// Looks at one event: watches a directory that appeared, and returns the path it
/// changed if that path is one the workers' code may depend on.
fn note(
    watcher: &mut impl notify::Watcher,
    event: notify::Result<notify::Event>,
    extra: &GlobSet,
    watched: &mut HashSet<PathBuf>,
) -> Option<PathBuf> {
    let event = event.ok()?;
    let relevant = match event.kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any) => true,
        // A touch (mtime) restarts, as gunicorn's reloader does.
        EventKind::Modify(ModifyKind::Metadata(_)) => true,
        _ => false,
    };
    if !relevant {
        return None;
    }
    let mut changed = None;
    for path in event.paths {
        if path.ancestors().skip(1).any(skipped) {
            continue;
        }
        if path.is_dir() {
            watch_tree(watcher, &path, watched);
            continue;
        }
        let python = path.extension().is_some_and(|e| e == "py");
        if python || extra.is_match(&path) {
            changed = changed.or(Some(path));
        }
    }
    changed
}
