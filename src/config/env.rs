//! Environment variables: `RWSGI_<KEY>` for every setting (`RWSGI_WORKERS=4`).
//!
//! Lists are comma-separated (`RWSGI_BIND=127.0.0.1:8000,unix:/run/x.sock`), switches
//! take `1`, `0`, `true` or `false`, and an empty variable counts as unset (as a shell's
//! `VAR= rwsgi …` is meant). Values are checked by the flags' own parsers in `sources`.

use std::ffi::OsString;

use super::keys::{Given, Key, Kind, Layer, LoadError, Origin, Sourced, suggest};

/// `RWSGI_*` variables that are not settings but are read all the same.
const OTHER_VARIABLES: &[&str] = &[
    "RWSGI_CONFIG",
    "RWSGI_LOG",
    // Between an old master and the new one during a binary upgrade (master::upgrade).
    "RWSGI_UPGRADE_FDS",
    "RWSGI_UPGRADE_FROM",
    // Read by the build and by the test suite, not by the binary; harmless here.
    "RWSGI_BUILD_PYTHON",
    "RWSGI_BINARY",
];

/// The settings given by the environment, read through `lookup`.
pub fn read(keys: &[Key], lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<Layer, LoadError> {
    let mut layer = Layer::new();
    for key in keys {
        let Some(raw) = lookup(&key.env).filter(|raw| !raw.is_empty()) else {
            continue;
        };
        let origin = Origin::Env(key.env.clone());
        let bad = |why: &str| LoadError(format!("{}: {raw:?} {why}", origin.blame(key)));
        let given = match key.kind {
            Kind::Switch => Given::Switch(
                switch(&raw).ok_or_else(|| bad("is not a boolean: use 1, 0, true or false"))?,
            ),
            Kind::Many => {
                let text = raw.to_str().ok_or_else(|| bad("is not valid UTF-8"))?;
                Given::Values(text.split(',').map(OsString::from).collect())
            }
            Kind::One | Kind::Positional => Given::Values(vec![raw.clone()]),
        };
        layer.insert(key.id.clone(), Sourced { given, origin });
    }
    Ok(layer)
}

/// One warning for each of `names` that starts with `RWSGI_` but is no setting's
/// variable: a typo would otherwise be ignored in silence.
pub fn unknown(keys: &[Key], names: impl Iterator<Item = OsString>) -> Vec<String> {
    let known = || {
        keys.iter()
            .map(|k| k.env.as_str())
            .chain(OTHER_VARIABLES.iter().copied())
    };
    let mut unknown: Vec<String> = names
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.starts_with("RWSGI_") && !known().any(|k| k == name))
        .collect();
    unknown.sort();
    // Compared without the prefix every candidate shares.
    let tail = |v: &str| v.strip_prefix("RWSGI_").unwrap_or(v).to_string();
    let tails: Vec<String> = known().map(tail).collect();
    unknown
        .into_iter()
        .map(
            |name| match suggest(&tail(&name), tails.iter().map(String::as_str)) {
                Some(close) => format!(
                    "{name} is not an rwsgi variable and is ignored: did you mean RWSGI_{close}?"
                ),
                None => format!(
                    "{name} is not an rwsgi variable and is ignored (`rwsgi config` lists the \
                 settings: RWSGI_ and the key in capitals)"
                ),
            },
        )
        .collect()
}

fn switch(raw: &OsString) -> Option<bool> {
    match raw.to_str()?.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::keys;
    use super::*;

    fn read_vars(vars: &[(&str, &str)]) -> Result<Layer, String> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| OsString::from(v))
        };
        read(&keys(), &lookup).map_err(|e| e.0)
    }

    #[test]
    fn values() {
        let layer = read_vars(&[
            ("RWSGI_WORKERS", "4"),
            ("RWSGI_BIND", "a:1,unix:/x"),
            ("RWSGI_PRELOAD", "0"),
            ("RWSGI_CHDIR", ""),
        ])
        .unwrap();
        assert_eq!(layer["workers"].given, Given::Values(vec!["4".into()]));
        assert_eq!(
            layer["bind"].given,
            Given::Values(vec!["a:1".into(), "unix:/x".into()])
        );
        assert_eq!(layer["preload"].given, Given::Switch(false));
        assert_eq!(layer["workers"].origin, Origin::Env("RWSGI_WORKERS".into()));
        assert!(!layer.contains_key("chdir"));
    }

    #[test]
    fn unknown_variables_are_named_with_a_suggestion() {
        let names = [
            "RWSGI_WROKERS",
            "RWSGI_WORKERS",
            "RWSGI_LOG",
            "PATH",
            "RWSGI_ZZZZZZZZZZZZ",
        ];
        let warnings = unknown(&keys(), names.into_iter().map(OsString::from));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "RWSGI_WROKERS is not an rwsgi variable and is ignored: did you mean RWSGI_WORKERS?"
        );
        assert!(warnings[1].starts_with("RWSGI_ZZZZZZZZZZZZ is not an rwsgi variable"));
    }

    #[test]
    fn a_bad_switch_names_the_variable() {
        let err = read_vars(&[("RWSGI_PRELOAD", "maybe")]).unwrap_err();
        assert!(
            err.starts_with("RWSGI_PRELOAD (--preload): \"maybe\""),
            "{err}"
        );
    }
}
