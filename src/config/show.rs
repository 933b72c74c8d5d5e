//! `rwsgi config`: the effective configuration as a config file would write it, each
//! line saying where its value came from. The output is valid TOML (the sources are
//! comments), so it can be saved as a starting `rwsgi.toml`.

use std::fmt::Write;

use super::sources::{DEFAULT_FILE, Given, Kind, Layered, Origin, given_in};

impl Layered {
    /// Every setting, `key = value  # from: …`; unset ones as comments.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        let file = match &self.file {
            Some((path, Origin::Default)) => format!("{}", path.display()),
            Some((path, origin)) => format!("{} (named by {origin})", path.display()),
            None => format!("none (no -c FILE, no {DEFAULT_FILE} here)"),
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
                _ => format!("# {} is not set", key.name),
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
