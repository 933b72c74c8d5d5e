//! The APP argument: which module to import and which callable in it to serve.

use std::path::{Path, PathBuf};

use super::error::ConfigError;

/// Where the application lives, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// The text the user gave, for messages and process titles.
    pub text: String,
    /// A directory to put first on sys.path (`dir/module:app` form).
    pub dir: Option<PathBuf>,
    /// The dotted module name.
    pub module: String,
    /// The attribute path of the callable inside the module (`app`, `a.b`).
    pub callable: String,
    /// Literal arguments when the callable is a factory: `Some("")` for `factory()`.
    pub factory_args: Option<String>,
}

fn is_dotted_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        })
}

impl AppSpec {
    /// Parses `module:callable`, `module`, `dir/module:callable` or `module:factory(args)`.
    /// A relative `dir` is taken relative to `chdir` when one is given.
    pub fn parse(text: &str, chdir: Option<&Path>) -> Result<AppSpec, ConfigError> {
        let bad = |why: &str| ConfigError::new("APP", format!("{text:?}: {why}"));
        let (location, object) = match text.split_once(':') {
            Some((location, object)) => (location, object.trim()),
            None => (text, "application"),
        };
        let (dir, module) = match location.rsplit_once('/') {
            Some((dir, module)) => {
                let dir = if dir.is_empty() {
                    PathBuf::from("/")
                } else {
                    PathBuf::from(dir)
                };
                let resolved = match chdir {
                    Some(base) if dir.is_relative() => base.join(&dir),
                    _ => dir.clone(),
                };
                if !resolved.is_dir() {
                    return Err(bad(&format!("{} is not a directory", resolved.display())));
                }
                (Some(dir), module.trim_end_matches(".py"))
            }
            None => (None, location),
        };
        if !is_dotted_identifier(module) {
            return Err(bad(
                "the module must be a dotted Python name, like package.module",
            ));
        }
        let (callable, factory_args) = match object.split_once('(') {
            Some((name, rest)) => match rest.strip_suffix(')') {
                Some(args) => (name.trim(), Some(args.trim().to_string())),
                None => return Err(bad("a factory call must end with ')'")),
            },
            None => (object, None),
        };
        if !is_dotted_identifier(callable) {
            return Err(bad(
                "the callable must be a Python name, like app or create_app()",
            ));
        }
        Ok(AppSpec {
            text: text.to_string(),
            dir,
            module: module.to_string(),
            callable: callable.to_string(),
            factory_args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let s = AppSpec::parse("hello:app", None).unwrap();
        assert_eq!(
            (
                s.module.as_str(),
                s.callable.as_str(),
                s.dir,
                s.factory_args
            ),
            ("hello", "app", None, None)
        );
        let s = AppSpec::parse("pkg.mod", None).unwrap();
        assert_eq!(
            (s.module.as_str(), s.callable.as_str()),
            ("pkg.mod", "application")
        );
        let s = AppSpec::parse("src:create_app()", None).unwrap();
        assert_eq!(
            (s.callable.as_str(), s.factory_args.as_deref()),
            ("create_app", Some(""))
        );
        let s = AppSpec::parse("src/hello:app", None).unwrap();
        assert_eq!(
            (s.dir.unwrap(), s.module.as_str()),
            (PathBuf::from("src"), "hello")
        );
    }

    #[test]
    fn mistakes_are_named() {
        for bad in [
            "",
            "1abc:app",
            "hello:",
            "hello:app(",
            "no/such/dir/m:app",
            "a-b:app",
        ] {
            let err = AppSpec::parse(bad, None).unwrap_err();
            assert_eq!(err.setting, "APP", "{bad}");
        }
    }
}
