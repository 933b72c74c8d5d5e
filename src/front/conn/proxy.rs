//! Proxy headers: who the client really is, when a trusted proxy says so.
//!
//! Only a peer in `--forwarded-allow-ips` (or a Unix socket peer, reachable only from
//! this machine, as in gunicorn) may set `Forwarded` (RFC 7239) or
//! `X-Forwarded-For` / `X-Forwarded-Proto`. From anyone else they are plain headers
//! the application may read, and change nothing in the environ.
//!
//! The client is found walking the proxy chain from the nearest hop back: the first
//! address not itself trusted is the client (so a client cannot prepend a fake one).

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{FORWARDED, HeaderName};

use super::conn_info::ConnInfo;
use crate::config::Trusted;
use crate::protocol::Scheme;

/// REMOTE_ADDR and `wsgi.url_scheme` of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFacts {
    /// The client's address (None for a Unix socket peer without proxy headers).
    pub addr: Option<IpAddr>,
    /// The scheme the client used.
    pub scheme: Scheme,
}

/// The client of a request, from the connection and any trusted proxy headers.
pub fn client_facts(headers: &HeaderMap, conn: &ConnInfo, trusted: &Trusted) -> ClientFacts {
    let direct = direct(conn);
    if !peer_trusted(conn, trusted) {
        return direct;
    }
    from_headers(headers, trusted).map_or(direct, |(addr, scheme)| ClientFacts {
        addr: addr.or(direct.addr),
        scheme: scheme.unwrap_or(direct.scheme),
    })
}

/// The client as the connection shows it: what [`client_facts`] finds for a request
/// without proxy headers, known without looking.
pub fn direct(conn: &ConnInfo) -> ClientFacts {
    ClientFacts {
        addr: conn.remote.map(|a| a.ip()),
        scheme: conn.scheme,
    }
}

/// Whether `name` is one of the proxy headers [`client_facts`] reads.
pub fn is_proxy_header(name: &HeaderName) -> bool {
    name == FORWARDED || name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO
}

/// Whether the connection's peer may speak for the client: an address in
/// `--forwarded-allow-ips`, or a Unix socket peer.
pub fn peer_trusted(conn: &ConnInfo, trusted: &Trusted) -> bool {
    conn.remote.is_none_or(|addr| trusted.allows(addr.ip()))
}

// Named once: looking a header up by a string parses the name at each request.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the proxy headers say, if there are any: the client's address and scheme.
fn from_headers(
    headers: &HeaderMap,
    trusted: &Trusted,
) -> Option<(Option<IpAddr>, Option<Scheme>)> {
    if headers.contains_key(FORWARDED) {
        return Some(forwarded(headers, trusted));
    }
    let xff = headers.get_all(&X_FORWARDED_FOR);
    let proto = headers.get(&X_FORWARDED_PROTO);
    if xff.iter().next().is_none() && proto.is_none() {
        return None;
    }
    let hops: Vec<&str> = xff
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let addr = client_of(hops.iter().map(|hop| parse_node(hop)), trusted);
    let scheme = proto
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| parse_scheme(v.trim()));
    Some((addr, scheme))
}

/// `Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"`.
fn forwarded(headers: &HeaderMap, trusted: &Trusted) -> (Option<IpAddr>, Option<Scheme>) {
    let elements: Vec<(Option<IpAddr>, Option<Scheme>)> = headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|element| {
            let (mut addr, mut scheme) = (None, None);
            for pair in element.split(';') {
                let Some((key, value)) = pair.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "for" => addr = parse_node(value),
                    "proto" => scheme = parse_scheme(value),
                    _ => {}
                }
            }
            (addr, scheme)
        })
        .collect();
    // The nearest element whose sender is not itself a trusted proxy names the client.
    let mut chosen = elements.last().copied();
    for element in elements.iter().rev() {
        chosen = Some(*element);
        match element.0 {
            Some(ip) if trusted.allows(ip) => continue,
            _ => break,
        }
    }
    chosen.unwrap_or((None, None))
}

/// Walks the hops from the nearest: the first untrusted address is the client.
fn client_of(
    hops: impl DoubleEndedIterator<Item = Option<IpAddr>>,
    trusted: &Trusted,
) -> Option<IpAddr> {
    let mut client = None;
    for hop in hops.rev() {
        let ip = hop?;
        client = Some(ip);
        if !trusted.allows(ip) {
            break;
        }
    }
    client
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`,
/// `2001:db8::1`. Obfuscated identifiers and `unknown` are no address.
fn parse_node(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    text.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

fn parse_scheme(text: &str) -> Option<Scheme> {
    if text.eq_ignore_ascii_case("https") {
        Some(Scheme::Https)
    } else if text.eq_ignore_ascii_case("http") {
        Some(Scheme::Http)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn local() -> Trusted {
        Trusted::parse("127.0.0.1,::1").unwrap()
    }

    #[test]
    fn x_forwarded_for_takes_the_nearest_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 127.0.0.1")]);
        assert_eq!(
            from_headers(&h, &local()),
            Some((Some("198.51.100.7".parse().unwrap()), None))
        );
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            from_headers(&h, &local()).and_then(|f| f.0),
            "198.51.100.7".parse().ok()
        );
        let h = headers(&[
            ("x-forwarded-for", "[2001:db8::1]:4711"),
            ("x-forwarded-proto", "HTTPS"),
        ]);
        assert_eq!(
            from_headers(&h, &local()),
            Some((Some("2001:db8::1".parse().unwrap()), Some(Scheme::Https)))
        );
        let h = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(from_headers(&h, &local()), Some((None, None)));
        assert_eq!(from_headers(&headers(&[]), &local()), None);
    }

    #[test]
    fn forwarded_header() {
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https;by=203.0.113.43, for=127.0.0.1;proto=http",
        )]);
        assert_eq!(
            from_headers(&h, &local()),
            Some((Some("192.0.2.60".parse().unwrap()), Some(Scheme::Https)))
        );
        let h = headers(&[("forwarded", "for=\"[2001:db8:cafe::17]:4711\"")]);
        assert_eq!(
            from_headers(&h, &local()).and_then(|f| f.0),
            "2001:db8:cafe::17".parse().ok()
        );
        let h = headers(&[("forwarded", "for=unknown;proto=https")]);
        assert_eq!(
            from_headers(&h, &local()),
            Some((None, Some(Scheme::Https)))
        );
    }
}
