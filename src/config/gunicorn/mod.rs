//! gunicorn's configuration, taken as gunicorn takes it: its flag spellings on the
//! command line and in `GUNICORN_CMD_ARGS`, and its config file (Python).
//!
//! [`table`] lists all of gunicorn's settings and what rwsgi does with each. A flag
//! rwsgi has no setting for is still parsed (hidden from `--help`), then either refused
//! with the table's sentence or accepted with one warning saying why it changes nothing.
//!
//! Why a child process reads the config file: a gunicorn config file is a Python
//! program (it may import the app's settings, count CPUs, read the environment), so it
//! must run in the interpreter the application will use. The master may not start
//! that interpreter itself: it would then fork with an interpreter it did not mean to
//! preload (and threads the file may start), and a SIGHUP reread would run the file
//! again in a process that lives for days. rwsgi therefore runs itself (`rwsgi
//! read-gunicorn-config SOURCE`, in `python::gunicorn_config`) as a short-lived child
//! that executes the file in the embedded interpreter and prints the settings it
//! holds; the master reads that output (TOML) here. It costs one interpreter start
//! (tens of milliseconds) at start-up and on SIGHUP.

pub(super) mod file;
pub mod table;

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory};

pub use file::read as read_file;
pub use table::{Flag, SETTINGS, Setting, Status};

use crate::cli::Cli;
use crate::config::keys::LoadError;

/// The variable gunicorn reads extra command-line arguments from.
pub const CMD_ARGS_VAR: &str = "GUNICORN_CMD_ARGS";

/// Adds, hidden from `--help`, every gunicorn flag spelling `cmd` does not define, and
/// makes repeated single-value flags take the last value (as gunicorn's argparse).
pub fn augment(cmd: Command) -> Command {
    let mut cmd = cmd.args_override_self(true);
    let defined = |cmd: &Command, spelling: &str| {
        cmd.get_arguments()
            .any(|arg| match spelling.strip_prefix("--") {
                Some(long) => {
                    arg.get_long() == Some(long)
                        || arg.get_all_aliases().is_some_and(|a| a.contains(&long))
                }
                None => spelling
                    .strip_prefix('-')
                    .and_then(|s| s.chars().next())
                    .is_some_and(|short| arg.get_short() == Some(short)),
            })
    };
    for setting in SETTINGS {
        let (spellings, switch) = match setting.flag {
            Flag::None => continue,
            Flag::Switch(spellings) => (spellings, true),
            Flag::Value(spellings) => (spellings, false),
        };
        let missing: Vec<&str> = spellings
            .iter()
            .copied()
            .filter(|s| !defined(&cmd, s))
            .collect();
        if missing.is_empty() {
            continue;
        }
        // Its id is gunicorn's name: no rwsgi setting is named as one it lacks.
        let mut arg = Arg::new(setting.name).hide(true);
        for spelling in missing {
            arg = match spelling.strip_prefix("--") {
                Some(long) if arg.get_long().is_none() => arg.long(long),
                Some(long) => arg.alias(long),
                None => match spelling.chars().nth(1) {
                    Some(short) => arg.short(short),
                    None => arg,
                },
            };
        }
        arg = if switch {
            arg.action(ArgAction::SetTrue)
        } else {
            // A refused flag is refused whatever its value, even with none
            // (`--proxy-protocol` alone means `auto` in gunicorn).
            let refused = matches!(setting.status, Status::Refused(_));
            arg.action(ArgAction::Append)
                .num_args(if refused { 0..=1 } else { 1..=1 })
                .allow_hyphen_values(true)
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// The full command line: the derived one, with gunicorn's spellings of the settings
/// rwsgi has no flag of its own for (hidden from `--help`), and repeated single-value
/// flags taking the last value, as gunicorn's argparse does.
pub fn command() -> Command {
    let mut cmd = Cli::command();
    for name in ["serve", "config", "check"] {
        cmd = cmd.mut_subcommand(name, augment);
    }
    cmd
}

/// What gunicorn's flags without an rwsgi setting asked for.
#[derive(Debug, Default)]
pub struct Compat {
    /// One line for each flag accepted but ignored.
    pub warnings: Vec<String>,
    /// `--check-config`: do `rwsgi check` instead.
    pub check: bool,
    /// `--print-config`: do `rwsgi config` instead.
    pub print: bool,
}

/// Looks at the hidden gunicorn flags in `matches` (given by `place`: `None` for the
/// command line, else the variable's name): a refused one is an error, an ignored one
/// a warning.
pub fn compat(matches: &ArgMatches, place: Option<&str>) -> Result<Compat, LoadError> {
    let mut compat = Compat::default();
    for setting in SETTINGS {
        let id = setting.name;
        let given = matches!(
            matches.try_get_raw(id),
            Ok(Some(_)) if matches.value_source(id) == Some(ValueSource::CommandLine)
        );
        if !given {
            continue;
        }
        let spelling = match setting.flag {
            Flag::Switch(s) | Flag::Value(s) => s.iter().find(|s| s.starts_with("--")),
            Flag::None => None,
        };
        let spelling = spelling.copied().unwrap_or(setting.name);
        let at = match place {
            Some(var) => format!("{var}: {spelling}"),
            None => spelling.to_string(),
        };
        match setting.status {
            Status::Refused(why) => return Err(LoadError(format!("{at}: {why}"))),
            Status::Ignored(why) => compat.warnings.push(format!("{at} is ignored: {why}")),
            Status::Mapped("rwsgi check", _) => compat.check = true,
            Status::Mapped("rwsgi config", _) => compat.print = true,
            _ => {}
        }
    }
    Ok(compat)
}

/// Splits `GUNICORN_CMD_ARGS` into words as Python's `shlex.split` does (the way
/// gunicorn splits it): whitespace between words, '…' and "…" quoting, backslash
/// escapes outside single quotes.
pub fn split_words(text: &str) -> Result<Vec<OsString>, LoadError> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    let unclosed = || LoadError(format!("{CMD_ARGS_VAR}: a quote is not closed"));
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take().map(OsString::from)),
            '\'' => {
                let word = word.get_or_insert_default();
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(unclosed()),
                    }
                }
            }
            '"' => {
                let word = word.get_or_insert_default();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(unclosed()),
                        },
                        Some(c) => word.push(c),
                        None => return Err(unclosed()),
                    }
                }
            }
            '\\' => {
                if let Some(c) = chars.next() {
                    word.get_or_insert_default().push(c);
                }
            }
            c => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word.map(OsString::from));
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::keys;

    #[test]
    fn words_split_as_shlex() {
        let split = |t: &str| -> Vec<String> {
            split_words(t)
                .unwrap()
                .into_iter()
                .map(|w| w.into_string().unwrap())
                .collect()
        };
        assert_eq!(split("-w 3  --bind=:8000"), ["-w", "3", "--bind=:8000"]);
        assert_eq!(
            split(r#"--access-logformat '%(h)s "%(r)s"' -e A="b c""#),
            ["--access-logformat", r#"%(h)s "%(r)s""#, "-e", "A=b c"]
        );
        assert_eq!(split(r"a\ b ''"), ["a b", ""]);
        assert!(split_words("'open").is_err());
    }

    #[test]
    fn every_supported_or_mapped_setting_names_an_rwsgi_setting() {
        let keys = keys();
        for setting in SETTINGS {
            let key = match setting.status {
                Status::Supported(key) | Status::Mapped(key, _) => key,
                _ => continue,
            };
            let known =
                key == "config" || key.starts_with("rwsgi ") || keys.iter().any(|k| k.name == key);
            assert!(known, "{} maps to unknown {key}", setting.name);
        }
    }

    #[test]
    fn every_flag_spelling_parses() {
        let cmd = command();
        let serve = cmd.find_subcommand("serve").unwrap().clone();
        let value = |name: &str| match name {
            "worker_class" => "sync",
            "loglevel" => "info",
            "asgi_loop" | "asgi_lifespan" => "auto",
            _ => "1",
        };
        for setting in SETTINGS {
            let (spellings, switch) = match setting.flag {
                Flag::None => continue,
                Flag::Switch(s) => (s, true),
                Flag::Value(s) => (s, false),
            };
            for spelling in spellings {
                let mut argv = vec!["serve".to_string(), spelling.to_string()];
                if !switch {
                    argv.push(value(setting.name).into());
                }
                argv.push("app:app".into());
                let result = serve
                    .clone()
                    .no_binary_name(true)
                    .try_get_matches_from(&argv[1..]);
                assert!(result.is_ok(), "{spelling}: {:?}", result.err());
            }
        }
    }
}
