//! Limits and timeouts that protect the front tier, and the peers trusted to set proxy
//! headers.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::error::ConfigError;
use crate::cli::ServeArgs;

/// `--limit-request-line 0`: the longest request line accepted at all.
const LARGEST_REQUEST_LINE: usize = 64 * 1024;
/// `--limit-request-fields 0`: gunicorn's ceiling.
const MOST_FIELDS: usize = 32768;
/// `--limit-request-field-size 0`: gunicorn maps 0 to its default, and so does rwsgi (a
/// head line without any bound would let one client hold any amount of memory).
const DEFAULT_FIELD_SIZE: usize = 8190;

/// Bounds on what a client may send and how slowly.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line (usize::MAX: none).
    pub request_line: usize,
    /// Most header fields.
    pub fields: usize,
    /// Longest header field line (usize::MAX: none).
    pub field_size: usize,
    /// Largest request body.
    pub max_body_size: u64,
    /// To receive a request head.
    pub header_timeout: Duration,
    /// A stalled request body.
    pub body_timeout: Duration,
    /// An idle keep-alive connection.
    pub keepalive: Duration,
    /// A client reading nothing of its response.
    pub send_timeout: Duration,
    /// Most bytes of one response spilled to a temporary file and not yet read by its
    /// client (`--max-temp-file-size`).
    pub max_temp_file_size: u64,
    /// Bytes of each shared-memory ring of a worker's channel; 0: the socket alone
    /// (`--ring-size`).
    pub ring_size: usize,
    /// Open connections per front tier.
    pub max_connections: usize,
    /// The listen backlog.
    pub backlog: i32,
    /// A request waiting for a worker.
    pub queue_timeout: Duration,
    /// The largest WebSocket message a client may send (`--ws-max-size`).
    pub ws_max_size: usize,
    /// Between the server's WebSocket pings; None: no pings (`--ws-ping-interval 0`).
    pub ws_ping_interval: Option<Duration>,
    /// For a WebSocket client's pong (`--ws-ping-timeout`).
    pub ws_ping_timeout: Duration,
}

impl Limits {
    /// The limits given on the command line, checked.
    pub fn from_args(args: &ServeArgs) -> Result<Limits, ConfigError> {
        let or_if_zero = |n: usize, instead: usize| if n == 0 { instead } else { n };
        if args.max_connections == 0 {
            return Err(ConfigError::new("--max-connections", "must be at least 1"));
        }
        if args.backlog <= 0 {
            return Err(ConfigError::new("--backlog", "must be at least 1"));
        }
        Ok(Limits {
            request_line: or_if_zero(args.limit_request_line, LARGEST_REQUEST_LINE),
            fields: or_if_zero(args.limit_request_fields, MOST_FIELDS),
            field_size: or_if_zero(args.limit_request_field_size, DEFAULT_FIELD_SIZE),
            max_body_size: parse_size(&args.max_body_size).ok_or_else(|| {
                ConfigError::new(
                    "--max-body-size",
                    format!("{:?} is not a size such as 100m", args.max_body_size),
                )
            })?,
            header_timeout: seconds("--header-timeout", args.header_timeout)?,
            body_timeout: seconds("--body-timeout", args.body_timeout)?,
            keepalive: seconds("--keep-alive", args.keep_alive)?,
            send_timeout: seconds("--send-timeout", args.send_timeout)?,
            max_temp_file_size: parse_size(&args.max_temp_file_size).ok_or_else(|| {
                ConfigError::new(
                    "--max-temp-file-size",
                    format!("{:?} is not a size such as 1g", args.max_temp_file_size),
                )
            })?,
            ring_size: ring_size(&args.ring_size)?,
            max_connections: args.max_connections,
            backlog: args.backlog,
            queue_timeout: seconds("--queue-timeout", args.queue_timeout)?,
            ws_max_size: parse_size(&args.ws_max_size)
                .filter(|&size| size > 0)
                .and_then(|size| usize::try_from(size).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        "--ws-max-size",
                        format!("{:?} is not a size such as 16m", args.ws_max_size),
                    )
                })?,
            ws_ping_interval: match args.ws_ping_interval {
                0.0 => None,
                every => Some(seconds("--ws-ping-interval", every)?),
            },
            ws_ping_timeout: seconds("--ws-ping-timeout", args.ws_ping_timeout)?,
        })
    }
}

/// A positive number of seconds.
pub fn seconds(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if value.is_finite() && value > 0.0 && value < 1e9 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::new(
            flag,
            format!("{value} is not a number of seconds > 0"),
        ))
    }
}

/// `123`, `10k`, `100m`, `2g` (powers of 1024).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, shift) = match text.strip_suffix(['k', 'm', 'g']) {
        Some(digits) if text.ends_with('k') => (digits, 10),
        Some(digits) if text.ends_with('m') => (digits, 20),
        Some(digits) => (digits, 30),
        None => (text.as_str(), 0),
    };
    let number: u64 = digits.parse().ok()?;
    number.checked_mul(1 << shift)
}

/// The peers whose proxy headers are believed.
#[derive(Debug, Clone)]
pub enum Trusted {
    /// Everyone (`*`).
    All,
    /// These networks.
    Nets(Vec<IpNet>),
}

impl Trusted {
    /// Parses `--forwarded-allow-ips`.
    pub fn parse(text: &str) -> Result<Trusted, ConfigError> {
        let mut nets = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return Ok(Trusted::All);
            }
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    ConfigError::new(
                        "--forwarded-allow-ips",
                        format!("{item:?} is not an address or network"),
                    )
                })?,
            };
            nets.push(net);
        }
        Ok(Trusted::Nets(nets))
    }

    /// Whether `peer` may set proxy headers.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        match self {
            Trusted::All => true,
            Trusted::Nets(nets) => nets.iter().any(|net| net.contains(&peer)),
        }
    }
}

/// `--ring-size`: 0, or a size the rings can have (4 KiB to 1 GiB; rounded up to a power
/// of two when they are made).
fn ring_size(text: &str) -> Result<usize, ConfigError> {
    use crate::protocol::ring::{MAX_CAPACITY, MIN_CAPACITY};
    let bad = |why: &str| ConfigError::new("--ring-size", format!("{text:?} {why}"));
    let size = parse_size(text).ok_or_else(|| bad("is not a size such as 1m"))?;
    let size = usize::try_from(size).map_err(|_| bad("is too large"))?;
    if size != 0 && !(MIN_CAPACITY..=MAX_CAPACITY).contains(&size) {
        return Err(bad("is not 0 or between 4k and 1g"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100m"), Some(100 << 20));
        assert_eq!(parse_size("10K"), Some(10 << 10));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1m"), None);
        assert_eq!(parse_size("99999999999999g"), None);
    }

    #[test]
    fn trusted_peers() {
        let trusted = Trusted::parse("127.0.0.1, ::1,10.0.0.0/8").unwrap();
        assert!(trusted.allows("127.0.0.1".parse().unwrap()));
        assert!(trusted.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(trusted.allows("10.1.2.3".parse().unwrap()));
        assert!(!trusted.allows("192.0.2.1".parse().unwrap()));
        assert!(
            Trusted::parse("*")
                .unwrap()
                .allows("192.0.2.1".parse().unwrap())
        );
        assert!(Trusted::parse("nope").is_err());
    }
}
