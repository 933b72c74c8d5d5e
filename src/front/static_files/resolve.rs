//! From a request path to an open file, never leaving the mount's directory.
//!
//! Blocking file-system calls: run on tokio's blocking threads. The rules:
//! - the path is percent-decoded once; a NUL byte or a `..` segment (in any encoding,
//!   `%2e%2e`, `..%2f`) refuses the request, whatever it would resolve to;
//! - the file found, its `index.html` and every precompressed sibling are resolved
//!   through all symlinks (`canonicalize`) and must lie under the canonical root; a
//!   symlink pointing outside is refused like a missing file;
//! - only regular files are served: no directory listing, no devices or FIFOs.
//!
//! The root is canonicalized per request (so a swapped `current` symlink is followed).
//! What is opened is the canonical path, with `O_NOFOLLOW`.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hyper::header::HeaderValue;
use percent_encoding::percent_decode_str;
use tracing::{debug, warn};

use crate::front::encoding::{Accepted, Coding};

/// Precompressed siblings looked for, in the order preferred when the client accepts
/// several equally (the smallest usually first).
const PRECOMPRESSED: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

/// A file ready to send.
#[derive(Debug)]
pub struct Opened {
    /// The open file (the precompressed sibling when one was chosen).
    pub file: File,
    /// Its size.
    pub length: u64,
    /// Its modification time.
    pub modified: Option<SystemTime>,
    /// The media type of the file asked for (not of its compressed sibling).
    pub content_type: HeaderValue,
    /// The content coding of a precompressed sibling that was chosen.
    pub encoding: Option<Coding>,
    /// Whether the file has precompressed siblings: the answer depends on
    /// Accept-Encoding.
    pub varies: bool,
}

/// The outcome of looking a path up.
#[derive(Debug)]
pub enum Resolved {
    /// The file to send.
    File(Opened),
    /// A directory asked for without its trailing slash that has an index.html: the
    /// client should ask again with the slash (so relative links in the page work).
    AddSlash,
    /// Nothing to serve (missing, refused, a directory without an index).
    NotFound,
    /// The file exists but may not be read.
    Forbidden,
    /// The file system failed.
    Failed(io::Error),
}

/// What the path may name, by how it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directory {
    /// A directory only, whose index.html is served (the path ended with `/`).
    Index,
    /// A file, or a directory with an index.html to redirect to with a trailing slash.
    Redirect,
    /// A file only.
    Refuse,
}

/// The relative file-system path named by the part of a URL path under a mount
/// (percent-encoded, empty or starting with `/`), or None if it must be refused.
pub fn relative_path(encoded: &str) -> Option<PathBuf> {
    let decoded: Vec<u8> = percent_decode_str(encoded).collect();
    if decoded.contains(&0) {
        return None;
    }
    let mut path = PathBuf::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => return None,
            name => path.push(OsStr::from_bytes(name)),
        }
    }
    Some(path)
}

/// Looks up `relative` under `root` and opens it (see the module's rules).
pub fn under_root(
    root: &Path,
    relative: &Path,
    directory: Directory,
    accepted: Option<&Accepted>,
) -> Resolved {
    let root = match root.canonicalize() {
        Ok(root) => root,
        Err(err) => {
            warn!("static root {} cannot be used: {err}", root.display());
            return Resolved::NotFound;
        }
    };
    open(&root, root.join(relative), directory, accepted)
}

/// Opens an absolute path if it lies under one of `roots` (X-Sendfile).
pub fn under_any_root(roots: &[&Path], path: &Path, accepted: Option<&Accepted>) -> Resolved {
    if !path.is_absolute() || path.as_os_str().as_bytes().contains(&0) {
        return Resolved::NotFound;
    }
    let canonical = match path.canonicalize() {
        Ok(canonical) => canonical,
        Err(err) => return from_io(err),
    };
    let root = roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .find(|root| canonical.starts_with(root));
    match root {
        Some(root) => open(&root, path.to_path_buf(), Directory::Refuse, accepted),
        None => {
            warn!(
                "refused X-Sendfile {}: not under a --static or --internal directory",
                path.display()
            );
            Resolved::NotFound
        }
    }
}

fn open(
    root: &Path,
    mut path: PathBuf,
    directory: Directory,
    accepted: Option<&Accepted>,
) -> Resolved {
    let is_dir = match std::fs::metadata(&path) {
        Ok(meta) => meta.is_dir(),
        Err(err) => return from_io(err),
    };
    match (is_dir, directory) {
        (true, Directory::Index) => path.push("index.html"),
        (true, Directory::Redirect) => {
            return match contained(root, &path.join("index.html")) {
                Ok(_) => Resolved::AddSlash,
                Err(_) => Resolved::NotFound,
            };
        }
        // A file asked for with a trailing slash, or a directory where a file must be.
        (false, Directory::Index) | (true, Directory::Refuse) => return Resolved::NotFound,
        (false, _) => {}
    }
    let canonical = match contained(root, &path) {
        Ok(canonical) => canonical,
        Err(refused) => return refused,
    };
    let mut varies = false;
    let mut siblings = Vec::new();
    for coding in PRECOMPRESSED {
        let mut name = path.clone().into_os_string();
        name.push(coding.file_suffix());
        let sibling = PathBuf::from(name);
        if std::fs::metadata(&sibling).is_ok_and(|m| m.is_file())
            && let Ok(canonical) = contained(root, &sibling)
        {
            varies = true;
            siblings.push((coding, canonical));
        }
    }
    let offered: Vec<Coding> = siblings.iter().map(|(coding, _)| *coding).collect();
    let chosen = accepted.and_then(|a| a.choose(&offered));
    let (target, encoding) = match chosen.and_then(|c| siblings.iter().find(|(s, _)| *s == c)) {
        Some((coding, sibling)) => (sibling.as_path(), Some(*coding)),
        None => (canonical.as_path(), None),
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(target)
    {
        Ok(file) => file,
        Err(err) => return from_io(err),
    };
    let meta = match file.metadata() {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Resolved::NotFound,
        Err(err) => return Resolved::Failed(err),
    };
    Resolved::File(Opened {
        file,
        length: meta.len(),
        modified: meta.modified().ok(),
        content_type: content_type(&path),
        encoding,
        varies,
    })
}

/// The canonical form of `path` if it is a regular file under `root`.
fn contained(root: &Path, path: &Path) -> Result<PathBuf, Resolved> {
    let canonical = path.canonicalize().map_err(from_io)?;
    if !canonical.starts_with(root) {
        warn!(
            "refused {}: it resolves to {}, outside {}",
            path.display(),
            canonical.display(),
            root.display()
        );
        return Err(Resolved::NotFound);
    }
    match std::fs::metadata(&canonical) {
        Ok(meta) if meta.is_file() => Ok(canonical),
        Ok(_) => Err(Resolved::NotFound),
        Err(err) => Err(from_io(err)),
    }
}

fn from_io(err: io::Error) -> Resolved {
    match err.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP | libc::EINVAL) => {
            Resolved::NotFound
        }
        Some(libc::EACCES | libc::EPERM) => Resolved::Forbidden,
        _ if err.kind() == io::ErrorKind::NotFound => Resolved::NotFound,
        _ => {
            debug!("static file lookup failed: {err}");
            Resolved::Failed(err)
        }
    }
}

/// The media type by the file name's extension; text gets `charset=utf-8`.
pub fn content_type(path: &Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_raw();
    match mime {
        Some(mime) if mime.starts_with("text/") || mime == "application/javascript" => {
            HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
                .unwrap_or_else(|_| HeaderValue::from_static(mime))
        }
        Some(mime) => HeaderValue::from_static(mime),
        None => HeaderValue::from_static("application/octet-stream"),
    }
}

/// A path in bytes as an OS path (for X-Sendfile values).
pub fn os_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(bytes.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn refused_paths() {
        for bad in [
            "/..",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/..%2fx",
            "/..%2Fx",
            "/%2e%2e%2fx",
            "/x%00",
            "/%00",
            "/a%2f..%2f..%2fb",
        ] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
        assert_eq!(relative_path(""), Some(PathBuf::new()));
        assert_eq!(relative_path("/a//./b%20c"), Some(PathBuf::from("a/b c")));
        assert_eq!(relative_path("/..a/b.."), Some(PathBuf::from("..a/b..")));
    }

    #[test]
    fn symlinks_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("real.txt"), "real").unwrap();
        std::fs::write(root.path().join("a.txt"), "a").unwrap();
        symlink(outside.path().join("secret"), root.path().join("leak")).unwrap();
        symlink(outside.path(), root.path().join("leakdir")).unwrap();
        symlink(root.path().join("real.txt"), root.path().join("alias.txt")).unwrap();
        symlink(outside.path().join("secret"), root.path().join("a.txt.gz")).unwrap();
        let get = |rel: &str| under_root(root.path(), Path::new(rel), Directory::Redirect, None);
        assert!(matches!(get("leak"), Resolved::NotFound));
        assert!(matches!(get("leakdir/secret"), Resolved::NotFound));
        assert!(matches!(get("alias.txt"), Resolved::File(_)));
        assert!(matches!(get("missing"), Resolved::NotFound));
        // A sibling escaping the root is neither served nor announced.
        let mut headers = hyper::HeaderMap::new();
        headers.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let accepted = Accepted::from_headers(&headers);
        match under_root(
            root.path(),
            Path::new("a.txt"),
            Directory::Refuse,
            accepted.as_ref(),
        ) {
            Resolved::File(opened) => {
                assert_eq!(opened.encoding, None);
                assert!(!opened.varies);
                assert_eq!(opened.length, 1);
            }
            other => panic!("{other:?}"),
        }
        let outside_path = outside.path().join("secret");
        let roots = [root.path()];
        assert!(matches!(
            under_any_root(&roots, &outside_path, None),
            Resolved::NotFound
        ));
        assert!(matches!(
            under_any_root(&roots, &root.path().join("real.txt"), None),
            Resolved::File(_)
        ));
        assert!(matches!(
            under_any_root(&roots, Path::new("real.txt"), None),
            Resolved::NotFound
        ));
    }

    #[test]
    fn directories() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("with")).unwrap();
        std::fs::write(root.path().join("with/index.html"), "<p>").unwrap();
        std::fs::create_dir(root.path().join("without")).unwrap();
        std::fs::write(root.path().join("without/x.txt"), "x").unwrap();
        let get = |rel: &str, d| under_root(root.path(), Path::new(rel), d, None);
        assert!(matches!(
            get("with", Directory::Redirect),
            Resolved::AddSlash
        ));
        match get("with", Directory::Index) {
            Resolved::File(opened) => {
                assert_eq!(opened.content_type, "text/html; charset=utf-8")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            get("without", Directory::Redirect),
            Resolved::NotFound
        ));
        assert!(matches!(
            get("without", Directory::Index),
            Resolved::NotFound
        ));
        assert!(matches!(get("with", Directory::Refuse), Resolved::NotFound));
        assert!(matches!(
            get("with/index.html", Directory::Index),
            Resolved::NotFound
        ));
        assert!(matches!(
            get("with/index.html", Directory::Refuse),
            Resolved::File(_)
        ));
    }
}
