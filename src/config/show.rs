//! `rwsgi config`: the effective configuration as a config file would write it, each
//! line saying where its value came from. The output is valid TOML (the sources are
//! comments), so it can be saved as a starting `rwsgi.toml`. Values decided at run
//! time (the workers for the cores, the bind) are shown as they will be; a setting
//! that is simply off shows what its absence means, as a comment.

use std::fmt::Write;

use super::access_log::DEFAULT_FORMAT;
use super::keys::{Given, Key, Kind, Origin};
use super::sources::{DEFAULT_FILE, GUNICORN_DEFAULT_FILE, Layered, given_in};
use super::{WorkerClass, bind, default_front_threads, default_timeout, default_workers};

impl Layered {
    /// Every setting, `key = value  # from: …`; unset ones as comments.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        let file = match &self.file {
            Some((path, Origin::Default)) => format!("{}", path.display()),
            Some((path, origin)) => format!("{} (named by {origin})", path.display()),
            None => format!("none (no -c FILE, no {DEFAULT_FILE} or {GUNICORN_DEFAULT_FILE} here)"),
        };
        // The APP first, as a file would start; then the flags in the order of --help.
        let (app, flags): (Vec<_>, Vec<_>) =
            self.keys.iter().partition(|k| k.kind == Kind::Positional);
        for key in app.into_iter().chain(flags) {
            let origin = self.origins.get(&key.id).unwrap_or(&Origin::Default);
            let setting = match given_in(&self.matches, key) {
                Some(Given::Switch(on)) => format!("{} = {on}", key.name),
                Some(Given::Values(values)) if key.kind == Kind::Many => {
                    let items: Vec<String> = values
                        .iter()
                        .map(|v| literal(&v.to_string_lossy()))
                        .collect();
                    format!("{} = [{}]", key.name, items.join(", "))
                }
                Some(Given::Values(values)) if !values.is_empty() => {
                    format!("{} = {}", key.name, literal(&values[0].to_string_lossy()))
                }
                _ => match self.run_time_default(key) {
                    Some(value) => format!("{} = {value}", key.name),
                    None if key.kind == Kind::Many => format!("{} = []", key.name),
                    None => {
                        let absent = key.absent.as_deref().unwrap_or("none");
                        format!("# {}: {absent}", key.name)
                    }
                },
            };
            lines.push((setting, origin.to_string()));
        }
        let width = lines.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        let mut out = format!("# config file: {file}\n");
        for (setting, origin) in lines {
            let _ = writeln!(out, "{setting:<width$}  # from: {origin}");
        }
        out
    }
}

impl Layered {
    /// The value a setting left unset takes when rwsgi runs, as a TOML literal, for the
    /// settings whose default is decided then.
    fn run_time_default(&self, key: &Key) -> Option<String> {
        let args = &self.args;
        let value = match key.name.as_str() {
            "workers" => default_workers(args.reload).ok()?.to_string(),
            "front_threads" => default_front_threads().to_string(),
            "timeout" => default_timeout(args.reload).to_string(),
            "bind" => {
                let binds = bind::default_binds().ok()?;
                let binds: Vec<String> = binds.iter().map(|b| literal(b)).collect();
                return Some(format!("[{}]", binds.join(", ")));
            }
            "worker_class" => WorkerClass::from_args(args)
                .map_or("sync", WorkerClass::name)
                .into(),
            "threads" => match WorkerClass::from_args(args) {
                Ok(WorkerClass::Threads(n)) => n.to_string(),
                _ => "1".into(),
            },
            "log_level" => std::env::var("RWSGI_LOG").unwrap_or_else(|_| "info".into()),
            "access_log_format" => DEFAULT_FORMAT.into(),
            "name" => args.app.clone()?,
            _ => return None,
        };
        Some(literal(&value))
    }
}

/// `value` as TOML: a number when TOML reads it as one, else a quoted string.
fn literal(value: &str) -> String {
    match toml::de::DeValue::parse(value).map(|v| v.into_inner()) {
        Ok(toml::de::DeValue::Integer(_) | toml::de::DeValue::Float(_)) => value.to_string(),
        _ => toml::Value::String(value.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::literal;

    #[test]
    fn literals() {
        assert_eq!(literal("30"), "30");
        assert_eq!(literal("2.5"), "2.5");
        assert_eq!(literal(".5"), "\".5\"");
        assert_eq!(literal("inf"), "inf");
        assert_eq!(literal("100m"), "\"100m\"");
        assert_eq!(literal("a\"b"), "'a\"b'");
    }
}
