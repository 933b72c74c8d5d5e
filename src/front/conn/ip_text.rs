//! An IP address as text, on the stack: the request head carries the client's address
//! to the worker and the access log writes it, once per request each. IPv4 is written by
//! hand; core::fmt's machinery showed in the front tier's profiles.

use std::io::Write;
use std::net::IpAddr;

/// The longest IPv6 text is 45 bytes (`ffff:…:ffff:255.255.255.255`).
const MAX: usize = 48;

pub struct IpText {
    buf: [u8; MAX],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; MAX],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                let mut rest = &mut text.buf[..];
                // Cannot fail: every IPv6 text fits in MAX bytes.
                if write!(rest, "{v6}").is_ok() {
                    text.len = MAX - rest.len();
                }
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.255.1",
            "127.0.0.1",
            "192.168.100.9",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }
}
