//! `--hooks`: where the worker hooks are. Checked before any fork as far as that can be
//! done without Python: a file must exist, a module name must look like one (whether it
//! imports is only known in a worker, which reports it once).

use std::path::PathBuf;

use super::error::ConfigError;

/// The Python module holding the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HooksSource {
    /// A module imported by name through `sys.path`, as the application is.
    Module(String),
    /// A `.py` file (a gunicorn config file works), made absolute before `--chdir`.
    File(PathBuf),
}

impl HooksSource {
    /// Parses `--hooks`: a path if it has a `/` or ends in `.py`, else a module name.
    pub fn parse(text: &str) -> Result<HooksSource, ConfigError> {
        let error = |message: String| ConfigError::new("--hooks", message);
        if text.contains('/') || text.ends_with(".py") {
            let path = PathBuf::from(text);
            if !path.is_file() {
                return Err(error(format!("{text}: no such file")));
            }
            // Relative to where rwsgi was started, as the user typed it: --chdir happens later.
            let path = std::path::absolute(&path).map_err(|err| error(format!("{text}: {err}")))?;
            return Ok(HooksSource::File(path));
        }
        let is_identifier = |part: &str| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        };
        if !text.split('.').all(is_identifier) {
            return Err(error(format!(
                "{text:?} is neither a module name nor a path to a .py file"
            )));
        }
        Ok(HooksSource::Module(text.to_string()))
    }
}

impl std::fmt::Display for HooksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HooksSource::Module(name) => f.write_str(name),
            HooksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_files() {
        assert_eq!(
            HooksSource::parse("my_hooks").unwrap(),
            HooksSource::Module("my_hooks".into())
        );
        assert_eq!(
            HooksSource::parse("pkg.hooks").unwrap(),
            HooksSource::Module("pkg.hooks".into())
        );
        for bad in ["", "pkg..hooks", "1abc", "a-b", "hooks."] {
            let err = HooksSource::parse(bad).unwrap_err();
            assert_eq!(err.setting, "--hooks", "{bad}");
        }
        assert!(HooksSource::parse("/no/such/hooks.py").is_err());
        assert!(HooksSource::parse("missing.py").is_err());
        let file = HooksSource::parse("Cargo.toml/").unwrap_err();
        assert_eq!(file.setting, "--hooks");
        match HooksSource::parse("src/main.rs").unwrap() {
            HooksSource::File(path) => assert!(path.is_absolute()),
            other => panic!("{other:?}"),
        }
    }
}
