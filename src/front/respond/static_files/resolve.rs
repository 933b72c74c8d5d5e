//! From a request path to an open file, never leaving the mount's directory.
//!
//! Blocking file-system calls, few and answered from the kernel's caches: run in place,
//! as nginx does. The rules:
//! - the path is percent-decoded once; a NUL byte or a `..` segment (in any encoding,
//!   `%2e%2e`, `..%2f`) refuses the request, whatever it would resolve to;
//! - the file, its `index.html` and every precompressed sibling are opened relative to
//!   the mount's directory descriptor, never by an absolute path ([`beneath`]:
//!   `openat2(2)` with RESOLVE_BENEATH, or a walk keeping the same rules before Linux
//!   5.6): nothing that would leave the directory is followed, however the tree
//!   changes during the lookup; relative symlinks that stay inside are followed;
//! - an absolute symlink is checked on its canonical path, and followed only if that
//!   lies inside: the canonical path is then opened relative to the directory again,
//!   so a change after the check cannot lead outside either; what leads outside is
//!   refused like a missing file;
//! - only regular files are served: no directory listing, no devices or FIFOs.
//!
//! The root directory is opened again each second (so a swapped `current` symlink is
//! followed).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use percent_encoding::percent_decode_str;
use tracing::{debug, warn};

use super::beneath;
use super::body::{INLINE_READ, Source, read_file_at};
use crate::front::respond::encoding::{Accepted, Coding};
use crate::lock::lock;

/// Precompressed siblings looked for, in the order preferred when the client accepts
/// several equally (the smallest usually first).
const PRECOMPRESSED: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

/// A file ready to send.
#[derive(Debug)]
pub struct Opened {
    /// The open file (the precompressed sibling when one was chosen), or its bytes.
    pub source: Source,
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

/// What recent lookups found, trusted for [`FRESH`]: each mount directory, opened (so
/// that a swapped `current` symlink is followed within that time), and which
/// precompressed siblings (in [`PRECOMPRESSED`] order) each file had. Most files have
/// none, and looking for three missing files cost a fifth of a small file's answer; a
/// sibling added or removed is seen within [`FRESH`] (a removed one at once: its open
/// fails).
///
/// Small files without siblings are kept whole ([`SmallFile`]): answering one then takes
/// one `stat` of its path, which must still show the same file (device, inode, size,
/// modification time), so a change is seen at once; a sibling added, within [`FRESH`].
#[derive(Default)]
pub struct LookupCache {
    roots: Mutex<HashMap<PathBuf, (Instant, Arc<OwnedFd>)>>,
    siblings: Mutex<HashMap<PathBuf, (Instant, [bool; 3])>>,
    small: Mutex<HashMap<PathBuf, (Instant, SmallFile)>>,
}

/// A small file kept whole, with what its answer needs.
#[derive(Clone)]
struct SmallFile {
    /// Whether the path named a directory whose index.html this is.
    index: bool,
    /// The file's identity when it was read.
    identity: Identity,
    bytes: Bytes,
    modified: Option<SystemTime>,
    content_type: HeaderValue,
}

/// Files up to this size (and without precompressed siblings) are kept whole.
const SMALL_FILE: u64 = INLINE_READ as u64;
/// Small files kept at most: 64 MiB at worst.
const SMALL_KEPT: usize = 1024;

const FRESH: Duration = Duration::from_secs(1);
/// Entries kept at most in each map; a map starts afresh beyond it.
const KEPT: usize = 10_000;

fn fresh<T: Clone>(map: &Mutex<HashMap<PathBuf, (Instant, T)>>, key: &Path) -> Option<T> {
    match lock(map).get(key) {
        Some((when, value)) if when.elapsed() < FRESH => Some(value.clone()),
        _ => None,
    }
}

fn remember<T>(map: &Mutex<HashMap<PathBuf, (Instant, T)>>, limit: usize, key: PathBuf, value: T) {
    let mut map = lock(map);
    if map.len() >= limit {
        map.clear();
    }
    map.insert(key, (Instant::now(), value));
}

impl LookupCache {
    /// The mount directory `root`, opened.
    fn root(&self, root: &Path) -> nix::Result<Arc<OwnedFd>> {
        if let Some(fd) = fresh(&self.roots, root) {
            return Ok(fd);
        }
        let fd = Arc::new(open_root(root)?);
        remember(&self.roots, KEPT, root.to_path_buf(), fd.clone());
        Ok(fd)
    }
}

/// Looks up `relative` under `root` and opens it (see the module's rules).
pub fn under_root(
    root: &Path,
    relative: &Path,
    directory: Directory,
    accepted: Option<&Accepted>,
    cache: &LookupCache,
) -> Resolved {
    // Opened per request, so that a swapped `current` symlink is followed.
    let root_dir = match cache.root(root) {
        Ok(dir) => dir,
        Err(err) => {
            warn!("static root {} cannot be used: {err}", root.display());
            return Resolved::NotFound;
        }
    };
    let beneath = Beneath {
        root: root_dir,
        shown: root,
        cache,
    };
    beneath.open(relative.to_path_buf(), directory, accepted)
}

/// Opens an absolute path if it lies under one of `roots` (X-Sendfile).
pub fn under_any_root(
    roots: &[&Path],
    path: &Path,
    accepted: Option<&Accepted>,
    cache: &LookupCache,
) -> Resolved {
    if !path.is_absolute() || path.as_os_str().as_bytes().contains(&0) {
        return Resolved::NotFound;
    }
    let canonical = match path.canonicalize() {
        Ok(canonical) => canonical,
        Err(err) => return from_io(err),
    };
    // The root the file lies under, and the file's path below it; the open below then
    // checks again, atomically, that nothing leads outside.
    let found = roots.iter().find_map(|root| {
        let root_canonical = root.canonicalize().ok()?;
        let relative = canonical.strip_prefix(&root_canonical).ok()?.to_path_buf();
        Some((root, relative))
    });
    match found {
        Some((root, relative)) => under_root(root, &relative, Directory::Refuse, accepted, cache),
        None => {
            warn!(
                "refused X-Sendfile {}: not under a --static or --internal directory",
                path.display()
            );
            Resolved::NotFound
        }
    }
}

/// What tells one version of a file from another: device, inode, size, modification
/// time (seconds, nanoseconds).
type Identity = (u64, u64, u64, i64, i64);

fn identity(meta: &Metadata) -> Identity {
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

fn open_root(root: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// A mount's directory, opened: every file is opened relative to it ([`beneath`]), so
/// that no path, `..` or symlink leads outside, whatever changes between a check and
/// the open.
struct Beneath<'a> {
    root: Arc<OwnedFd>,
    /// The root as configured, for log lines.
    shown: &'a Path,
    cache: &'a LookupCache,
}

impl Beneath<'_> {
    /// `path` (relative to the root) opened for reading, with its metadata.
    fn file(&self, path: &Path) -> Result<(File, Metadata), Resolved> {
        match beneath::open(&self.root, path, READ) {
            Ok(fd) => with_metadata(fd),
            // An absolute symlink, or one leading outside: RESOLVE_BENEATH refuses both.
            Err(Errno::EXDEV) => self.absolute_link(path),
            Err(errno) => Err(from_io(io::Error::from(errno))),
        }
    }

    /// `path` when a symlink on the way is absolute: allowed if it resolves inside the
    /// root after all, refused otherwise. The check is made on the canonical path; what
    /// is opened is that path relative to the root, beneath the root's descriptor again,
    /// never by its absolute name: a directory on the way swapped for a symlink between
    /// the check and the open cannot lead outside.
    fn absolute_link(&self, path: &Path) -> Result<(File, Metadata), Resolved> {
        let (Ok(root), Ok(canonical)) = (
            self.shown.canonicalize(),
            self.shown.join(path).canonicalize(),
        ) else {
            return Err(Resolved::NotFound);
        };
        let Ok(inside) = canonical.strip_prefix(&root) else {
            warn!(
                "refused {}: it resolves to {}, outside {}",
                path.display(),
                canonical.display(),
                root.display()
            );
            return Err(Resolved::NotFound);
        };
        match beneath::open(&self.root, inside, READ) {
            Ok(fd) => with_metadata(fd),
            Err(Errno::EXDEV) => {
                debug!("refused {}: it changed while looked up", path.display());
                Err(Resolved::NotFound)
            }
            Err(errno) => Err(from_io(io::Error::from(errno))),
        }
    }

    /// The identity of the file at `path` (under the root, following symlinks as its
    /// open did), by one `fstatat` relative to the root's descriptor: the path's walk
    /// starts there, not at `/`. Only ever compared with the identity of a file opened
    /// under the root, so a symlink leading elsewhere meanwhile is a mismatch.
    fn identity_of(&self, path: &Path) -> Option<Identity> {
        let path = match path.as_os_str().is_empty() {
            true => Path::new("."),
            false => path,
        };
        let stat = nix::sys::stat::fstatat(&*self.root, path, nix::fcntl::AtFlags::empty()).ok()?;
        Some((
            stat.st_dev as u64,
            stat.st_ino as u64,
            u64::try_from(stat.st_size).ok()?,
            stat.st_mtime as i64,
            stat.st_mtime_nsec as i64,
        ))
    }

    /// A regular file at `path`, or why not.
    fn regular(&self, path: &Path) -> Result<(File, Metadata), Resolved> {
        match self.file(path)? {
            (file, meta) if meta.is_file() => Ok((file, meta)),
            _ => Err(Resolved::NotFound),
        }
    }

    fn open(&self, path: PathBuf, directory: Directory, accepted: Option<&Accepted>) -> Resolved {
        let key = self.shown.join(&path);
        // Kept no longer than FRESH either: a sibling added since must be found.
        if let Some(small) = fresh(&self.cache.small, &key)
            && small.index == (directory == Directory::Index)
        {
            let file: std::borrow::Cow<'_, Path> = match small.index {
                true => path.join("index.html").into(),
                false => path.as_path().into(),
            };
            if self.identity_of(&file) == Some(small.identity) {
                return Resolved::File(Opened {
                    length: small.bytes.len() as u64,
                    source: Source::Memory(small.bytes),
                    modified: small.modified,
                    content_type: small.content_type,
                    encoding: None,
                    varies: false,
                });
            }
        }
        match self.look_up(path, directory, accepted) {
            Resolved::File(opened) => Resolved::File(self.keep_if_small(key, directory, opened)),
            other => other,
        }
    }

    /// A small file without siblings, read whole and kept for the next requests.
    fn keep_if_small(&self, key: PathBuf, directory: Directory, opened: Opened) -> Opened {
        let Source::File(file) = &opened.source else {
            return opened;
        };
        if opened.varies || opened.length > SMALL_FILE {
            return opened;
        }
        let Ok(meta) = file.metadata() else {
            return opened;
        };
        let Ok(bytes) = read_file_at(file, 0, opened.length as usize) else {
            return opened;
        };
        if bytes.len() as u64 != opened.length {
            return opened; // changing under us: not kept
        }
        let small = SmallFile {
            index: directory == Directory::Index,
            identity: identity(&meta),
            bytes: bytes.clone(),
            modified: opened.modified,
            content_type: opened.content_type.clone(),
        };
        remember(&self.cache.small, SMALL_KEPT, key, small);
        Opened {
            source: Source::Memory(bytes),
            ..opened
        }
    }

    fn look_up(
        &self,
        mut path: PathBuf,
        directory: Directory,
        accepted: Option<&Accepted>,
    ) -> Resolved {
        let (mut file, mut meta) = match self.file(&path) {
            Ok(opened) => opened,
            Err(refused) => return refused,
        };
        match (meta.is_dir(), directory) {
            (true, Directory::Index) => {
                path.push("index.html");
                (file, meta) = match self.regular(&path) {
                    Ok(opened) => opened,
                    Err(refused) => return refused,
                };
            }
            (true, Directory::Redirect) => {
                return match self.regular(&path.join("index.html")) {
                    Ok(_) => Resolved::AddSlash,
                    Err(_) => Resolved::NotFound,
                };
            }
            // A file asked for with a trailing slash, or a directory where a file must be.
            (false, Directory::Index) | (true, Directory::Refuse) => return Resolved::NotFound,
            (false, _) if !meta.is_file() => return Resolved::NotFound,
            (false, _) => {}
        }
        let key = self.shown.join(&path);
        let known = fresh(&self.cache.siblings, &key);
        let mut found = [false; 3];
        let mut siblings = Vec::new();
        for (index, coding) in PRECOMPRESSED.into_iter().enumerate() {
            if known.is_some_and(|known| !known[index]) {
                continue;
            }
            let mut name = path.clone().into_os_string();
            name.push(coding.file_suffix());
            if let Ok(sibling) = self.regular(Path::new(&name)) {
                found[index] = true;
                siblings.push((coding, sibling));
            }
        }
        if known != Some(found) {
            remember(&self.cache.siblings, KEPT, key, found);
        }
        let varies = !siblings.is_empty();
        let offered: Vec<Coding> = siblings.iter().map(|(coding, _)| *coding).collect();
        let mut encoding = None;
        if let Some(chosen) = accepted.and_then(|a| a.choose(&offered))
            && let Some(index) = siblings.iter().position(|(coding, _)| *coding == chosen)
        {
            let (coding, sibling) = siblings.swap_remove(index);
            (file, meta) = sibling;
            encoding = Some(coding);
        }
        Resolved::File(Opened {
            source: Source::File(Arc::new(file)),
            length: meta.len(),
            modified: meta.modified().ok(),
            content_type: content_type(&path),
            encoding,
            varies,
        })
    }
}

/// How every file is opened: for reading, never blocking on a FIFO.
const READ: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC);

fn with_metadata(fd: OwnedFd) -> Result<(File, Metadata), Resolved> {
    let file = File::from(fd);
    match file.metadata() {
        Ok(meta) => Ok((file, meta)),
        Err(err) => Err(Resolved::Failed(err)),
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
        let get = |rel: &str| {
            under_root(
                root.path(),
                Path::new(rel),
                Directory::Redirect,
                None,
                &LookupCache::default(),
            )
        };
        assert!(matches!(get("leak"), Resolved::NotFound));
        assert!(matches!(get("leakdir/secret"), Resolved::NotFound));
        assert!(matches!(get("alias.txt"), Resolved::File(_)));
        assert!(matches!(get("missing"), Resolved::NotFound));
        // Relative symlinks: followed inside, refused when they climb out.
        std::fs::create_dir(root.path().join("sub")).unwrap();
        symlink("../real.txt", root.path().join("sub/up.txt")).unwrap();
        let climb = Path::new("..")
            .join(outside.path().file_name().unwrap())
            .join("secret");
        symlink(&climb, root.path().join("climb")).unwrap();
        assert!(matches!(get("sub/up.txt"), Resolved::File(_)));
        assert!(matches!(get("climb"), Resolved::NotFound));
        // A sibling escaping the root is neither served nor announced.
        let mut headers = hyper::HeaderMap::new();
        headers.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let accepted = Accepted::from_headers(&headers);
        match under_root(
            root.path(),
            Path::new("a.txt"),
            Directory::Refuse,
            accepted.as_ref(),
            &LookupCache::default(),
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
            under_any_root(&roots, &outside_path, None, &LookupCache::default()),
            Resolved::NotFound
        ));
        assert!(matches!(
            under_any_root(
                &roots,
                &root.path().join("real.txt"),
                None,
                &LookupCache::default()
            ),
            Resolved::File(_)
        ));
        assert!(matches!(
            under_any_root(&roots, Path::new("real.txt"), None, &LookupCache::default()),
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
        let get = |rel: &str, d| {
            under_root(
                root.path(),
                Path::new(rel),
                d,
                None,
                &LookupCache::default(),
            )
        };
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
