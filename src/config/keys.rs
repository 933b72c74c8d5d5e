//! The vocabulary of the settings' sources: each setting's [`Key`] (its name in the
//! config file, its variable in the environment, its flag), derived from the clap
//! definitions of `cli::ServeArgs`; where a value was set ([`Origin`]); and what one
//! layer gives ([`Layer`]). The readers of the file and of the environment and
//! `sources`, which layers them, all speak it; it reads nothing itself.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::{ArgAction, Command};

/// The prefix of every setting's environment variable.
pub(super) const ENV_PREFIX: &str = "RWSGI_";

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
    /// What its absence means, from the `[default: …]` of its help (`the APP`).
    pub absent: Option<String>,
}

/// The settings in the order of `--help`, derived from the clap definitions (gunicorn's
/// spellings, which `sources` adds hidden, are not settings), for the readers' tests
/// and the config fuzz target.
#[cfg(any(test, fuzzing))]
pub fn keys() -> Vec<Key> {
    use crate::cli::ServeArgs;
    use clap::Args;
    keys_of(&ServeArgs::augment_args(Command::new("rwsgi")))
}

/// The settings of `cmd`: its arguments less the hidden ones and those no file could set.
pub(super) fn keys_of(cmd: &Command) -> Vec<Key> {
    cmd.get_arguments()
        .filter_map(|arg| {
            let id = arg.get_id().as_str();
            // Hidden: gunicorn's spellings of what rwsgi has no setting for.
            if NOT_SETTINGS.contains(&id) || arg.is_hide_set() {
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
                absent: arg
                    .get_help()
                    .map(ToString::to_string)
                    .and_then(|help| default_in_help(&help)),
            })
        })
        .collect()
}

/// The `[default: …]` at the end of a flag's help text.
fn default_in_help(help: &str) -> Option<String> {
    let start = help.rfind("[default: ")? + "[default: ".len();
    let text = help[start..].trim_end().strip_suffix(']')?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
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

/// The values setting `id` was given in `layer`, as text (for the parsers' tests).
#[cfg(test)]
pub fn given_texts(layer: &Layer, id: &str) -> Vec<String> {
    match &layer[id].given {
        Given::Values(v) => v.iter().map(|s| s.to_string_lossy().into_owned()).collect(),
        Given::Switch(on) => vec![on.to_string()],
    }
}

/// A mistake in the config file or the environment, one line naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

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
    fn suggestions() {
        let keys = keys();
        let names = || keys.iter().map(|k| k.name.as_str());
        assert_eq!(suggest("wokers", names()), Some("workers"));
        assert_eq!(suggest("max_request", names()), Some("max_requests"));
        assert_eq!(suggest("zzzz", names()), None);
    }
}
