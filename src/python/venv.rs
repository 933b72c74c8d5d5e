//! Which Python rwsgi runs, and the virtualenv it serves from.
//!
//! rwsgi embeds the libpython it was linked against (build.rs). A virtualenv belongs to
//! one Python build: served by another one, the embedded interpreter loads the wrong
//! standard library or silently drops the venv's packages. So before any Python runs,
//! the venv's `pyvenv.cfg` (`version`, `executable` or `home`) is compared with the
//! embedded interpreter, and a mismatch is refused in one line that names both and the
//! fix. The venv in use is the one holding the `rwsgi` executable (a wheel installed it
//! there, as a console script is bound to its venv), else `VIRTUAL_ENV`.
//!
//! Nothing here initialises the interpreter: the master calls it before forking.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use pyo3::ffi;

use crate::config::Settings;

/// The real executable of the Python rwsgi was built against (see build.rs).
const BASE_PYTHON: Option<&str> = option_env!("RWSGI_BASE_PYTHON");

/// Directories beside an application that hold a venv by habit (`python -m venv .venv`).
const HABITUAL_VENVS: [&str; 2] = [".venv", "venv"];

/// The embedded interpreter's version, `3.11.7`, as the loaded libpython reports it.
pub fn embedded_version() -> String {
    // SAFETY: Py_GetVersion is documented as safe before initialisation; it returns a
    // static NUL-terminated string owned by libpython.
    let full = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    release(full.split_whitespace().next().unwrap_or_default())
}

/// `3.11.7` out of `3.11.7`, `3.9.18.final.0` (virtualenv) or `3.13.0rc1` (libpython),
/// the way venv writes `version` into pyvenv.cfg.
fn release(version: &str) -> String {
    let numbers: Vec<&str> = version
        .split('.')
        .take(3)
        .map(|part| {
            part.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or_default()
        })
        .collect();
    numbers.join(".")
}

/// A virtualenv: its directory and what its `pyvenv.cfg` says about its Python.
#[derive(Debug, PartialEq)]
pub struct Venv {
    /// The venv's directory (what `VIRTUAL_ENV` names).
    pub dir: PathBuf,
    /// `version` (or virtualenv's `version_info`): the base Python's version.
    version: Option<String>,
    /// The base Python's executable: `executable`, or the `python3.X` in `home`.
    base: Option<PathBuf>,
}

impl Venv {
    /// Reads `dir/pyvenv.cfg`; `None` when `dir` is not a venv.
    pub fn read(dir: &Path) -> Option<Venv> {
        let text = std::fs::read_to_string(dir.join("pyvenv.cfg")).ok()?;
        Some(Venv::parse(dir, &text))
    }

    fn parse(dir: &Path, text: &str) -> Venv {
        let value = |wanted: &str| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                (key.trim() == wanted).then(|| value.trim().to_string())
            })
        };
        let version = value("version")
            .or_else(|| value("version_info"))
            .map(|v| release(&v));
        // venv (3.11+) writes the base `executable`; before that only its `home` dir.
        let base = value("executable").map(PathBuf::from).or_else(|| {
            let home = PathBuf::from(value("home")?);
            let short = version.as_deref().and_then(major_minor);
            let names = short.map(|mm| format!("python{mm}")).into_iter();
            names
                .chain(["python3".to_string(), "python".to_string()])
                .map(|name| home.join(name))
                .find(|candidate| candidate.exists())
        });
        Venv {
            dir: dir.to_path_buf(),
            version,
            base,
        }
    }

    /// The venv's own `python`, the `sys.executable` its programs report.
    pub fn python(&self) -> Option<PathBuf> {
        ["python3", "python"]
            .iter()
            .map(|name| self.dir.join("bin").join(name))
            .find(|candidate| candidate.exists())
    }

    /// Whether this venv was made by the embedded Python (same version, same build).
    fn matches(&self, version: &str, base: Option<&Path>) -> bool {
        let same_build = match (&self.base, base) {
            (Some(ours), Some(theirs)) => real(ours) == real(theirs),
            // Nothing to compare the build by: the version has to do.
            _ => true,
        };
        self.version.as_deref().is_none_or(|v| v == version) && same_build
    }

    fn describe(&self) -> String {
        let version = self.version.as_deref().unwrap_or("of unknown version");
        match &self.base {
            Some(base) => format!("Python {version} ({})", base.display()),
            None => format!("Python {version}"),
        }
    }
}

fn major_minor(version: &str) -> Option<String> {
    let mut parts = version.split('.');
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}

fn real(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The venv this process serves from: the one holding the running `rwsgi` (installed
/// there by the wheel), else the one `VIRTUAL_ENV` names.
pub fn active() -> Option<Venv> {
    let own = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .and_then(|dir| Venv::read(&dir));
    let named = std::env::var_os("VIRTUAL_ENV").filter(|dir| !dir.is_empty());
    own.or_else(|| Venv::read(Path::new(&named?)))
}

/// The embedded Python, in words: `Python 3.11.7 (/usr/bin/python3.11)`.
fn embedded() -> String {
    match BASE_PYTHON {
        Some(base) => format!("Python {} ({base})", embedded_version()),
        None => format!("Python {}", embedded_version()),
    }
}

/// The Python in use, for `--version` and the first log line: its version and the
/// `python` the application sees as `sys.executable`.
pub fn describe() -> String {
    let version = embedded_version();
    match executable() {
        Some(python) => format!("Python {version} ({})", python.display()),
        None => format!("Python {version}"),
    }
}

/// The `python` whose `sys.executable` the workers report: the active venv's when it
/// is of the embedded Python, else the embedded Python itself.
pub fn executable() -> Option<PathBuf> {
    let version = embedded_version();
    let base = BASE_PYTHON.map(PathBuf::from);
    active()
        .filter(|venv| venv.matches(&version, base.as_deref()))
        .and_then(|venv| venv.python())
        .or_else(|| base.filter(|b| b.exists()))
}

/// Refuses a venv made by another Python than the embedded one: the one line to print.
pub fn check() -> Result<(), String> {
    let Some(venv) = active() else {
        return Ok(());
    };
    let version = embedded_version();
    if venv.matches(&version, BASE_PYTHON.map(Path::new)) {
        return Ok(());
    }
    Err(mismatch(&venv, &embedded()))
}

fn mismatch(venv: &Venv, embedded: &str) -> String {
    let rebuild = match &venv.base {
        Some(base) => format!("PYO3_PYTHON={}", base.display()),
        None => "PYO3_PYTHON=<its python>".to_string(),
    };
    format!(
        "the virtualenv {} was made by {}, but this rwsgi embeds {embedded}: install rwsgi into \
         that virtualenv with its pip (`pip install rwsgi`, or `pip install .` from a \
         checkout), or rebuild it with `{rebuild} cargo build --release`",
        venv.dir.display(),
        venv.describe(),
    )
}

/// Logs one warning when a `.venv/` or `venv/` beside the application is not the venv
/// in use. Called after --chdir: the working directory is the application's.
pub fn hint_idle(settings: &Settings) {
    let dirs = [Path::new(".")];
    let dirs = dirs.iter().copied().chain(settings.app.dir.as_deref());
    if let Some(hint) = idle_venv_hint(dirs) {
        tracing::warn!("{hint}");
    }
}

/// A venv in one of `dirs` that is not the one in use: the hint line, since its
/// packages will not import.
fn idle_venv_hint<'a>(dirs: impl Iterator<Item = &'a Path>) -> Option<String> {
    let in_use = active().map(|venv| real(&venv.dir));
    let idle = dirs
        .flat_map(|dir| HABITUAL_VENVS.iter().map(move |name| dir.join(name)))
        .find(|dir| dir.join("pyvenv.cfg").is_file() && in_use.as_ref() != Some(&real(dir)))?;
    let shown = idle.display();
    Some(format!(
        "{shown} holds a virtualenv that is not active: its packages will not import; \
         activate it (`source {shown}/bin/activate`) or install rwsgi into it \
         (`{shown}/bin/pip install rwsgi`) and run `{shown}/bin/rwsgi`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_venvs_executable_key() {
        let venv = Venv::parse(
            Path::new("/srv/venv"),
            "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n\
             executable = /usr/bin/python3.11\ncommand = /usr/bin/python3 -m venv /srv/venv\n",
        );
        assert_eq!(venv.version.as_deref(), Some("3.11.2"));
        assert_eq!(venv.base.as_deref(), Some(Path::new("/usr/bin/python3.11")));
        assert!(venv.matches("3.11.2", Some(Path::new("/usr/bin/python3.11"))));
        assert!(!venv.matches("3.11.7", Some(Path::new("/usr/bin/python3.11"))));
        assert!(!venv.matches("3.11.2", Some(Path::new("/opt/python/bin/python3.11"))));
    }

    #[test]
    fn reads_virtualenvs_version_info() {
        let venv = Venv::parse(
            Path::new("/srv/venv"),
            "home = /nonexistent/bin\nversion_info = 3.9.18.final.0\n",
        );
        assert_eq!(venv.version.as_deref(), Some("3.9.18"));
        assert!(venv.matches("3.9.18", None));
        assert_eq!(venv.base, None);
        assert!(!venv.matches("3.11.7", None));
    }

    #[test]
    fn releases_compare_without_their_suffixes() {
        assert_eq!(release("3.13.0rc1"), "3.13.0");
        assert_eq!(release("3.11.7"), "3.11.7");
        assert_eq!(release("3.9.18.final.0"), "3.9.18");
    }

    #[test]
    fn the_refusal_is_one_line_naming_both_pythons_and_the_fix() {
        let venv = Venv::parse(
            Path::new("/srv/venv"),
            "version = 3.12.1\nexecutable = /opt/py/bin/python3.12\n",
        );
        let line = mismatch(&venv, "Python 3.11.7 (/usr/bin/python3.11)");
        assert!(!line.contains('\n'), "{line}");
        for part in [
            "/srv/venv",
            "Python 3.12.1 (/opt/py/bin/python3.12)",
            "Python 3.11.7 (/usr/bin/python3.11)",
            "pip install rwsgi",
            "PYO3_PYTHON=/opt/py/bin/python3.12 cargo build --release",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
    }
}
