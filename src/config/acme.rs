//! The `--acme` flags: which domains get certificates from an ACME CA (RFC 8555), from
//! which directory, and where the account and certificates are kept.
//!
//! Checked before the fork like every setting (a bad domain, a CA root that does not
//! load, two directories at once); nothing here talks to the network or writes a file:
//! the front tier creates the cache and orders the certificates (src/front/acme/).

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::ConfigError;
use crate::cli::ServeArgs;

/// Let's Encrypt's production directory: `--acme-directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--acme-staging`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Automatic certificates: what to order, from where, and where to keep them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Each `--acme` domain (lowercase, without a trailing dot); one certificate each.
    pub domains: Vec<String>,
    /// `--acme-email`: the account's contact.
    pub email: Option<String>,
    /// The directory URL of the CA.
    pub directory: String,
    /// `--acme-ca-root`: the CA certificate trusted for HTTPS to the directory.
    pub ca_root: Option<PathBuf>,
    /// `--acme-cache`: the account and certificates (absolute).
    pub cache: PathBuf,
    /// `--acme-renew-before`: renew with this many seconds left (`None`: inside the
    /// CA's ARI window, else with a third of the certificate's lifetime left).
    pub renew_before: Option<u64>,
}

impl AcmeSettings {
    /// Checks the ACME flags; `None` when `--acme` is not given. `env` reads the
    /// environment (the default cache follows systemd's and XDG's variables).
    pub fn from_args(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<AcmeSettings>, ConfigError> {
        if args.acme.is_empty() {
            let needs_acme = |flag: &'static str| {
                ConfigError::new(
                    flag,
                    "needs --acme (the domain to obtain a certificate for)",
                )
            };
            let given = [
                ("--acme-email", args.acme_email.is_some()),
                ("--acme-directory", args.acme_directory.is_some()),
                ("--acme-staging", args.acme_staging),
                ("--acme-ca-root", args.acme_ca_root.is_some()),
                ("--acme-cache", args.acme_cache.is_some()),
                ("--acme-renew-before", args.acme_renew_before.is_some()),
            ];
            return match given.into_iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(needs_acme(flag)),
                None => Ok(None),
            };
        }
        let mut domains: Vec<String> = Vec::new();
        for text in &args.acme {
            let domain = domain(text)?;
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
        let directory = match (&args.acme_directory, args.acme_staging) {
            (Some(_), true) => {
                return Err(ConfigError::new(
                    "--acme-staging",
                    "names a directory, and so does --acme-directory: give one of them",
                ));
            }
            (Some(url), false) if url.starts_with("https://") => url.clone(),
            (Some(url), false) => {
                return Err(ConfigError::new(
                    "--acme-directory",
                    format!("{url:?} is not an https:// URL (RFC 8555 §6.1)"),
                ));
            }
            (None, true) => LETS_ENCRYPT_STAGING.to_string(),
            (None, false) => LETS_ENCRYPT.to_string(),
        };
        if let Some(email) = &args.acme_email
            && (!email.contains('@') || email.contains([' ', ',', '\n']))
        {
            return Err(ConfigError::new(
                "--acme-email",
                format!("{email:?} is not an email address"),
            ));
        }
        if let Some(root) = &args.acme_ca_root {
            CertificateDer::from_pem_file(root).map_err(|err| {
                ConfigError::new(
                    "--acme-ca-root",
                    format!("{}: no PEM certificate to trust ({err})", root.display()),
                )
            })?;
        }
        if args.acme_renew_before == Some(0) {
            return Err(ConfigError::new(
                "--acme-renew-before",
                "0 would renew only once the certificate has expired: give a number of seconds",
            ));
        }
        let cache = match &args.acme_cache {
            Some(dir) => dir.clone(),
            None => default_cache(env).ok_or_else(|| {
                ConfigError::new(
                    "--acme-cache",
                    "no state directory known (none of STATE_DIRECTORY, XDG_STATE_HOME, HOME \
                     is set): name one",
                )
            })?,
        };
        let cache = std::path::absolute(&cache).map_err(|err| {
            ConfigError::new("--acme-cache", format!("{}: {err}", cache.display()))
        })?;
        Ok(Some(AcmeSettings {
            domains,
            email: args.acme_email.clone(),
            directory,
            ca_root: args.acme_ca_root.clone(),
            cache,
            renew_before: args.acme_renew_before,
        }))
    }
}

/// One `--acme` value as a DNS name (RFC 1035 §2.3.1 letters, digits and hyphens, in
/// labels of 1 to 63). No wildcard: neither TLS-ALPN-01 (RFC 8737 §3) nor HTTP-01
/// (RFC 8555 §8.3) can prove one.
fn domain(text: &str) -> Result<String, ConfigError> {
    let name = text.trim_end_matches('.').to_ascii_lowercase();
    let refuse = |why: &str| ConfigError::new("--acme", format!("{text:?}: {why}"));
    if name.starts_with("*.") {
        return Err(refuse(
            "a wildcard needs a DNS-01 challenge, which rwsgi does not answer: give its \
             certificate with --tls",
        ));
    }
    if name.is_empty() || name.len() > 253 {
        return Err(refuse("not a domain name"));
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err(refuse(
            "not a domain name (letters, digits and hyphens; an internationalized name in \
             its xn-- form)",
        ));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(refuse("an IP address, not a domain name"));
    }
    Ok(name)
}

/// The cache when `--acme-cache` is not given: systemd's `StateDirectory=`, else the
/// XDG state directory.
fn default_cache(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    if let Some(dirs) = set("STATE_DIRECTORY") {
        // systemd joins several StateDirectory= with colons.
        let first = dirs.split(':').next().unwrap_or(&dirs);
        return Some(Path::new(first).join("acme"));
    }
    if let Some(state) = set("XDG_STATE_HOME") {
        return Some(Path::new(&state).join("rwsgi/acme"));
    }
    set("HOME").map(|home| Path::new(&home).join(".local/state/rwsgi/acme"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked() {
        assert_eq!(domain("Example.COM.").unwrap(), "example.com");
        assert_eq!(
            domain("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "*.example.com",
            "",
            "a..b",
            "-a.example",
            "a_b.example",
            "10.0.0.1",
        ] {
            assert!(domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_cache_follows_systemd_then_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            }
        };
        let all = env(&[
            ("STATE_DIRECTORY", "/var/lib/app:/var/lib/other"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            default_cache(&all),
            Some(PathBuf::from("/var/lib/app/acme"))
        );
        let xdg = env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/home/u")]);
        assert_eq!(default_cache(&xdg), Some(PathBuf::from("/x/rwsgi/acme")));
        let home = env(&[("HOME", "/home/u")]);
        assert_eq!(
            default_cache(&home),
            Some(PathBuf::from("/home/u/.local/state/rwsgi/acme"))
        );
        assert_eq!(default_cache(&env(&[])), None);
    }
}
