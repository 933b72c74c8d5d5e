//! The config readers' fuzz entry point. Any text given as `rwsgi.toml` is a layer or
//! one line naming the file and a line of it, never a panic; the values of a layer pass
//! or fail their flags' own parsers, and written back as a file they read the same. The
//! same text as the gunicorn config reader's output, and as `GUNICORN_CMD_ARGS`, ends
//! in a value or an error too; words split from the latter split the same once quoted.
//!
//! Built for the fuzz target (`fuzz/fuzz_targets/config.rs`) and for the unit test
//! below, which runs it over seeded inputs so that every test run exercises it.

use std::path::Path;
use std::sync::OnceLock;

use clap::Command;

use super::keys::{self, Given, Key, Layer, Origin};
use super::sources;
use super::{file, gunicorn};

/// The settings and the command they come from, made once: clap's definitions are the
/// same for every input.
fn settings() -> &'static (Vec<Key>, Command) {
    static SETTINGS: OnceLock<(Vec<Key>, Command)> = OnceLock::new();
    SETTINGS.get_or_init(|| (keys::keys(), sources::command()))
}

/// The fuzz target's body: `data`, as text, through every reader of settings text.
pub fn config_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (keys, cmd) = settings();
    let path = Path::new("rwsgi.toml");
    // A mistake may name the line after the last, where the text ended too soon.
    let lines = 1 + text.matches('\n').count();
    match file::parse(path, &text, keys) {
        Ok(layer) => {
            check_layer(&layer, keys, lines);
            // The flags' own parsers take or refuse each value; neither may panic.
            let _ = sources::check(cmd, keys, &layer);
            let again = file::parse(path, &written_back(&layer, keys), keys);
            let given = |layer: &Layer| -> Vec<(String, Given)> {
                let pairs = layer.iter().map(|(id, s)| (id.clone(), s.given.clone()));
                pairs.collect()
            };
            match again {
                Ok(again) => assert_eq!(given(&again), given(&layer), "written back: {text:?}"),
                Err(err) => panic!("written back, {text:?} fails: {}", err.0),
            }
        }
        Err(err) => {
            let message = err.0;
            let line = message
                .strip_prefix("rwsgi.toml:")
                .and_then(|rest| rest.split_once(": "))
                .and_then(|(line, _)| line.parse::<usize>().ok());
            assert!(
                line.is_some_and(|line| (1..=lines).contains(&line)),
                "{message:?} names no line of {text:?}"
            );
            assert!(!message.contains('\n'), "{message:?} is more than a line");
        }
    }
    if let Ok(read) = gunicorn::file::parse("gunicorn.conf.py", &text, keys) {
        check_layer(&read.layer, keys, usize::MAX);
    }
    if let Ok(words) = gunicorn::split_words(&text) {
        let quoted: Vec<String> = words
            .iter()
            .map(|word| format!("'{}'", word.to_string_lossy().replace('\'', r#"'"'"'"#)))
            .collect();
        let again = gunicorn::split_words(&quoted.join(" ")).map_err(|err| err.0);
        assert_eq!(again, Ok(words), "quoted again: {quoted:?}");
    }
}

/// Every setting of `layer` is one of `keys`, set on a line of the file.
fn check_layer(layer: &Layer, keys: &[Key], lines: usize) {
    for (id, sourced) in layer {
        assert!(keys.iter().any(|key| key.id == *id), "{id} is no setting");
        match &sourced.origin {
            Origin::File { line, .. } => assert!(*line <= lines, "line {line} of {lines}"),
            other => panic!("{id} comes from {other:?}, not the file"),
        }
    }
}

/// A config file setting what `layer` sets, every value as a string.
fn written_back(layer: &Layer, keys: &[Key]) -> String {
    let mut table = toml::Table::new();
    for (id, sourced) in layer {
        let Some(key) = keys.iter().find(|key| key.id == *id) else {
            continue;
        };
        let text = |value: &std::ffi::OsString| toml::Value::String(value.to_string_lossy().into());
        let value = match &sourced.given {
            Given::Switch(on) => toml::Value::Boolean(*on),
            Given::Values(values) if key.kind == keys::Kind::Many => {
                toml::Value::Array(values.iter().map(text).collect())
            }
            Given::Values(values) => match values.as_slice() {
                [one] => text(one),
                _ => panic!("{id}: {values:?} for a setting of one value"),
            },
        };
        table.insert(key.name.clone(), value);
    }
    toml::to_string(&table).unwrap_or_else(|err| panic!("{table:?} as TOML: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded::Rng;

    /// Keys, values and other pieces of config files: lines of a key and a value, now
    /// and then with other pieces among them, make files that read and files with every
    /// kind of mistake.
    const KEYS: &[&str] = &[
        "workers",
        "bind",
        "preload",
        "static",
        "tls",
        "app",
        "umask",
        "keep_alive",
        "access_log_format",
        "forwarded_allow_ips",
        "wokers",
        "\"workers\"",
        "\"a\\nb\"",
    ];
    const VALUES: &[&str] = &[
        "3",
        "-1",
        "0x1f",
        "0o27",
        "2.5",
        "1e3",
        "true",
        "\"yes\"",
        "\"a:1\"",
        "'unix:/x'",
        "[\"a:1\", \"b:2\"]",
        "[1, true]",
        "[]",
        "{prefix = \"/s\", dir = \"d\"}",
        "{cert = \"c.pem\"}",
        "{dri = \"d\"}",
        "1979-05-27",
        "\"\"\"a\nb\"\"\"",
        "\"%(h)s\"",
        "\"\\u00e9\"",
        "[{prefix = \"/s\", dir = \"d\"}]",
    ];
    const PIECES: &[&str] = &[
        "\n",
        "[[static]]\n",
        "[[tls]]\n",
        "[tls]\n",
        "prefix = \"/p\"\n",
        "dir = \"d\"\n",
        "# a comment\n",
        "\"",
        "'",
        "\\",
        "é",
        ",",
        "[",
        "]",
        "{",
        "}",
        " ",
        "=",
        "[[setting]]\n",
        "name = \"workers\"\n",
        "name = \"on_starting\"\n",
        "callable = true\n",
        "line = 7\n",
        "value = 4\n",
        "repr = \"<object>\"\n",
        "file = \"g.py\"\n",
    ];

    #[test]
    fn config_texts_read_or_name_their_mistake() {
        let mut rng = Rng(0xd1b5_4a32_d192_ed03);
        let mut read = 0;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..rng.next() % 8 {
                match rng.next() % 4 {
                    0 => text.push_str(rng.pick(PIECES)),
                    _ => {
                        text.push_str(rng.pick(KEYS));
                        text.push_str(" = ");
                        text.push_str(rng.pick(VALUES));
                        text.push('\n');
                    }
                }
            }
            let (keys, _) = settings();
            read +=
                usize::from(file::parse(Path::new("x"), &text, keys).is_ok_and(|l| !l.is_empty()));
            config_text(text.as_bytes());
        }
        assert!(read > 100, "only {read} texts set something");
    }

    #[test]
    fn a_file_of_every_shape_reads_back() {
        config_text(
            b"app = \"hello:app\"\nworkers = 3\npreload = true\nbind = [\"a:1\", \"unix:/x\"]\n\
              umask = 0o027\nkeep_alive = 2.5\n[[static]]\nprefix = \"/s\"\ndir = \"d\"\n",
        );
    }
}
