//! A gunicorn config file as a layer of settings: the child `rwsgi read-gunicorn-config`
//! executes it and prints what it holds (see the module above for why a child); this
//! side maps each of gunicorn's settings to rwsgi's (with the file line it was set on),
//! or to one warning saying why rwsgi ignores it.
//!
//! The child prints TOML: `file` (the file executed), then one `[[setting]]` table per
//! gunicorn setting the file holds, with `name`, `line` (of its last top-level binding,
//! 0 if none was found) and one of `value` (a string, number, boolean or a list of
//! them), `callable = true` (a function: a hook) or `repr` (anything else, as Python
//! shows it). Settings bound to None are left out: gunicorn takes None as unset.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::table::{self, Status};
use crate::cli::READ_GUNICORN_CONFIG;
use crate::config::keys::{Given, Key, Kind, Layer, LoadError, Origin, Sourced};

/// What a gunicorn config file sets, and a warning for each setting rwsgi ignores.
#[derive(Debug, Default)]
pub struct FileLayer {
    /// The settings, by rwsgi's clap id.
    pub layer: Layer,
    /// One line per ignored setting, naming the file and line.
    pub warnings: Vec<String>,
    /// The file executed (for `python:MODULE`, the module's file).
    pub path: PathBuf,
}

/// Executes the gunicorn config `source` (`PATH`, `file:PATH` or `python:MODULE`) in a
/// child and maps its settings onto `keys`.
pub fn read(source: &str, keys: &[Key]) -> Result<FileLayer, LoadError> {
    let failed = |why: String| LoadError(format!("{source}: {why}"));
    let exe = std::env::current_exe()
        .map_err(|err| failed(format!("cannot run rwsgi again to read it: {err}")))?;
    let output = Command::new(exe)
        .arg(READ_GUNICORN_CONFIG)
        .arg(source)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|err| failed(format!("cannot run rwsgi again to read it: {err}")))?;
    if !output.status.success() {
        return Err(failed(
            "the gunicorn config file failed to run (its error is above)".into(),
        ));
    }
    let text = String::from_utf8(output.stdout)
        .map_err(|_| failed("the config reader printed something not UTF-8".into()))?;
    parse(source, &text, keys)
}

/// Maps the reader's output `text` onto `keys`.
pub fn parse(source: &str, text: &str, keys: &[Key]) -> Result<FileLayer, LoadError> {
    let garbled = |why: &str| LoadError(format!("{source}: the config reader's output {why}"));
    let doc: toml::Table = text.parse().map_err(|_| garbled("is not TOML"))?;
    let path = PathBuf::from(doc.get("file").and_then(|f| f.as_str()).unwrap_or(source));
    let mut out = FileLayer {
        path: path.clone(),
        ..FileLayer::default()
    };
    let empty = Vec::new();
    let entries = doc
        .get("setting")
        .and_then(|s| s.as_array())
        .unwrap_or(&empty);
    let mut first_hook: Option<usize> = None;
    for entry in entries {
        let name = entry.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let line = entry
            .get("line")
            .and_then(|l| l.as_integer())
            .and_then(|l| usize::try_from(l).ok())
            .unwrap_or(0);
        let Some(setting) = table::find(name) else {
            return Err(garbled(&format!("names no gunicorn setting: {name:?}")));
        };
        let origin = Origin::File {
            path: path.clone(),
            line,
        };
        let at = format!("{}:{line}: {name}", path.display());
        let callable = entry.get("callable").and_then(|c| c.as_bool()) == Some(true);
        let value = entry.get("value");
        let key = match setting.status {
            Status::WorkerHook if callable => {
                first_hook = Some(first_hook.map_or(line, |l| l.min(line)));
                continue;
            }
            Status::WorkerHook => {
                return Err(LoadError(format!("{at}: a hook must be a function")));
            }
            Status::Ignored(why) | Status::Refused(why) => {
                out.warnings.push(format!("{at} is ignored: {why}"));
                continue;
            }
            Status::Supported("config") => {
                let why = "only -c (or GUNICORN_CMD_ARGS) names the config file, as in gunicorn";
                out.warnings.push(format!("{at} is ignored: {why}"));
                continue;
            }
            Status::Mapped(command @ ("rwsgi check" | "rwsgi config"), _) => {
                let why = format!("run `{command}` for that");
                out.warnings.push(format!("{at} is ignored: {why}"));
                continue;
            }
            Status::Supported(key) | Status::Mapped(key, _) => key,
        };
        let Some(key) = keys.iter().find(|k| k.name == key) else {
            return Err(garbled(&format!("maps {name} to no rwsgi setting")));
        };
        let Some(value) = value else {
            let shown = entry.get("repr").and_then(|r| r.as_str()).unwrap_or("?");
            return Err(LoadError(format!(
                "{at}: {shown} is not a value rwsgi can take (a string, number, boolean or list)"
            )));
        };
        let given = convert(key, value).map_err(|why| LoadError(format!("{at}: {why}")))?;
        out.layer.insert(key.id.clone(), Sourced { given, origin });
    }
    if let (Some(line), Some(key)) = (first_hook, keys.iter().find(|k| k.name == "hooks")) {
        // The file itself is the hooks module; `python:MODULE` is imported by name.
        let module = source.strip_prefix("python:").map(str::to_string);
        let hooks = module.unwrap_or_else(|| path.display().to_string());
        let given = Given::Values(vec![hooks.into()]);
        let origin = Origin::File { path, line };
        out.layer.insert(key.id.clone(), Sourced { given, origin });
    }
    Ok(out)
}

/// A Python value as `key` takes it: a switch from a boolean; a list for a repeatable
/// setting (a single value is a list of one, as gunicorn's validators take it); one
/// value from a scalar, or from a list joined with commas (`forwarded_allow_ips`).
fn convert(key: &Key, value: &toml::Value) -> Result<Given, String> {
    use toml::Value;
    match (key.kind, value) {
        (Kind::Switch, Value::Boolean(on)) => Ok(Given::Switch(*on)),
        (Kind::Switch, Value::Integer(n @ (0 | 1))) => Ok(Given::Switch(*n == 1)),
        (Kind::Switch, Value::String(text)) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "y" => Ok(Given::Switch(true)),
            "false" | "0" | "no" | "off" | "n" => Ok(Given::Switch(false)),
            _ => Err(format!("{text:?} is not a boolean")),
        },
        (Kind::Switch, other) => Err(format!("expected True or False, found {other}")),
        (Kind::Many, Value::Array(items)) => items
            .iter()
            .map(scalar)
            .collect::<Result<_, _>>()
            .map(Given::Values),
        (_, Value::Array(items)) => {
            let parts: Vec<String> = items
                .iter()
                .map(|item| scalar(item).map(|s| s.to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            Ok(Given::Values(vec![parts.join(",").into()]))
        }
        (_, other) => Ok(Given::Values(vec![scalar(other)?])),
    }
}

/// A string or a number, as the text a flag would be given.
fn scalar(value: &toml::Value) -> Result<OsString, String> {
    match value {
        toml::Value::String(text) => Ok(text.into()),
        toml::Value::Integer(n) => Ok(n.to_string().into()),
        toml::Value::Float(x) => Ok(x.to_string().into()),
        toml::Value::Boolean(on) => Ok(if *on { "true" } else { "false" }.into()),
        other => Err(format!("expected a string or a number, found {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::{given_texts as values, keys};

    #[test]
    fn settings_are_mapped_with_their_lines() {
        let text = r#"file = "/srv/gunicorn.conf.py"
[[setting]]
name = "workers"
line = 3
value = 4
[[setting]]
name = "bind"
line = 2
value = "127.0.0.1:9000"
[[setting]]
name = "keepalive"
line = 4
value = 2
[[setting]]
name = "preload_app"
line = 5
value = true
[[setting]]
name = "forwarded_allow_ips"
line = 6
value = ["10.0.0.1", "10.0.0.2"]
[[setting]]
name = "worker_tmp_dir"
line = 7
value = "/dev/shm"
[[setting]]
name = "post_fork"
line = 9
callable = true
[[setting]]
name = "when_ready"
line = 12
callable = true
"#;
        let out = parse("gunicorn.conf.py", text, &keys()).unwrap();
        assert_eq!(values(&out.layer, "workers"), ["4"]);
        assert_eq!(values(&out.layer, "bind"), ["127.0.0.1:9000"]);
        assert_eq!(values(&out.layer, "keep_alive"), ["2"]);
        assert_eq!(values(&out.layer, "preload"), ["true"]);
        assert_eq!(
            values(&out.layer, "forwarded_allow_ips"),
            ["10.0.0.1,10.0.0.2"]
        );
        assert_eq!(values(&out.layer, "hooks"), ["/srv/gunicorn.conf.py"]);
        assert_eq!(
            out.layer["workers"].origin,
            Origin::File {
                path: "/srv/gunicorn.conf.py".into(),
                line: 3
            }
        );
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
        assert!(
            out.warnings[0]
                .starts_with("/srv/gunicorn.conf.py:7: worker_tmp_dir is ignored: no heartbeat"),
            "{:?}",
            out.warnings
        );
        assert!(out.warnings[1].contains(":12: when_ready is ignored"));
    }

    #[test]
    fn values_rwsgi_cannot_take_name_the_line() {
        let text = "[[setting]]\nname = \"workers\"\nline = 3\nrepr = \"<object>\"\n";
        let err = parse("g.py", text, &keys()).unwrap_err().0;
        assert!(
            err.starts_with("g.py:3: workers: <object> is not a value"),
            "{err}"
        );
        let text = "[[setting]]\nname = \"preload_app\"\nline = 1\nvalue = \"maybe\"\n";
        let err = parse("g.py", text, &keys()).unwrap_err().0;
        assert_eq!(err, "g.py:1: preload_app: \"maybe\" is not a boolean");
        let text = "[[setting]]\nname = \"pre_request\"\nline = 2\nvalue = 3\n";
        let err = parse("g.py", text, &keys()).unwrap_err().0;
        assert_eq!(err, "g.py:2: pre_request: a hook must be a function");
    }
}
