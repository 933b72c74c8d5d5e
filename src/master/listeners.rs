//! Binding the public sockets. The master binds them once; every front tier it forks
//! inherits them, so a restarted front tier never leaves the port closed.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::BindAddr;

/// A bound, listening socket and the address it really got (port 0 resolved).
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub fd: OwnedFd,
    /// The bound address.
    pub addr: BindAddr,
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
    };
    socket.listen(backlog)?;
    let bound = match addr {
        BindAddr::Tcp(_) => socket
            .local_addr()?
            .as_socket()
            .map(BindAddr::Tcp)
            .ok_or_else(|| io::Error::other("bound address is not an IP address"))?,
        BindAddr::Unix(path) => BindAddr::Unix(path.clone()),
    };
    Ok(Listener {
        fd: socket.into(),
        addr: bound,
    })
}

/// Removes the socket files of Unix listeners (at the master's exit).
pub fn unlink_unix(listeners: &[Listener]) {
    for listener in listeners {
        if let BindAddr::Unix(path) = &listener.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}
