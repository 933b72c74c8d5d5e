//! Opening a path beneath a directory descriptor, so that nothing on the way (`..`, a
//! symlink, a directory renamed or swapped for a symlink while the lookup runs) can lead
//! outside that directory.
//!
//! `openat2(2)` with RESOLVE_BENEATH (Linux 5.6 or later) makes the kernel refuse, in
//! one call, any resolution that would leave the directory, however the tree changes
//! meanwhile. Where it does not exist (ENOSYS: an older kernel, or a sandbox that hides
//! it), the same rules are kept by walking one component at a time with `openat(2)` and
//! O_NOFOLLOW from descriptors already held: a symlink is read and its target walked
//! the same way, `..` steps back to a descriptor held (never above the start), and an
//! absolute symlink is refused. It costs one system call per component instead of one
//! per path, which is why it is only the fallback.
//!
//! Both answer EXDEV for a path that would leave the directory. Nothing here ever opens
//! a path by its absolute name.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::Mode;
use tracing::warn;

/// Symlinks followed at most in one lookup (the kernel's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// Set once openat2(2) has answered ENOSYS: it is not tried again.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// `path` (relative; empty for the directory itself) opened beneath `dir` with `flags`,
/// or EXDEV when it would lead outside.
pub fn open(dir: &OwnedFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match open_beneath(dir, path, flags) {
            Err(Errno::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                warn!(
                    "openat2(2) is not available (it needs Linux 5.6): static files are looked up one path component at a time"
                );
            }
            opened => return opened,
        }
    }
    walk(dir, path, flags)
}

/// The lookup of [`open`] by the kernel: openat2(2) with RESOLVE_BENEATH.
fn open_beneath(dir: &OwnedFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let name = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(dir, name, how)
}

/// The lookup of [`open`] without openat2: one component at a time, the kernel never
/// following a symlink itself.
fn walk(start: &OwnedFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    // The directories entered below `start`, innermost last: `..` steps back to them.
    let mut entered: Vec<OwnedFd> = Vec::new();
    // The components still to walk, the next one last.
    let mut left: Vec<OsString> = Vec::new();
    push_components(&mut left, path)?;
    let mut links = 0;
    while let Some(name) = left.pop() {
        if name == ".." {
            match entered.pop() {
                Some(_) => continue,
                None => return Err(Errno::EXDEV),
            }
        }
        let here = entered.last().unwrap_or(start);
        let last = left.is_empty();
        let opened = match last {
            true => openat(
                here,
                name.as_os_str(),
                flags | OFlag::O_NOFOLLOW,
                Mode::empty(),
            ),
            false => openat(
                here,
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
        };
        match opened {
            Ok(fd) if last => return Ok(fd),
            Ok(fd) => entered.push(fd),
            // O_NOFOLLOW met a symlink (ELOOP; ENOTDIR where a directory was asked
            // for) or the name is not a directory: a symlink's target is walked from
            // here, anything else fails as it did.
            Err(refused @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                let Ok(target) = readlinkat(here, name.as_os_str()) else {
                    return Err(refused);
                };
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::ELOOP);
                }
                push_components(&mut left, Path::new(&target))?;
            }
            Err(err) => return Err(err),
        }
    }
    // An empty path, or one ending in `..`: the directory reached.
    openat(entered.last().unwrap_or(start), ".", flags, Mode::empty())
}

/// Puts `path`'s components in front of those `left` to walk; EXDEV for an absolute
/// path (RESOLVE_BENEATH refuses an absolute symlink too).
fn push_components(left: &mut Vec<OsString>, path: &Path) -> nix::Result<()> {
    let from = left.len();
    for component in path.components() {
        match component {
            Component::Normal(name) => left.push(name.to_owned()),
            Component::ParentDir => left.push(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(Errno::EXDEV),
        }
    }
    left[from..].reverse();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    const FLAGS: OFlag = OFlag::O_RDONLY
        .union(OFlag::O_NONBLOCK)
        .union(OFlag::O_CLOEXEC);

    /// What an open found: the inode, or the error.
    fn found(opened: nix::Result<OwnedFd>) -> Result<u64, Errno> {
        opened.map(|fd| std::fs::File::from(fd).metadata().unwrap().ino())
    }

    #[test]
    fn the_walk_answers_as_openat2_does() {
        let top = tempfile::tempdir().unwrap();
        let outside = top.path().join("outside");
        let root = top.path().join("root");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "secret").unwrap();
        std::fs::write(root.join("real.txt"), "real").unwrap();
        std::fs::write(root.join("sub/deeper/file"), "deep").unwrap();
        symlink("../real.txt", root.join("sub/up.txt")).unwrap();
        symlink("sub/deeper", root.join("deep")).unwrap();
        symlink("../outside/secret", root.join("climb")).unwrap();
        symlink("../outside", root.join("climbdir")).unwrap();
        symlink(&outside, root.join("absolute")).unwrap();
        symlink(root.join("real.txt"), root.join("absolute-inside")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("sub/..", root.join("dotdot")).unwrap();
        let dir = OwnedFd::from(std::fs::File::open(&root).unwrap());
        let cases = [
            ("", Ok(())),
            ("real.txt", Ok(())),
            ("sub", Ok(())),
            ("sub/deeper/file", Ok(())),
            ("sub/up.txt", Ok(())),
            ("deep/file", Ok(())),
            ("deep/../up.txt", Ok(())),
            ("dotdot/real.txt", Ok(())),
            ("sub/..", Ok(())),
            ("missing", Err(Errno::ENOENT)),
            ("real.txt/x", Err(Errno::ENOTDIR)),
            ("loop", Err(Errno::ELOOP)),
            ("..", Err(Errno::EXDEV)),
            ("sub/../..", Err(Errno::EXDEV)),
            ("climb", Err(Errno::EXDEV)),
            ("climbdir/secret", Err(Errno::EXDEV)),
            ("absolute/secret", Err(Errno::EXDEV)),
            ("absolute-inside", Err(Errno::EXDEV)),
        ];
        for (path, expected) in cases {
            let path = Path::new(path);
            let walked = found(walk(&dir, path, FLAGS));
            let kernel = found(open_beneath(&dir, path, FLAGS));
            assert_eq!(walked, kernel, "{}", path.display());
            assert_eq!(walked.map(|_| ()), expected, "{}", path.display());
        }
        // The same file either way.
        let real = std::fs::metadata(root.join("real.txt")).unwrap().ino();
        assert_eq!(found(walk(&dir, Path::new("sub/up.txt"), FLAGS)), Ok(real));
    }
}
