//! Content codings and the client's Accept-Encoding (RFC 9110 §12.5.3), shared by the
//! precompressed static files and the compression of app responses.

use hyper::HeaderMap;
use hyper::header::{ACCEPT_ENCODING, HeaderValue, VARY};

/// A content coding rwsgi can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `br`
    Brotli,
    /// `zstd`
    Zstd,
    /// `gzip`
    Gzip,
}

impl Coding {
    /// The token in Content-Encoding / Accept-Encoding.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The suffix of a precompressed sibling file (`app.js.br`).
    pub fn file_suffix(self) -> &'static str {
        match self {
            Coding::Brotli => ".br",
            Coding::Zstd => ".zst",
            Coding::Gzip => ".gz",
        }
    }

    /// The Content-Encoding value.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }
}

/// A quality value in thousandths (`q=0.5` is 500); 0 means "not acceptable".
type Quality = u16;

/// What the client accepts, as read from its Accept-Encoding.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The codings named, with their quality.
    listed: Vec<(String, Quality)>,
    /// The quality of `*`, if present.
    star: Option<Quality>,
}

impl Accepted {
    /// Reads every Accept-Encoding header of a request. None when there is none: the
    /// client said nothing, and rwsgi then sends the identity coding.
    pub fn from_headers(headers: &HeaderMap) -> Option<Accepted> {
        let mut accepted = Accepted::default();
        let mut seen = false;
        for value in headers.get_all(ACCEPT_ENCODING) {
            seen = true;
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                if coding.is_empty() {
                    continue;
                }
                let mut quality = 1000;
                for param in parts {
                    if let Some((name, value)) = param.split_once('=')
                        && name.trim().eq_ignore_ascii_case("q")
                    {
                        quality = parse_quality(value.trim()).unwrap_or(0);
                    }
                }
                if coding == "*" {
                    accepted.star = Some(quality);
                } else {
                    accepted.listed.push((coding, quality));
                }
            }
        }
        seen.then_some(accepted)
    }

    /// The quality the client gives `coding` (0: not acceptable).
    pub fn quality(&self, coding: Coding) -> Quality {
        let aliases: &[&str] = match coding {
            Coding::Gzip => &["gzip", "x-gzip"],
            other => &[other.token()],
        };
        self.listed
            .iter()
            .filter(|(name, _)| aliases.contains(&name.as_str()))
            .map(|(_, q)| *q)
            .max()
            .or(self.star)
            .unwrap_or(0)
    }

    /// The best of `offered` (in the server's order of preference, used to break ties)
    /// that the client accepts.
    pub fn choose(&self, offered: &[Coding]) -> Option<Coding> {
        let mut best: Option<(Coding, Quality)> = None;
        for &coding in offered {
            let quality = self.quality(coding);
            if quality > 0 && best.is_none_or(|(_, q)| quality > q) {
                best = Some((coding, quality));
            }
        }
        best.map(|(coding, _)| coding)
    }
}

/// `q=` values are 0 to 1 with at most three decimals (RFC 9110 §12.4.2).
fn parse_quality(text: &str) -> Option<Quality> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Adds `Accept-Encoding` to the response's Vary unless it is already covered.
pub fn vary_on_accept_encoding(headers: &mut HeaderMap) {
    let covered = headers.get_all(VARY).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|name| {
                let name = name.trim();
                name == "*" || name.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !covered {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(value: &str) -> Accepted {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        Accepted::from_headers(&headers).unwrap()
    }

    const ALL: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

    #[test]
    fn choice() {
        assert_eq!(accepted("gzip").choose(&ALL), Some(Coding::Gzip));
        assert_eq!(accepted("gzip, br").choose(&ALL), Some(Coding::Brotli));
        assert_eq!(
            accepted("gzip;q=1, br;q=0.5").choose(&ALL),
            Some(Coding::Gzip)
        );
        assert_eq!(accepted("br;q=0, gzip;q=0").choose(&ALL), None);
        assert_eq!(accepted("identity").choose(&ALL), None);
        assert_eq!(accepted("").choose(&ALL), None);
        assert_eq!(accepted("*").choose(&ALL), Some(Coding::Brotli));
        assert_eq!(accepted("*, br;q=0").choose(&ALL), Some(Coding::Zstd));
        assert_eq!(accepted("X-GZIP").choose(&ALL), Some(Coding::Gzip));
        assert_eq!(
            accepted("zstd;q=0.9,gzip;Q=0.95").choose(&ALL),
            Some(Coding::Gzip)
        );
        assert_eq!(accepted("gzip;q=2").choose(&ALL), None);
        assert_eq!(accepted("gzip;q=0.0001").choose(&ALL), None);
        assert!(Accepted::from_headers(&HeaderMap::new()).is_none());
    }

    #[test]
    fn vary() {
        let mut headers = HeaderMap::new();
        vary_on_accept_encoding(&mut headers);
        vary_on_accept_encoding(&mut headers);
        assert_eq!(headers.get_all(VARY).iter().count(), 1);
        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Cookie"));
        vary_on_accept_encoding(&mut headers);
        assert_eq!(headers.get_all(VARY).iter().count(), 2);
    }
}
