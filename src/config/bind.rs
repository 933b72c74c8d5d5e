//! The `--bind` values: TCP addresses and Unix socket paths.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::path::PathBuf;

use super::error::ConfigError;

/// One address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    /// A TCP address (port 0 asks the system for a free port).
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A listening socket inherited as this file descriptor (`fd://N`, or systemd's
    /// socket activation); the master adopts it instead of binding.
    Fd(RawFd),
}

impl BindAddr {
    /// Parses gunicorn's forms: `HOST:PORT`, `[IPV6]:PORT`, `HOST` (port 8000), `:PORT`
    /// (every IPv4 interface), `tcp://` before any of these, `unix:PATH` (or
    /// `unix://PATH`) or `fd://N`.
    pub fn parse(text: &str) -> Result<BindAddr, ConfigError> {
        let bad = |why: &str| ConfigError::new("--bind", format!("{text:?}: {why}"));
        let full = text;
        let text = text.strip_prefix("tcp://").unwrap_or(text);
        if text.starts_with("unix:") && full.starts_with("tcp://") {
            return Err(bad("tcp:// takes HOST:PORT"));
        }
        if let Some(number) = text.strip_prefix("fd://") {
            return match number.parse::<RawFd>() {
                // 0, 1 and 2 are the standard streams, never a listening socket.
                Ok(fd) if fd >= 3 => Ok(BindAddr::Fd(fd)),
                _ => Err(bad(
                    "expected fd://N with N a file descriptor number of 3 or more",
                )),
            };
        }
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
        {
            if path.is_empty() {
                return Err(bad("the Unix socket path is empty"));
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(BindAddr::Tcp(addr));
        }
        // gunicorn: an empty host is every interface (`:8000`, `0.0.0.0:8000`).
        let text = &match text.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => text.to_string(),
        };
        let with_port = if text.starts_with('[') && text.ends_with(']') || !text.contains(':') {
            format!("{text}:8000")
        } else {
            text.to_string()
        };
        match with_port.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .map(BindAddr::Tcp)
                .ok_or_else(|| bad("no address found")),
            Err(err) => Err(bad(&err.to_string())),
        }
    }
}

/// systemd's socket activation: when `LISTEN_PID` names this process, the `LISTEN_FDS`
/// descriptors from 3 on are the sockets to serve (used when no `--bind` is given).
/// The variables are removed, so that the children do not take them as theirs.
pub fn socket_activation() -> Option<Vec<BindAddr>> {
    let activated = activated()?;
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: this runs while the configuration is read, before any thread exists
        // (the master never runs threads).
        unsafe { crate::process_env::remove(name) };
    }
    (!activated.is_empty()).then_some(activated)
}

/// The sockets systemd's variables give this process (none if they name another),
/// without taking them; None when the variables are not there.
pub fn activated() -> Option<Vec<BindAddr>> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()?
        == std::process::id();
    let count = std::env::var("LISTEN_FDS")
        .ok()?
        .trim()
        .parse::<RawFd>()
        .ok()?;
    Some(if for_us {
        (3..3 + count.max(0)).map(BindAddr::Fd).collect()
    } else {
        Vec::new()
    })
}

/// What `--bind` is when none is given: systemd's sockets, else [`fallback`].
pub fn default_binds() -> Result<Vec<String>, ConfigError> {
    Ok(match activated() {
        Some(fds) if !fds.is_empty() => fds.iter().map(ToString::to_string).collect(),
        _ => vec![fallback()?],
    })
}

/// The address listened on without `--bind` or systemd's sockets: `0.0.0.0:$PORT` when
/// the environment sets `PORT` (as gunicorn reads it: hosting platforms give the port
/// that way), else [`DEFAULT`].
pub fn fallback() -> Result<String, ConfigError> {
    match std::env::var("PORT") {
        Ok(port) if !port.trim().is_empty() => match port.trim().parse::<u16>() {
            Ok(number) if number > 0 => Ok(format!("0.0.0.0:{number}")),
            _ => Err(ConfigError::new(
                "PORT",
                format!("{port:?} is not a port number"),
            )),
        },
        _ => Ok(DEFAULT.to_string()),
    }
}

/// The address listened on when nothing else is said (gunicorn's).
pub const DEFAULT: &str = "127.0.0.1:8000";

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "http://{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            BindAddr::Fd(fd) => write!(f, "fd://{fd}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            BindAddr::parse("127.0.0.1:0").unwrap(),
            BindAddr::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            BindAddr::parse("[::1]:80").unwrap(),
            BindAddr::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            BindAddr::parse("127.0.0.1").unwrap(),
            BindAddr::Tcp("127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(
            BindAddr::parse("unix:/tmp/s").unwrap(),
            BindAddr::Unix("/tmp/s".into())
        );
        assert!(BindAddr::parse("unix:").is_err());
        assert_eq!(BindAddr::parse("fd://3").unwrap(), BindAddr::Fd(3));
        assert!(BindAddr::parse("fd://2").is_err());
        assert!(BindAddr::parse("fd://x").is_err());
        assert!(BindAddr::parse("127.0.0.1:notaport").is_err());
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        assert_eq!(BindAddr::parse(":8000").unwrap(), BindAddr::Tcp(any));
        assert_eq!(BindAddr::parse("0.0.0.0").unwrap(), BindAddr::Tcp(any));
        assert_eq!(
            BindAddr::parse("tcp://127.0.0.1:80").unwrap(),
            BindAddr::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            BindAddr::parse("[::]:8000").unwrap(),
            BindAddr::Tcp("[::]:8000".parse().unwrap())
        );
        assert_eq!(
            BindAddr::parse("unix:///tmp/s").unwrap(),
            BindAddr::Unix("/tmp/s".into())
        );
        assert!(BindAddr::parse("tcp://unix:/x").is_err());
    }
}
