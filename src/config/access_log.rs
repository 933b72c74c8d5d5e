//! `--access-logfile` and `--access-log-format`: where the access log goes and what a
//! line says, checked and compiled once before any fork.
//!
//! The format is gunicorn's (`%(h)s %(r)s …`, a Python `%`-format over a dict of
//! atoms), compiled here into a list of pieces so that the front tier only walks it per
//! request. As in gunicorn an unknown atom prints `-`; a format Python itself would
//! refuse (`%(h` unfinished, `%d`, a lone `%`) is a start-up error naming the flag.

use std::path::PathBuf;

use super::error::ConfigError;
use crate::cli::ServeArgs;

/// gunicorn's default `access_log_format`.
pub const DEFAULT_FORMAT: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`-`).
    Stdout,
    /// A file, appended to and reopened by name on USR1; absolute, so that `--chdir`
    /// cannot change which file a reopen finds.
    File(PathBuf),
}

/// The access log's settings.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// Where lines go.
    pub target: Target,
    /// What a line says.
    pub format: Format,
}

/// A compiled line format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// The line's layout.
    pub layout: Layout,
    /// The request headers the line prints, lowercase; atoms refer to them by index.
    pub request_headers: Vec<String>,
    /// The response headers the line prints, lowercase; atoms refer to them by index.
    pub response_headers: Vec<String>,
}

/// Text pieces (gunicorn's format) or one JSON object a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pieces printed one after the other.
    Text(Vec<Piece>),
    /// `json`: the fixed set of fields; the referer and user agent are request headers
    /// 0 and 1.
    Json,
}

/// One piece of a text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Literal(String),
    /// A value of the request or response.
    Atom(Atom),
}

/// gunicorn's atoms (glogging.py), plus `{name}i`, `{name}o`, `{name}e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atom {
    /// `h`: the client's address (REMOTE_ADDR, trusted proxy headers applied).
    RemoteAddr,
    /// `u`: the user name of Basic authentication (the `authorization` request header
    /// at this index).
    User(usize),
    /// `t`: `[25/Nov/2026:09:55:00 +0000]`, when the line is written.
    Time,
    /// `r`: `GET /path?query HTTP/1.1`.
    RequestLine,
    /// `m`: the method.
    Method,
    /// `U`: the path, as sent (not percent-decoded).
    Path,
    /// `q`: the query string, as sent.
    Query,
    /// `H`: the protocol, as SERVER_PROTOCOL says it.
    Protocol,
    /// `s`: the status code.
    Status,
    /// `b`: body bytes sent, `-` for none (Common Log Format).
    BytesOrDash,
    /// `B`: body bytes sent.
    Bytes,
    /// `T`: whole seconds taken.
    Seconds,
    /// `D`: microseconds taken.
    Micros,
    /// `M`: milliseconds taken.
    Millis,
    /// `L`: seconds taken, with six decimals.
    DecimalSeconds,
    /// `p`: `<pid>` of the front tier.
    Pid,
    /// `{name}i` (and `f`, `a`, `HTTP_*` environ names): request header at this index.
    RequestHeader(usize),
    /// `{name}o`: response header at this index.
    ResponseHeader(usize),
    /// `{x-request-id}i` and `{HTTP_X_REQUEST_ID}e`: the request id rwsgi kept or made.
    RequestId,
    /// `l` and unknown atoms: `-`.
    Dash,
}

impl AccessLog {
    /// `--access-logfile` and `--access-log-format`; None when there is no access log.
    pub fn from_args(args: &ServeArgs) -> Result<Option<AccessLog>, ConfigError> {
        let target = match &args.access_logfile {
            Some(path) if path.as_os_str() == "-" => Some(Target::Stdout),
            Some(path) => Some(Target::File(checked_file(path)?)),
            None => default_target(args.reload),
        };
        let Some(target) = target else {
            return Ok(None);
        };
        let text = args.access_log_format.as_deref().unwrap_or(DEFAULT_FORMAT);
        let format = Format::parse(text)
            .map_err(|message| ConfigError::new("--access-log-format", message))?;
        Ok(Some(AccessLog { target, format }))
    }
}

/// The access log when `--access-logfile` is not given: none, as in gunicorn, except
/// under `--reload` (the development server), where it is stdout.
pub fn default_target(reload: bool) -> Option<Target> {
    reload.then_some(Target::Stdout)
}

/// Opens the file once for appending (creating it), so that a path that cannot be
/// written is a start-up error rather than a front tier failing to boot.
fn checked_file(path: &std::path::Path) -> Result<PathBuf, ConfigError> {
    let error = |message: String| ConfigError::new("--access-logfile", message);
    if path.as_os_str().is_empty() {
        return Err(error("an empty path (use - for stdout)".into()));
    }
    let absolute =
        std::path::absolute(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&absolute)
        .map_err(|e| error(format!("cannot open {}: {e}", path.display())))?;
    Ok(absolute)
}

impl Format {
    /// Compiles `text`: `json`, or a gunicorn format; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Format, String> {
        let mut format = Format {
            layout: Layout::Json,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        };
        if text.trim() == "json" {
            format.request_headers = vec!["referer".into(), "user-agent".into()];
            return Ok(format);
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            let Some(inner) = after.strip_prefix('(') else {
                return Err("a lone % (write %% for a percent sign, %(name)s for an atom)".into());
            };
            let Some(close) = inner.find(')') else {
                return Err(format!("%({} has no closing parenthesis", inner));
            };
            let name = &inner[..close];
            let Some(tail) = inner[close + 1..].strip_prefix('s') else {
                return Err(format!("%({name}) must be followed by s, as in %({name})s"));
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Atom(format.atom(name)));
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        format.layout = Layout::Text(pieces);
        Ok(format)
    }

    /// The atom for `%(name)s`.
    fn atom(&mut self, name: &str) -> Atom {
        if let Some(header) = name.strip_prefix('{').and_then(|n| n.strip_suffix("}i")) {
            return self.request_header(header);
        }
        if let Some(header) = name.strip_prefix('{').and_then(|n| n.strip_suffix("}o")) {
            let index = index_of(&mut self.response_headers, header);
            return Atom::ResponseHeader(index);
        }
        if let Some(variable) = name.strip_prefix('{').and_then(|n| n.strip_suffix("}e")) {
            return self.environ(variable);
        }
        match name {
            "h" => Atom::RemoteAddr,
            "u" => Atom::User(index_of(&mut self.request_headers, "authorization")),
            "t" => Atom::Time,
            "r" => Atom::RequestLine,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "s" => Atom::Status,
            "b" => Atom::BytesOrDash,
            "B" => Atom::Bytes,
            "f" => self.request_header("referer"),
            "a" => self.request_header("user-agent"),
            "T" => Atom::Seconds,
            "D" => Atom::Micros,
            "M" => Atom::Millis,
            "L" => Atom::DecimalSeconds,
            "p" => Atom::Pid,
            _ => Atom::Dash,
        }
    }

    fn request_header(&mut self, name: &str) -> Atom {
        if name.eq_ignore_ascii_case("x-request-id") {
            return Atom::RequestId;
        }
        Atom::RequestHeader(index_of(&mut self.request_headers, name))
    }

    /// `{NAME}e`: the environ variables the front tier knows without the worker.
    fn environ(&mut self, variable: &str) -> Atom {
        if let Some(header) = variable.strip_prefix("HTTP_") {
            return self.request_header(&header.replace('_', "-"));
        }
        match variable {
            "REMOTE_ADDR" => Atom::RemoteAddr,
            "REQUEST_METHOD" => Atom::Method,
            "PATH_INFO" => Atom::Path,
            "QUERY_STRING" => Atom::Query,
            "SERVER_PROTOCOL" => Atom::Protocol,
            "CONTENT_TYPE" => self.request_header("content-type"),
            "CONTENT_LENGTH" => self.request_header("content-length"),
            _ => Atom::Dash,
        }
    }
}

/// The index of `name` (lowercased) in `names`, added if it is not there yet.
fn index_of(names: &mut Vec<String>, name: &str) -> usize {
    let name = name.to_ascii_lowercase();
    match names.iter().position(|n| *n == name) {
        Some(index) => index,
        None => {
            names.push(name);
            names.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atoms(text: &str) -> Vec<Atom> {
        match Format::parse(text).map(|f| f.layout) {
            Ok(Layout::Text(pieces)) => pieces
                .into_iter()
                .filter_map(|p| match p {
                    Piece::Atom(atom) => Some(atom),
                    Piece::Literal(_) => None,
                })
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_format() {
        let format = Format::parse(DEFAULT_FORMAT).unwrap();
        assert_eq!(
            format.request_headers,
            ["authorization", "referer", "user-agent"]
        );
        let Layout::Text(pieces) = format.layout else {
            panic!("not text")
        };
        assert_eq!(pieces[0], Piece::Atom(Atom::RemoteAddr));
        assert_eq!(pieces[1], Piece::Literal(" ".into()));
        assert_eq!(pieces[7], Piece::Literal(" \"".into()));
        assert_eq!(pieces.last(), Some(&Piece::Literal("\"".into())));
    }

    #[test]
    fn headers_are_shared_and_case_blind() {
        let format = Format::parse("%({User-Agent}i)s %(a)s %({X-Test}o)s %({x-test}o)s").unwrap();
        assert_eq!(format.request_headers, ["user-agent"]);
        assert_eq!(format.response_headers, ["x-test"]);
        assert_eq!(
            atoms("%({X-Request-Id}i)s %({HTTP_X_REQUEST_ID}e)s %({HTTP_ACCEPT}e)s"),
            [Atom::RequestId, Atom::RequestId, Atom::RequestHeader(0)]
        );
    }

    #[test]
    fn unknown_atoms_print_a_dash_and_percent_escapes() {
        assert_eq!(atoms("%(zz)s %(l)s %({NOPE}e)s"), [Atom::Dash; 3]);
        let format = Format::parse("100%% %(s)s").unwrap();
        assert_eq!(
            format.layout,
            Layout::Text(vec![
                Piece::Literal("100% ".into()),
                Piece::Atom(Atom::Status)
            ])
        );
    }

    #[test]
    fn malformed_formats_are_refused() {
        for bad in ["%(h", "%(h)d", "%s", "50%", "%(h)"] {
            assert!(Format::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json() {
        let format = Format::parse("json").unwrap();
        assert_eq!(format.layout, Layout::Json);
        assert_eq!(format.request_headers, ["referer", "user-agent"]);
    }
}
