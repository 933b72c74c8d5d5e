//! Where each setting comes from: the command line over the environment (`RWSGI_*`, then
//! `GUNICORN_CMD_ARGS`) over the config file (rwsgi's TOML, or gunicorn's Python) over
//! the defaults, with the place each value was set.
//!
//! Why this shape: the clap structure `cli::ServeArgs` stays the one list of settings.
//! The keys of the file and the names of the variables are derived from its metadata (a
//! key is the long flag name in snake_case, a variable is `RWSGI_` and the key in
//! capitals); each value from the file or the environment is checked by that flag's own
//! clap parser; and the winning values are turned back into a command line that clap
//! parses into `ServeArgs`. So the checks and messages of `Settings::from_args` apply to
//! every layer, and a new flag gets its key and its variable without a line of work. An
//! explicit serde struct would have been a second list of settings to keep in step with
//! the first.
//!
//! Nothing here binds, forks or imports: it reads one file and the environment.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};

use super::error::ConfigError;
use super::gunicorn::{self, CMD_ARGS_VAR};
use super::keys::{ENV_PREFIX, Given, Key, Kind, Layer, LoadError, Origin, Sourced, keys_of};
use super::{env, file};
use crate::cli::ServeArgs;

/// The config file looked for in the working directory when no `-c` is given.
pub const DEFAULT_FILE: &str = "rwsgi.toml";

/// gunicorn's config file, looked for in the working directory when there is no `-c`
/// and no `rwsgi.toml`.
pub const GUNICORN_DEFAULT_FILE: &str = "gunicorn.conf.py";

/// The clap command of the settings (with gunicorn's spellings), parsing values without
/// a program name.
pub(super) fn command() -> Command {
    gunicorn::augment(ServeArgs::augment_args(Command::new("rwsgi")).no_binary_name(true))
}

/// The effective `ServeArgs` of a command, and where each of its values came from.
#[derive(Debug)]
pub struct Layered {
    /// The arguments every layer agreed on, ready for `Settings::from_args`.
    pub args: ServeArgs,
    /// The config file read, if any, and where it was named.
    pub file: Option<(PathBuf, Origin)>,
    /// One line for each setting accepted but ignored, and each unknown `RWSGI_*`
    /// variable: to be logged as warnings.
    pub warnings: Vec<String>,
    /// gunicorn's `--check-config` was given: do `rwsgi check` instead.
    pub check_config: bool,
    /// gunicorn's `--print-config` was given: do `rwsgi config` instead.
    pub print_config: bool,
    pub(super) keys: Vec<Key>,
    pub(super) origins: BTreeMap<String, Origin>,
    pub(super) matches: ArgMatches,
}

impl Layered {
    /// Layers the command line `cli` (a subcommand's matches of `ServeArgs`) over the
    /// environment (read through `lookup`) over the config file over the defaults.
    pub fn load(
        cli: &ArgMatches,
        lookup: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Layered, LoadError> {
        let cmd = command();
        let keys = keys_of(&cmd);
        let cli_compat = gunicorn::compat(cli, None)?;
        let cmd_args = gunicorn_cmd_args(&cmd, lookup)?;
        let args_compat = match &cmd_args {
            Some(matches) => gunicorn::compat(matches, Some(CMD_ARGS_VAR))?,
            None => gunicorn::Compat::default(),
        };
        let mut warnings = cli_compat.warnings;
        warnings.extend(args_compat.warnings);
        let file = config_file(cli, cmd_args.as_ref())?;
        let file_layer = match &file {
            Some((path, _)) if is_gunicorn_file(path) => {
                let read = gunicorn::read_file(&path.to_string_lossy(), &keys)?;
                warnings.extend(read.warnings);
                read.layer
            }
            Some((path, _)) => file::read(path, &keys)?,
            None => Layer::new(),
        };
        let env_layer = env::read(&keys, lookup)?;
        warnings.extend(env::unknown(
            &keys,
            std::env::vars_os().map(|(name, _)| name),
        ));
        let args_layer = match &cmd_args {
            Some(matches) => layer_of(matches, &keys, Origin::Env(CMD_ARGS_VAR.into())),
            None => Layer::new(),
        };
        for layer in [&file_layer, &args_layer, &env_layer] {
            check(&cmd, &keys, layer)?;
        }
        let mut origins = BTreeMap::new();
        let mut argv: Vec<OsString> = Vec::new();
        let mut positional: Vec<OsString> = Vec::new();
        for key in &keys {
            let winner = given_by(cli, key, ValueSource::CommandLine)
                .or_else(|| env_layer.get(&key.id).cloned())
                .or_else(|| args_layer.get(&key.id).cloned())
                .or_else(|| given_by(cli, key, ValueSource::EnvVariable))
                .or_else(|| file_layer.get(&key.id).cloned());
            let Some(Sourced { given, origin }) = winner else {
                origins.insert(key.id.clone(), Origin::Default);
                continue;
            };
            origins.insert(key.id.clone(), origin);
            match given {
                Given::Switch(on) => argv.extend(on.then(|| OsString::from(&key.flag))),
                Given::Values(values) if key.kind == Kind::Positional => positional.extend(values),
                Given::Values(values) => argv.extend(values.iter().map(|v| with_flag(key, v))),
            }
        }
        if !positional.is_empty() {
            argv.push("--".into());
            argv.extend(positional);
        }
        // Every value was parsed once already, by clap or by `check`: a failure here
        // is a combination clap refuses, reported as clap words it.
        let matches = cmd
            .try_get_matches_from(argv)
            .map_err(|err| LoadError(first_line(&err)))?;
        let args =
            ServeArgs::from_arg_matches(&matches).map_err(|err| LoadError(first_line(&err)))?;
        Ok(Layered {
            args,
            file,
            warnings,
            check_config: cli_compat.check || args_compat.check,
            print_config: cli_compat.print || args_compat.print,
            keys,
            origins,
            matches,
        })
    }

    /// Where the setting behind `err` was set, put in front of its message: a bad value
    /// from the file names the file, line and key; from the environment, the variable.
    pub fn explain(&self, err: &ConfigError) -> String {
        let key = self.keys.iter().find(|k| k.flag == err.setting);
        match key.and_then(|key| Some((key, self.origins.get(&key.id)?))) {
            Some((key, origin @ (Origin::File { .. } | Origin::Env(_)))) => {
                format!("{}: {}", origin.blame(key), err.message)
            }
            _ => err.to_string(),
        }
    }
}

/// Whether the config file `path` is gunicorn's (Python: `.py`, `file:PATH` or
/// `python:MODULE`) rather than rwsgi's TOML.
pub fn is_gunicorn_file(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.starts_with("python:")
        || text.starts_with("file:")
        || path.extension().is_some_and(|ext| ext == "py")
}

/// `GUNICORN_CMD_ARGS`, parsed as the command line is, when it is set.
fn gunicorn_cmd_args(
    cmd: &Command,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<ArgMatches>, LoadError> {
    let Some(raw) = lookup(CMD_ARGS_VAR).filter(|raw| !raw.is_empty()) else {
        return Ok(None);
    };
    let text = raw
        .to_str()
        .ok_or_else(|| LoadError(format!("{CMD_ARGS_VAR}: not valid UTF-8")))?;
    let words = gunicorn::split_words(text)?;
    cmd.clone()
        .try_get_matches_from(words)
        .map(Some)
        .map_err(|err| LoadError(format!("{CMD_ARGS_VAR}: {}", first_line(&err))))
}

/// The settings `matches` (of `GUNICORN_CMD_ARGS`) gives, as a layer from `origin`.
/// The APP is left out, as gunicorn leaves it.
fn layer_of(matches: &ArgMatches, keys: &[Key], origin: Origin) -> Layer {
    keys.iter()
        .filter(|key| key.kind != Kind::Positional)
        .filter_map(|key| {
            let given = given_by(matches, key, ValueSource::CommandLine)?.given;
            let origin = origin.clone();
            Some((key.id.clone(), Sourced { given, origin }))
        })
        .collect()
}

/// The config file to read: `-c FILE` (or `RWSGI_CONFIG`, or `-c` in
/// `GUNICORN_CMD_ARGS`), which must exist, else `rwsgi.toml` in the working directory
/// when there is one, else `gunicorn.conf.py` there.
fn config_file(
    cli: &ArgMatches,
    cmd_args: Option<&ArgMatches>,
) -> Result<Option<(PathBuf, Origin)>, LoadError> {
    let named = |matches: &ArgMatches| {
        matches
            .try_get_one::<PathBuf>("config")
            .map(Option::<&PathBuf>::cloned)
            .map_err(|err| LoadError(format!("--config: {err}")))
    };
    let (path, origin) = match (named(cli)?, cmd_args.map(named).transpose()?.flatten()) {
        (Some(path), _) => match cli.value_source("config") {
            Some(ValueSource::EnvVariable) => (path, Origin::Env(format!("{ENV_PREFIX}CONFIG"))),
            _ => (path, Origin::CommandLine),
        },
        (None, Some(path)) => (path, Origin::Env(CMD_ARGS_VAR.into())),
        (None, None) => {
            let found = [DEFAULT_FILE, GUNICORN_DEFAULT_FILE]
                .map(Path::new)
                .into_iter()
                .find(|default| default.is_file());
            return Ok(found.map(|default| (default.to_path_buf(), Origin::Default)));
        }
    };
    let text = path.to_string_lossy();
    if text.starts_with("python:") {
        return Ok(Some((path, origin)));
    }
    let on_disk = Path::new(text.strip_prefix("file:").unwrap_or(&text));
    if !on_disk.is_file() {
        let by = match &origin {
            Origin::Env(var) => var.clone(),
            _ => "--config".to_string(),
        };
        return Err(LoadError(format!(
            "{by}: {}: no such config file",
            on_disk.display()
        )));
    }
    Ok(Some((path, origin)))
}

/// The value of `key` in `matches` when it was set by `source`.
fn given_by(matches: &ArgMatches, key: &Key, source: ValueSource) -> Option<Sourced> {
    if matches.value_source(&key.id)? != source {
        return None;
    }
    let origin = match source {
        ValueSource::EnvVariable => Origin::Env(key.clap_env.clone().unwrap_or_default()),
        _ => Origin::CommandLine,
    };
    Some(Sourced {
        given: given_in(matches, key)?,
        origin,
    })
}

/// The value of `key` in parsed `matches`, as a layer would give it.
pub(super) fn given_in(matches: &ArgMatches, key: &Key) -> Option<Given> {
    if key.kind == Kind::Switch {
        return Some(Given::Switch(matches.get_flag(&key.id)));
    }
    let values = matches.get_raw(&key.id)?;
    Some(Given::Values(values.map(OsStr::to_os_string).collect()))
}

/// `--flag=VALUE`: one word, so a value starting with `-` stays a value.
fn with_flag(key: &Key, value: &OsStr) -> OsString {
    let mut arg = OsString::from(format!("{}=", key.flag));
    arg.push(value);
    arg
}

/// Parses every value of `layer` with its flag's own clap parser, so that a bad value
/// is named with the file line or the variable it came from.
pub(super) fn check(cmd: &Command, keys: &[Key], layer: &Layer) -> Result<(), LoadError> {
    for key in keys {
        let Some(Sourced {
            given: Given::Values(values),
            origin,
        }) = layer.get(&key.id)
        else {
            continue;
        };
        for value in values {
            let argv = match key.kind {
                Kind::Positional => vec![OsString::from("--"), value.clone()],
                _ => vec![with_flag(key, value)],
            };
            if let Err(err) = cmd.clone().try_get_matches_from(argv) {
                return Err(LoadError(format!(
                    "{}: {}",
                    origin.blame(key),
                    invalid(&err, value)
                )));
            }
        }
    }
    Ok(())
}

/// Why clap refused `value`, without clap's naming of the flag (the caller names the
/// key or variable instead).
fn invalid(err: &clap::Error, value: &OsStr) -> String {
    use clap::error::{ContextKind, ContextValue};
    let shown = format!("{:?}", value.to_string_lossy());
    if let Some(source) = std::error::Error::source(err) {
        return format!("invalid value {shown}: {source}");
    }
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        return format!(
            "invalid value {shown}: expected one of {}",
            valid.join(", ")
        );
    }
    format!("invalid value {shown}: {}", first_line(err))
}

fn first_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_over_env_over_file() {
        use clap::CommandFactory;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"workers = 2\nmax_queue = 5\nbacklog = 7\n").unwrap();
        let config = file.path().to_str().unwrap();
        let argv = ["rwsgi", "config", "-c", config, "-w", "4", "app:app"];
        let matches = crate::cli::Cli::command()
            .try_get_matches_from(argv)
            .unwrap();
        let (_, given) = matches.subcommand().unwrap();
        let env = |name: &str| {
            let value = match name {
                "RWSGI_WORKERS" => "3",
                "RWSGI_MAX_QUEUE" => "9",
                _ => return None,
            };
            Some(OsString::from(value))
        };
        let layered = Layered::load(given, &env).unwrap();
        assert_eq!(layered.args.workers, Some(4));
        assert_eq!(layered.args.max_queue, 9);
        assert_eq!(layered.args.backlog, 7);
        assert_eq!(layered.args.max_connections, 10_000);
        let origin = |id: &str| layered.origins[id].to_string();
        assert_eq!(origin("workers"), "command line");
        assert_eq!(origin("max_queue"), "env RWSGI_MAX_QUEUE");
        assert_eq!(origin("backlog"), format!("file {config}:3"));
        assert_eq!(origin("max_connections"), "default");
    }
}
