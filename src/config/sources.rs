//! Where each setting comes from: the command line over the environment over the config
//! file over the defaults, with the place each value was set.
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
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};

use super::{ConfigError, env, file};
use crate::cli::ServeArgs;

/// The config file looked for in the working directory when no `-c` is given.
pub const DEFAULT_FILE: &str = "rwsgi.toml";

/// The prefix of every setting's environment variable.
const ENV_PREFIX: &str = "RWSGI_";

/// Options that are not settings: the one naming the config file itself.
const NOT_SETTINGS: &[&str] = &["config"];

/// How a setting takes its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A flag without a value (`--preload`): a boolean.
    Switch,
    /// An option with one value.
    One,
    /// A repeatable option: a list.
    Many,
    /// The APP argument.
    Positional,
}

/// One setting, with the names the config file and the environment know it by.
#[derive(Debug, Clone)]
pub struct Key {
    /// clap's id (the field of `ServeArgs`).
    pub id: String,
    /// The TOML key: the long flag name in snake_case.
    pub name: String,
    /// The environment variable: `RWSGI_` and the key in capitals.
    pub env: String,
    /// The variable clap itself reads for this flag, when it has one (`FORWARDED_ALLOW_IPS`).
    pub clap_env: Option<String>,
    /// The flag as errors name it: `--long`, or `APP`.
    pub flag: String,
    /// The flag's other long names in snake_case, so a key written with one is pointed
    /// to the right one.
    pub aliases: Vec<String>,
    /// How it takes values.
    pub kind: Kind,
}

/// The clap command of the settings, parsing values without a program name.
fn command() -> Command {
    ServeArgs::augment_args(Command::new("rwsgi")).no_binary_name(true)
}

/// The settings in the order of `--help`, derived from the clap definitions.
pub fn keys() -> Vec<Key> {
    keys_of(&command())
}

fn keys_of(cmd: &Command) -> Vec<Key> {
    cmd.get_arguments()
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            if NOT_SETTINGS.contains(&id) {
                return None;
            }
            let kind = if arg.is_positional() {
                Kind::Positional
            } else {
                match arg.get_action() {
                    ArgAction::SetTrue => Kind::Switch,
                    ArgAction::Set => Kind::One,
                    ArgAction::Append => Kind::Many,
                    // Help, version, counters: nothing a file could set.
                    _ => return None,
                }
            };
            let name = arg.get_long().unwrap_or(id).replace('-', "_");
            let flag = match arg.get_long() {
                Some(long) => format!("--{long}"),
                None => arg
                    .get_value_names()
                    .and_then(|names| names.first())
                    .map_or_else(|| id.to_uppercase(), |n| n.to_string()),
            };
            Some(Key {
                id: id.to_string(),
                env: format!("{ENV_PREFIX}{}", name.to_uppercase()),
                name,
                clap_env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                flag,
                aliases: arg
                    .get_all_aliases()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| a.replace('-', "_"))
                    .collect(),
                kind,
            })
        })
        .collect()
}

/// The closest of `candidates` to a mistyped `name`, if one is close enough to suggest:
/// a typo or two (edit distance, which catches short swaps like `dri`), or a similar
/// spelling (Jaro-Winkler, as clap uses for flags).
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typos = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::osa_distance(name, c),
                strsim::jaro_winkler(name, c),
                c,
            )
        })
        .filter(|(edits, similar, _)| *edits <= typos || *similar > 0.8)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

/// Where a value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// On the command line.
    CommandLine,
    /// In this environment variable.
    Env(String),
    /// In the config file, at this line.
    File { path: PathBuf, line: usize },
    /// Nowhere: clap's default, or unset.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("command line"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File { path, line } => write!(f, "file {}:{line}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

impl Origin {
    /// How a message about `key` names the place: `rwsgi.toml:3: workers`,
    /// `RWSGI_WORKERS (--workers)` or `--workers`.
    pub fn blame(&self, key: &Key) -> String {
        match self {
            Origin::File { path, line } => format!("{}:{line}: {}", path.display(), key.name),
            // The flag too: the variable's name may not say which it is (FORWARDED_ALLOW_IPS).
            Origin::Env(var) => format!("{var} ({})", key.flag),
            Origin::CommandLine | Origin::Default => key.flag.clone(),
        }
    }
}

/// A setting's value as one layer gives it, before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given {
    /// A flag without a value: on or off.
    Switch(bool),
    /// The values of an option (one, or a list) or of the APP.
    Values(Vec<OsString>),
}

/// A value and where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced {
    /// The value.
    pub given: Given,
    /// Where it was set.
    pub origin: Origin,
}

/// What one layer (the file, the environment) sets, by clap id.
pub type Layer = BTreeMap<String, Sourced>;

/// A mistake in the config file or the environment, one line naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// The effective `ServeArgs` of a command, and where each of its values came from.
#[derive(Debug)]
pub struct Layered {
    /// The arguments every layer agreed on, ready for `Settings::from_args`.
    pub args: ServeArgs,
    /// The config file read, if any, and where it was named.
    pub file: Option<(PathBuf, Origin)>,
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
        let file = config_file(cli)?;
        let file_layer = match &file {
            Some((path, _)) => file::read(path, &keys)?,
            None => Layer::new(),
        };
        let env_layer = env::read(&keys, lookup)?;
        for layer in [&file_layer, &env_layer] {
            check(&cmd, &keys, layer)?;
        }
        let mut origins = BTreeMap::new();
        let mut argv: Vec<OsString> = Vec::new();
        let mut positional: Vec<OsString> = Vec::new();
        for key in &keys {
            let winner = given_by(cli, key, ValueSource::CommandLine)
                .or_else(|| env_layer.get(&key.id).cloned())
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

/// The config file to read: `-c FILE` (or `RWSGI_CONFIG`), which must exist, else
/// `rwsgi.toml` in the working directory when there is one.
fn config_file(cli: &ArgMatches) -> Result<Option<(PathBuf, Origin)>, LoadError> {
    let named = cli
        .try_get_one::<PathBuf>("config")
        .map_err(|err| LoadError(format!("--config: {err}")))?;
    let Some(path) = named else {
        let default = Path::new(DEFAULT_FILE);
        return Ok(default
            .is_file()
            .then(|| (default.to_path_buf(), Origin::Default)));
    };
    let origin = match cli.value_source("config") {
        Some(ValueSource::EnvVariable) => Origin::Env(format!("{ENV_PREFIX}CONFIG")),
        _ => Origin::CommandLine,
    };
    if !path.is_file() {
        let by = match &origin {
            Origin::Env(var) => var.clone(),
            _ => "--config".to_string(),
        };
        return Err(LoadError(format!(
            "{by}: {}: no such config file",
            path.display()
        )));
    }
    Ok(Some((path.clone(), origin)))
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
fn check(cmd: &Command, keys: &[Key], layer: &Layer) -> Result<(), LoadError> {
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
    fn keys_follow_the_flags() {
        let keys = keys();
        let named = |name: &str| keys.iter().find(|k| k.name == name).cloned();
        let workers = named("workers").unwrap();
        assert_eq!(
            (workers.env.as_str(), workers.kind),
            ("RWSGI_WORKERS", Kind::One)
        );
        assert_eq!(named("bind").unwrap().kind, Kind::Many);
        assert_eq!(named("preload").unwrap().kind, Kind::Switch);
        assert_eq!(named("app").unwrap().kind, Kind::Positional);
        assert_eq!(named("keep_alive").unwrap().flag, "--keep-alive");
        assert_eq!(named("static").unwrap().id, "static_mounts");
        assert_eq!(named("pid").unwrap().id, "pidfile");
        assert!(named("config").is_none() && named("help").is_none());
        assert_eq!(
            named("forwarded_allow_ips").unwrap().clap_env.as_deref(),
            Some("FORWARDED_ALLOW_IPS")
        );
    }

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

    #[test]
    fn suggestions() {
        let keys = keys();
        let names = || keys.iter().map(|k| k.name.as_str());
        assert_eq!(suggest("wokers", names()), Some("workers"));
        assert_eq!(suggest("max_request", names()), Some("max_requests"));
        assert_eq!(suggest("zzzz", names()), None);
    }
}
