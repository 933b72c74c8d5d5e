//! `--reload` and `--reload-extra-file`: the development server's settings, checked
//! before any fork (a glob that does not compile is the user's mistake, named at once).

use std::path::Path;

use super::error::ConfigError;
use crate::cli::ServeArgs;

/// What the `--reload` watcher watches for besides `*.py`.
#[derive(Debug, Clone, Default)]
pub struct Reload {
    /// `--reload-extra-file` patterns, made absolute against the directory rwsgi was
    /// started in (as the user typed them: `--chdir` happens later).
    pub extra: Vec<String>,
}

impl Reload {
    /// `None` without `--reload`.
    pub fn from_args(args: &ServeArgs) -> Result<Option<Reload>, ConfigError> {
        if !args.reload {
            if !args.reload_extra_file.is_empty() {
                return Err(ConfigError::new("--reload-extra-file", "needs --reload"));
            }
            return Ok(None);
        }
        if args.preload {
            return Err(ConfigError::new(
                "--reload",
                "cannot be used with --preload: the master would keep the code it imported",
            ));
        }
        let mut extra = Vec::new();
        for pattern in &args.reload_extra_file {
            let absolute = match Path::new(pattern).is_absolute() {
                true => pattern.clone(),
                false => {
                    let here = std::env::current_dir().map_err(|err| {
                        ConfigError::new("--reload-extra-file", format!("{pattern}: {err}"))
                    })?;
                    format!("{}/{pattern}", here.display())
                }
            };
            globset::Glob::new(&absolute).map_err(|err| {
                ConfigError::new("--reload-extra-file", format!("{pattern}: {err}"))
            })?;
            extra.push(absolute);
        }
        Ok(Some(Reload { extra }))
    }
}
