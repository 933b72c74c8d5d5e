//! `--static` and `--internal` values: a URL prefix mapped to a directory.
//!
//! Only the shape of the value and the existence of the directory are checked here. The
//! directory is kept as given (made absolute), not canonicalized: the front tier resolves
//! it again for every request, so a deploy that swaps a `current -> release-N` symlink
//! is picked up without a restart.

use std::path::{Path, PathBuf};

use super::error::ConfigError;
use crate::cli::ServeArgs;

/// A URL prefix served from a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The URL path prefix, starting with `/`, without a trailing `/` (except `/` itself).
    /// It is matched against the request path as received, on segment boundaries.
    pub prefix: String,
    /// The directory, absolute.
    pub root: PathBuf,
}

impl Mount {
    /// Parses `URL_PREFIX=DIR` for the flag `setting`. A relative DIR is taken relative to
    /// `chdir` when one is given, else to the current directory.
    pub fn parse(
        setting: &'static str,
        text: &str,
        chdir: Option<&Path>,
    ) -> Result<Mount, ConfigError> {
        let bad = |why: &str| ConfigError::new(setting, format!("{text:?}: {why}"));
        let Some((prefix, dir)) = text.split_once('=') else {
            return Err(bad("expected URL_PREFIX=DIR, like /assets=./static"));
        };
        if !prefix.starts_with('/') {
            return Err(bad("the URL prefix must start with '/'"));
        }
        if prefix
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#' || b == b'%')
        {
            return Err(bad(
                "the URL prefix may not contain spaces, control characters, '?', '#' or '%'",
            ));
        }
        if prefix
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(bad("the URL prefix may not contain '.' or '..' segments"));
        }
        let trimmed = prefix.trim_end_matches('/');
        let prefix = if trimmed.is_empty() { "/" } else { trimmed };
        if dir.is_empty() {
            return Err(bad("the directory is empty"));
        }
        let dir = PathBuf::from(dir);
        let root = match chdir {
            Some(base) if dir.is_relative() => base.join(&dir),
            _ => dir,
        };
        let root =
            std::path::absolute(&root).map_err(|err| bad(&format!("{}: {err}", root.display())))?;
        if !root.is_dir() {
            return Err(bad(&format!("{} is not a directory", root.display())));
        }
        Ok(Mount {
            prefix: prefix.to_string(),
            root,
        })
    }

    /// The part of `path` under this mount's prefix (empty or starting with `/`), if the
    /// prefix matches on a segment boundary: `/assets` matches `/assets` and `/assets/x`,
    /// never `/assetsfoo`.
    pub fn strip<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.prefix == "/" {
            return path.starts_with('/').then_some(path);
        }
        let rest = path.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

/// Where the front tier finds files: `--static`, `--internal`, `--static-max-age`.
#[derive(Debug, Clone, Default)]
pub struct FileSettings {
    /// `--static` mounts, served to clients directly.
    pub static_mounts: Vec<Mount>,
    /// `--internal` mounts, reachable only through an app's X-Accel-Redirect.
    pub internal_mounts: Vec<Mount>,
    /// `Cache-Control: public, max-age=N` on static files, when given.
    pub max_age: Option<u64>,
}

impl FileSettings {
    /// Whether the front tier serves files an app's response points at (X-Sendfile,
    /// X-Accel-Redirect, ASGI's pathsend): some `--static` or `--internal` directory.
    pub fn has_targets(&self) -> bool {
        !self.static_mounts.is_empty() || !self.internal_mounts.is_empty()
    }

    /// Checks the file-serving flags of `rwsgi serve`.
    pub fn from_args(args: &ServeArgs) -> Result<FileSettings, ConfigError> {
        let chdir = args.chdir.as_deref();
        let static_mounts = parse_all("--static", &args.static_mounts, chdir)?;
        let internal_mounts = parse_all("--internal", &args.internal, chdir)?;
        if let Some(clash) = internal_mounts
            .iter()
            .find(|i| static_mounts.iter().any(|s| s.prefix == i.prefix))
        {
            return Err(ConfigError::new(
                "--internal",
                format!("the prefix {} is also a --static prefix", clash.prefix),
            ));
        }
        Ok(FileSettings {
            static_mounts,
            internal_mounts,
            max_age: args.static_max_age,
        })
    }
}

/// Parses every value of one repeatable mount flag, refusing a prefix given twice.
pub fn parse_all(
    setting: &'static str,
    values: &[String],
    chdir: Option<&Path>,
) -> Result<Vec<Mount>, ConfigError> {
    let mut mounts: Vec<Mount> = Vec::with_capacity(values.len());
    for value in values {
        let mount = Mount::parse(setting, value, chdir)?;
        if mounts.iter().any(|m| m.prefix == mount.prefix) {
            return Err(ConfigError::new(
                setting,
                format!("{value:?}: the prefix {} is given twice", mount.prefix),
            ));
        }
        mounts.push(mount);
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn forms() {
        let dir = tmp();
        let d = dir.path().display();
        let m = Mount::parse("--static", &format!("/assets/={d}"), None).unwrap();
        assert_eq!(m.prefix, "/assets");
        assert_eq!(m.root, dir.path());
        let m = Mount::parse("--static", &format!("/={d}"), None).unwrap();
        assert_eq!(m.prefix, "/");
        let m = Mount::parse("--static", "/x=.", Some(dir.path())).unwrap();
        assert_eq!(m.root, dir.path().join("."));
    }

    #[test]
    fn mistakes_are_named() {
        let dir = tmp();
        let d = dir.path().display();
        for bad in [
            format!("assets={d}"),
            format!("/a b={d}"),
            format!("/a?b={d}"),
            format!("/a/../b={d}"),
            "/assets=".to_string(),
            "/assets".to_string(),
            format!("/assets={d}/no-such-dir"),
        ] {
            let err = Mount::parse("--static", &bad, None).unwrap_err();
            assert_eq!(err.setting, "--static", "{bad}");
        }
        let twice = [format!("/a={d}"), format!("/a/={d}")];
        assert!(parse_all("--internal", &twice, None).is_err());
    }

    #[test]
    fn matches_on_segment_boundaries() {
        let m = Mount {
            prefix: "/assets".into(),
            root: "/".into(),
        };
        assert_eq!(m.strip("/assets"), Some(""));
        assert_eq!(m.strip("/assets/"), Some("/"));
        assert_eq!(m.strip("/assets/a/b.css"), Some("/a/b.css"));
        assert_eq!(m.strip("/assetsfoo"), None);
        assert_eq!(m.strip("/asset"), None);
        assert_eq!(m.strip("/other/assets/x"), None);
        let root = Mount {
            prefix: "/".into(),
            root: "/".into(),
        };
        assert_eq!(root.strip("/x"), Some("/x"));
    }
}
