//! The config file: a TOML table whose keys are the settings' names (`sources::Key`).
//!
//! It is read into a layer of raw values, each with the line it was set on. Values are
//! not interpreted here: the flag's own parser checks them (in `sources`), so a value
//! means the same in the file as on the command line, relative paths included (they are
//! relative to the working directory, as gunicorn's config file and rwsgi's flags are).
//! Never guess: an unknown key, a key of the wrong shape or a field of a table that
//! does not exist is an error naming the file, the line and the key.

use std::ffi::OsString;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::keys::{Given, Key, Kind, Layer, LoadError, Origin, Sourced, suggest};

/// A setting whose values are pairs may be written as a table (or an array of tables,
/// `[[static]]`) of these fields, joined into the flag's `A=B` or `A:B` form. This is
/// the only knowledge of particular flags in the file's reader: a new flag needs an
/// entry here only if its value is such a pair.
struct TableForm {
    key: &'static str,
    fields: &'static [&'static str],
    /// How many of `fields`, from the first, must be given.
    required: usize,
    separator: &'static str,
}

const TABLE_FORMS: &[TableForm] = &[
    TableForm {
        key: "static",
        fields: &["prefix", "dir"],
        required: 2,
        separator: "=",
    },
    TableForm {
        key: "internal",
        fields: &["prefix", "dir"],
        required: 2,
        separator: "=",
    },
    TableForm {
        key: "tls",
        fields: &["cert", "key"],
        required: 1,
        separator: ":",
    },
];

/// A mistake at a byte offset of the file.
type Mistake = (usize, String);

/// Reads the file at `path` into a layer.
pub fn read(path: &Path, keys: &[Key]) -> Result<Layer, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| LoadError(format!("{}: {err}", path.display())))?;
    parse(path, &text, keys)
}

/// Parses `text`, the contents of the file at `path`.
pub fn parse(path: &Path, text: &str, keys: &[Key]) -> Result<Layer, LoadError> {
    let fail = |(offset, message): Mistake| {
        LoadError(format!(
            "{}:{}: {message}",
            path.display(),
            line_of(text, offset)
        ))
    };
    let table = DeTable::parse(text).map_err(|err| {
        let offset = err.span().map_or(0, |span| span.start);
        fail((offset, err.message().trim_end().to_string()))
    })?;
    let mut layer = Layer::new();
    for (name, value) in table.get_ref() {
        let start = name.span().start;
        let Some(key) = keys.iter().find(|k| k.name == name.get_ref().as_ref()) else {
            return Err(fail((start, unknown_key(name.get_ref(), keys))));
        };
        let given = convert(key, value)
            .map_err(|(offset, why)| fail((offset, format!("{}: {why}", key.name))))?;
        let origin = Origin::File {
            path: path.to_path_buf(),
            line: line_of(text, start),
        };
        layer.insert(key.id.clone(), Sourced { given, origin });
    }
    Ok(layer)
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

fn unknown_key(name: &str, keys: &[Key]) -> String {
    // A quoted key may hold any character: escaped, a message stays one line.
    let shown = name.escape_debug();
    let by_alias = keys
        .iter()
        .find(|k| k.aliases.iter().any(|a| a == name))
        .map(|k| k.name.as_str());
    let close = by_alias.or_else(|| suggest(name, keys.iter().map(|k| k.name.as_str())));
    match close {
        Some(close) => format!("unknown key `{shown}`, did you mean `{close}`?"),
        None => format!("unknown key `{shown}` (`rwsgi config` lists every key)"),
    }
}

fn convert(key: &Key, value: &Spanned<DeValue<'_>>) -> Result<Given, Mistake> {
    let at = value.span().start;
    match (key.kind, value.get_ref()) {
        (Kind::Switch, DeValue::Boolean(on)) => Ok(Given::Switch(*on)),
        (Kind::Switch, other) => Err((
            at,
            format!("expected true or false, found {}", kind_of(other)),
        )),
        (Kind::Many, DeValue::Array(items)) => items
            .iter()
            .map(|item| element(key, item))
            .collect::<Result<_, _>>()
            .map(Given::Values),
        (Kind::Many, _) => Ok(Given::Values(vec![element(key, value)?])),
        (_, DeValue::Array(_)) => Err((at, "expected one value, found an array".to_string())),
        (_, _) => Ok(Given::Values(vec![scalar(value)?])),
    }
}

/// One element of a list: a scalar, or a table where the flag has a table form.
fn element(key: &Key, value: &Spanned<DeValue<'_>>) -> Result<OsString, Mistake> {
    match value.get_ref() {
        DeValue::Table(table) => match TABLE_FORMS.iter().find(|f| f.key == key.name) {
            Some(form) => joined(form, table, value.span().start),
            None => Err((
                value.span().start,
                "expected a string, found a table".to_string(),
            )),
        },
        _ => scalar(value),
    }
}

/// A table of `form`'s fields, as the flag's one-word value.
fn joined(form: &TableForm, table: &DeTable<'_>, at: usize) -> Result<OsString, Mistake> {
    for (field, _) in table {
        if !form.fields.contains(&field.get_ref().as_ref()) {
            let hint = suggest(field.get_ref(), form.fields.iter().copied())
                .map(|close| format!(", did you mean `{close}`?"))
                .unwrap_or_else(|| format!(" (fields: {})", form.fields.join(", ")));
            return Err((
                field.span().start,
                format!(
                    "unknown field `{field}`{hint}",
                    field = field.get_ref().escape_debug()
                ),
            ));
        }
    }
    let mut parts = Vec::new();
    for (i, field) in form.fields.iter().enumerate() {
        match table.get(*field) {
            Some(value) => parts.push(scalar(value)?.to_string_lossy().into_owned()),
            None if i < form.required => return Err((at, format!("missing field `{field}`"))),
            None => {}
        }
    }
    Ok(parts.join(form.separator).into())
}

/// A string or a number, as the text a flag would be given.
fn scalar(value: &Spanned<DeValue<'_>>) -> Result<OsString, Mistake> {
    let at = value.span().start;
    match value.get_ref() {
        DeValue::String(text) => Ok(text.as_ref().into()),
        // Octal stays octal as `--umask 0o027` takes it; other radixes become decimal.
        DeValue::Integer(int) if int.radix() == 8 => Ok(format!("0o{}", int.as_str()).into()),
        DeValue::Integer(int) => i128::from_str_radix(int.as_str(), int.radix())
            .map(|n| n.to_string().into())
            .map_err(|err| (at, format!("invalid integer: {err}"))),
        DeValue::Float(float) => Ok(float.as_str().into()),
        other => Err((
            at,
            format!("expected a string or a number, found {}", kind_of(other)),
        )),
    }
}

fn kind_of(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::{given_texts as values, keys};
    use super::*;

    fn parse_text(text: &str) -> Result<Layer, String> {
        parse(Path::new("rwsgi.toml"), text, &keys()).map_err(|e| e.0)
    }

    #[test]
    fn shapes() {
        let layer = parse_text(
            "app = \"hello:app\"\nworkers = 3\npreload = true\nbind = [\"a:1\", \"unix:/x\"]\n\
             umask = 0o027\nkeep_alive = 2.5\n\
             [[static]]\nprefix = \"/s\"\ndir = \"d\"\n[[tls]]\ncert = \"c.pem\"\n",
        )
        .unwrap();
        assert_eq!(values(&layer, "workers"), ["3"]);
        assert_eq!(values(&layer, "preload"), ["true"]);
        assert_eq!(values(&layer, "bind"), ["a:1", "unix:/x"]);
        assert_eq!(values(&layer, "umask"), ["0o027"]);
        assert_eq!(values(&layer, "keep_alive"), ["2.5"]);
        assert_eq!(values(&layer, "static_mounts"), ["/s=d"]);
        assert_eq!(values(&layer, "tls"), ["c.pem"]);
        assert_eq!(values(&layer, "app"), ["hello:app"]);
        assert_eq!(
            layer["workers"].origin,
            Origin::File {
                path: "rwsgi.toml".into(),
                line: 2
            }
        );
    }

    #[test]
    fn mistakes_name_the_line_and_key() {
        let err = parse_text("workers = 2\nwokers = 3\n").unwrap_err();
        assert_eq!(
            err,
            "rwsgi.toml:2: unknown key `wokers`, did you mean `workers`?"
        );
        let err = parse_text("\npreload = \"yes\"\n").unwrap_err();
        assert_eq!(
            err,
            "rwsgi.toml:2: preload: expected true or false, found a string"
        );
        let err = parse_text("workers = [1, 2]\n").unwrap_err();
        assert!(
            err.starts_with("rwsgi.toml:1: workers: expected one value"),
            "{err}"
        );
        let err = parse_text("[[static]]\nprefix = \"/s\"\ndri = \"d\"\n").unwrap_err();
        assert!(
            err.starts_with("rwsgi.toml:3: static: unknown field `dri`, did you mean `dir`?"),
            "{err}"
        );
        let err = parse_text("[[static]]\nprefix = \"/s\"\n").unwrap_err();
        assert!(err.contains("static: missing field `dir`"), "{err}");
        let err = parse_text("certfile = \"x\"\n").unwrap_err();
        assert!(err.ends_with("did you mean `tls`?"), "{err}");
        let err = parse_text("workers = \n").unwrap_err();
        assert!(err.starts_with("rwsgi.toml:1: "), "{err}");
    }

    #[test]
    fn a_mistake_is_one_line_whatever_the_key_holds() {
        // Found by the config fuzz target: a quoted key's newline went into the message,
        // which then began a second log line of the key's choosing.
        let err = parse_text("\"a\\nrwsgi: b\" = 1\n").unwrap_err();
        assert_eq!(
            err,
            "rwsgi.toml:1: unknown key `a\\nrwsgi: b` (`rwsgi config` lists every key)"
        );
        let err = parse_text("[[static]]\nprefix = \"/s\"\n\"d\\tr\" = \"d\"\n").unwrap_err();
        assert!(err.contains("unknown field `d\\tr`"), "{err}");
    }
}
