//! The `--bind` values: TCP addresses and Unix socket paths.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use super::ConfigError;

/// One address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    /// A TCP address (port 0 asks the system for a free port).
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

impl BindAddr {
    /// Parses `HOST:PORT`, `[IPV6]:PORT`, `HOST` (port 8000) or `unix:PATH`.
    pub fn parse(text: &str) -> Result<BindAddr, ConfigError> {
        let bad = |why: &str| ConfigError::new("--bind", format!("{text:?}: {why}"));
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("the Unix socket path is empty"));
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(BindAddr::Tcp(addr));
        }
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

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "http://{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
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
        assert!(BindAddr::parse("127.0.0.1:notaport").is_err());
    }
}
