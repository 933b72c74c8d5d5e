//! Telling a service manager how the server is doing: the pid file (`--pid`) and
//! systemd's readiness protocol (`NOTIFY_SOCKET`, `sd_notify(3)`).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::warn;

/// The pid file, removed when the master exits (if it still holds the master's pid).
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes the master's pid to `path` (through a temporary file and a rename, so a
    /// reader never sees it half written).
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut file = tempfile::NamedTempFile::new_in(directory)?;
        writeln!(file, "{pid}")?;
        file.persist(path).map_err(|err| err.error)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl PidFile {
    /// Moves the pid file to `path` (USR2: the old master's becomes `FILE.oldbin` so the
    /// new master can write `FILE`; and back if the new master fails).
    pub fn rename(&mut self, path: PathBuf) {
        match std::fs::rename(&self.path, &path) {
            Ok(()) => self.path = path,
            Err(err) => warn!(
                "cannot rename the pid file {} to {}: {err}",
                self.path.display(),
                path.display()
            ),
        }
    }

    /// Where the pid file is now.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == self.pid.to_string());
        if ours && let Err(err) = std::fs::remove_file(&self.path) {
            warn!("cannot remove the pid file {}: {err}", self.path.display());
        }
    }
}

/// systemd's notification socket, when rwsgi runs as a `Type=notify` service.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` from the environment (and removes it, so that the children
    /// do not speak for the service).
    pub fn from_env() -> Notifier {
        let Some(address) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { socket: None };
        };
        // SAFETY: the master never runs threads; nothing reads the environment meanwhile.
        unsafe { crate::process_env::remove("NOTIFY_SOCKET") };
        let address = address.to_string_lossy().into_owned();
        match UnixDatagram::unbound() {
            Ok(socket) => Notifier {
                socket: Some((socket, address)),
            },
            Err(err) => {
                warn!("cannot open a socket to NOTIFY_SOCKET: {err}");
                Notifier { socket: None }
            }
        }
    }

    /// The socket's address, to hand to a new master (USR2).
    pub fn address(&self) -> Option<&str> {
        self.socket.as_ref().map(|(_, address)| address.as_str())
    }

    /// Sends `state` (`READY=1`, `STOPPING=1`, …); failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some((socket, address)) = &self.socket else {
            return;
        };
        let sent = match address.strip_prefix('@') {
            // An abstract socket name (Linux).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
            }
            None => socket.send_to(state.as_bytes(), address),
        };
        if let Err(err) = sent {
            warn!("cannot notify the service manager ({address}): {err}");
        }
    }
}
