//! Binding the public sockets. The master binds them once; every front tier it forks
//! inherits them, so a restarted front tier never leaves the port closed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::BindAddr;

/// A bound, listening socket and the address it really got (port 0 resolved).
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub fd: OwnedFd,
    /// The bound address (for an inherited socket, the address it is bound to).
    pub addr: BindAddr,
    /// Inherited (`fd://N`, socket activation): its Unix socket file is not ours to
    /// remove.
    pub inherited: bool,
}

impl Listener {
    /// The raw descriptor, for handing to the front tier after fork.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Binds every address, or fails naming the first that cannot be bound.
pub fn bind_all(addrs: &[BindAddr], backlog: i32) -> Result<Vec<Listener>, String> {
    addrs
        .iter()
        .map(|addr| bind(addr, backlog).map_err(|err| format!("Can't bind to {addr}: {err}")))
        .collect()
}

fn bind(addr: &BindAddr, backlog: i32) -> io::Result<Listener> {
    if let BindAddr::Fd(fd) = addr {
        return adopt(*fd);
    }
    let socket = match addr {
        BindAddr::Tcp(sa) => {
            let socket = Socket::new(Domain::for_address(*sa), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            if sa.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&SockAddr::from(*sa))?;
            socket
        }
        BindAddr::Unix(path) => {
            // A socket file left by an earlier run is replaced; any other file is not.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if !meta.file_type().is_socket() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is in the way",
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            socket.bind(&SockAddr::unix(path)?)?;
            socket
        }
        BindAddr::Fd(_) => return Err(io::Error::other("an inherited socket is adopted")),
    };
    socket.listen(backlog)?;
    let bound = match addr {
        BindAddr::Tcp(_) => socket
            .local_addr()?
            .as_socket()
            .map(BindAddr::Tcp)
            .ok_or_else(|| io::Error::other("bound address is not an IP address"))?,
        other => other.clone(),
    };
    Ok(Listener {
        fd: socket.into(),
        addr: bound,
        inherited: false,
    })
}

/// Takes over listening socket `fd`, inherited from whoever started rwsgi.
fn adopt(fd: RawFd) -> io::Result<Listener> {
    // F_GETFD fails on a descriptor that is not open: then it is not ours to take.
    // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open, was handed to this process to listen on (the
    // meaning of fd://N and of LISTEN_FDS), and the configuration admits each number once,
    // so nothing else in the process owns it.
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let not_listening = || io::Error::other("not a listening stream socket");
    if socket.r#type().map_err(|_| not_listening())? != Type::STREAM
        || !socket.is_listener().map_err(|_| not_listening())?
    {
        // Not ours after all: give the descriptor back rather than closing it.
        let _ = socket.into_raw_fd();
        return Err(not_listening());
    }
    let local = socket.local_addr()?;
    let addr = match (local.as_socket(), local.as_pathname()) {
        (Some(ip), _) => BindAddr::Tcp(ip),
        (None, Some(path)) => BindAddr::Unix(path.to_path_buf()),
        (None, None) => return Err(io::Error::other("an unnamed socket")),
    };
    socket.set_cloexec(true)?;
    Ok(Listener {
        fd: socket.into(),
        addr,
        inherited: true,
    })
}

/// Removes the socket files of Unix listeners (at the master's exit).
pub fn unlink_unix(listeners: &[Listener]) {
    for listener in listeners.iter().filter(|l| !l.inherited) {
        if let BindAddr::Unix(path) = &listener.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}
