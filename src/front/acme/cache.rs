//! The `--acme-cache` directory: the account's credentials and each domain's key and
//! certificate chain, one subdirectory per CA directory (a staging certificate must
//! never be served once production is configured).
//!
//! Every file is private (0600, in directories 0700) and written whole or not at all:
//! a temporary file in the same directory, fsync, rename, fsync of the directory, so a
//! crash mid-write leaves the old file.

use std::fs::DirBuilder;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// One CA directory's part of the cache.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The part of `root` that belongs to the CA at `directory` (not created yet).
    pub fn new(root: &Path, directory: &str) -> Cache {
        let slug: String = directory
            .trim_start_matches("https://")
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    true => c,
                    false => '_',
                },
            )
            .collect();
        Cache {
            dir: root.join(slug),
        }
    }

    /// Where the account's credentials are.
    pub fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// Where `domain`'s private key and certificate chain are (one PEM file).
    pub fn certificate(&self, domain: &str) -> PathBuf {
        self.dir.join(format!("{domain}.pem"))
    }

    /// Writes `bytes` to `path` (in this cache) privately and atomically.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // tempfile creates its files 0600.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|err| err.error)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path(), "https://ca.example:14000/dir");
        assert!(
            cache
                .account()
                .starts_with(root.path().join("ca.example_14000_dir"))
        );
        let path = cache.certificate("a.example");
        cache.write(&path, b"one").unwrap();
        cache.write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
