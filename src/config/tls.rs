//! The `--tls` certificates: reading the PEM files, checking that each key matches its
//! certificate, and what the certificate says (the names it serves, its dates).
//!
//! The master calls [`load_all`] before it binds or forks, so a broken certificate is
//! one line naming the flag and the file; the front tier calls it again on SIGHUP to
//! reload. Nothing here logs: problems that do not stop the server (an expired
//! certificate) come back as warnings for the caller to report.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

use super::acme::AcmeSettings;
use super::bind::BindAddr;
use super::error::ConfigError;
use crate::cli::ServeArgs;

/// The TLS part of the settings: where the certificates come from, and what was
/// loaded from them when the settings were checked.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Each `--tls`, in order; the first is the default certificate.
    pub sources: Vec<CertSource>,
    /// The certificates as checked at start-up, in the order of `sources`.
    pub loaded: Vec<LoadedCert>,
    /// `--hsts`: the max-age of Strict-Transport-Security, in seconds.
    pub hsts: Option<u64>,
    /// `--acme`: certificates obtained by rwsgi itself (served by SNI beside `loaded`).
    pub acme: Option<AcmeSettings>,
}

/// Where one certificate chain and its private key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM file holding the private key (may be `cert` itself).
    pub key: PathBuf,
    /// The flag that named `key`, for error messages.
    pub key_flag: &'static str,
}

/// One certificate chain with its private key, ready to serve.
#[derive(Clone)]
pub struct LoadedCert {
    /// The chain and the signing key.
    pub certified: Arc<CertifiedKey>,
    /// The DNS names it serves (lowercase; `*.example.com` for a wildcard).
    pub names: Vec<String>,
    /// Problems that do not stop it from being served (expired, not yet valid).
    pub warnings: Vec<String>,
}

impl fmt::Debug for LoadedCert {
    // The key stays out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// The cryptography rustls uses everywhere in rwsgi (ring: builds with no extra tools).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSettings {
    /// Checks the TLS flags; `None` when neither `--tls` nor `--acme` is given.
    pub fn from_args(args: &ServeArgs) -> Result<Option<TlsSettings>, ConfigError> {
        let acme = AcmeSettings::from_args(args, &|name| std::env::var(name).ok())?;
        if args.tls.is_empty() && acme.is_some() {
            return Ok(Some(TlsSettings {
                sources: Vec::new(),
                loaded: Vec::new(),
                hsts: args.hsts,
                acme,
            }));
        }
        if args.tls.is_empty() {
            let needs_tls = |flag: &'static str| {
                ConfigError::new(
                    flag,
                    "needs --tls or --acme (the certificate to serve HTTPS with)",
                )
            };
            if args.tls_key.is_some() {
                return Err(needs_tls("--tls-key"));
            }
            if args.hsts.is_some() {
                return Err(needs_tls("--hsts"));
            }
            if !args.redirect_http.is_empty() {
                return Err(needs_tls("--redirect-http"));
            }
            return Ok(None);
        }
        let sources: Vec<CertSource> = args
            .tls
            .iter()
            .map(|value| CertSource::parse(value, args.tls_key.as_deref()))
            .collect::<Result<_, _>>()?;
        if args.tls_key.is_some() && sources.iter().all(|s| s.key_flag != "--tls-key") {
            return Err(ConfigError::new(
                "--tls-key",
                "every --tls names its own key (CERT:KEY), so this one is unused",
            ));
        }
        let loaded = load_all(&sources)?;
        Ok(Some(TlsSettings {
            sources,
            loaded,
            hsts: args.hsts,
            acme,
        }))
    }
}

impl CertSource {
    /// One `--tls` value: `CERT` or `CERT:KEY`. A `CERT` without a key of its own takes
    /// `--tls-key`, or else its key from its own file.
    pub fn parse(value: &str, tls_key: Option<&Path>) -> Result<CertSource, ConfigError> {
        if value.is_empty() {
            return Err(ConfigError::new("--tls", "the certificate path is empty"));
        }
        // A path that exists as written wins over a CERT:KEY reading of its colons.
        let split = match value.split_once(':') {
            Some((cert, key)) if !Path::new(value).is_file() => Some((cert, key)),
            _ => None,
        };
        Ok(match split {
            Some((cert, key)) if cert.is_empty() || key.is_empty() => {
                return Err(ConfigError::new(
                    "--tls",
                    format!("{value:?}: expected CERT or CERT:KEY"),
                ));
            }
            Some((cert, key)) => CertSource {
                cert: cert.into(),
                key: key.into(),
                key_flag: "--tls",
            },
            None => match tls_key {
                Some(key) => CertSource {
                    cert: value.into(),
                    key: key.into(),
                    key_flag: "--tls-key",
                },
                None => CertSource {
                    cert: value.into(),
                    key: value.into(),
                    key_flag: "--tls",
                },
            },
        })
    }
}

/// The `--redirect-http` addresses (checked against `--tls` by [`TlsSettings::from_args`]).
pub fn redirect_binds(args: &ServeArgs) -> Result<Vec<BindAddr>, ConfigError> {
    args.redirect_http
        .iter()
        .map(|text| {
            BindAddr::parse(text).map_err(|err| ConfigError::new("--redirect-http", err.message))
        })
        .collect()
}

/// Loads every certificate, or fails naming the first that cannot be served.
pub fn load_all(sources: &[CertSource]) -> Result<Vec<LoadedCert>, ConfigError> {
    let provider = provider();
    sources.iter().map(|s| load(s, &provider)).collect()
}

/// Reads one chain and its key, and checks that they belong together.
pub fn load(source: &CertSource, provider: &CryptoProvider) -> Result<LoadedCert, ConfigError> {
    let cert_error =
        |why: String| ConfigError::new("--tls", format!("{}: {why}", source.cert.display()));
    let key_error =
        |why: String| ConfigError::new(source.key_flag, format!("{}: {why}", source.key.display()));
    let cert_pem =
        std::fs::read(&source.cert).map_err(|err| cert_error(format!("cannot read it: {err}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| cert_error(format!("not a readable PEM file ({})", pem_why(err))))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error(
            "no PEM certificate in it (expected a \"BEGIN CERTIFICATE\" block)".into(),
        ));
    };
    let facts = Facts::read(leaf).map_err(cert_error)?;

    let key_pem = if source.key == source.cert {
        cert_pem
    } else {
        std::fs::read(&source.key).map_err(|err| key_error(format!("cannot read it: {err}")))?
    };
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) if source.key == source.cert => {
            return Err(key_error(
                "no private key in the certificate file: give one with --tls-key KEY or \
                 --tls CERT:KEY"
                    .into(),
            ));
        }
        Err(pem::Error::NoItemsFound) => {
            return Err(key_error(
                "no PEM private key in it (expected a \"BEGIN ... PRIVATE KEY\" block)".into(),
            ));
        }
        Err(err) => {
            return Err(key_error(format!(
                "not a readable PEM file ({})",
                pem_why(err)
            )));
        }
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| key_error(format!("unusable private key: {err}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key cannot show its public half; the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(key_error(format!(
                "the private key does not match the certificate {}",
                source.cert.display()
            )));
        }
        Err(err) => return Err(cert_error(format!("unusable certificate: {err}"))),
    }
    let warnings = facts
        .date_problem()
        .map(|why| format!("{}: {why}", source.cert.display()))
        .into_iter()
        .collect();
    Ok(LoadedCert {
        certified: Arc::new(certified),
        names: facts.names,
        warnings,
    })
}

fn pem_why(err: pem::Error) -> String {
    match err {
        pem::Error::Io(err) => err.to_string(),
        other => other.to_string(),
    }
}

/// What rwsgi needs to know from a leaf certificate.
struct Facts {
    names: Vec<String>,
    not_before: ASN1Time,
    not_after: ASN1Time,
}

impl Facts {
    fn read(der: &CertificateDer<'_>) -> Result<Facts, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|err| format!("not a valid X.509 certificate ({err})"))?;
        let mut names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(err) => return Err(format!("bad subjectAltName extension ({err})")),
        };
        if names.is_empty() {
            // An old-style certificate naming its host only in the subject's CN.
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(str::to_ascii_lowercase),
            );
        }
        Ok(Facts {
            names,
            not_before: cert.validity().not_before,
            not_after: cert.validity().not_after,
        })
    }

    /// Why a client would refuse the certificate today, if it would because of its dates.
    fn date_problem(&self) -> Option<String> {
        let now = ASN1Time::now();
        if now > self.not_after {
            Some(format!(
                "the certificate expired on {} (clients will refuse it)",
                self.not_after
            ))
        } else if now < self.not_before {
            Some(format!(
                "the certificate is not valid before {} (clients will refuse it)",
                self.not_before
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs")
    }

    fn source(cert: &str, key: &str) -> CertSource {
        CertSource {
            cert: certs().join(cert),
            key: certs().join(key),
            key_flag: "--tls",
        }
    }

    #[test]
    fn parse_forms() {
        let dir = tempfile::tempdir().unwrap();
        let plain = CertSource::parse("a.pem", None).unwrap();
        assert_eq!(
            (plain.cert.to_str(), plain.key.to_str()),
            (Some("a.pem"), Some("a.pem"))
        );
        let pair = CertSource::parse("a.pem:b.key", Some(Path::new("k"))).unwrap();
        assert_eq!((pair.key.to_str(), pair.key_flag), (Some("b.key"), "--tls"));
        let keyed = CertSource::parse("a.pem", Some(Path::new("k.pem"))).unwrap();
        assert_eq!(
            (keyed.key.to_str(), keyed.key_flag),
            (Some("k.pem"), "--tls-key")
        );
        // A file whose name has a colon is taken whole.
        let colon = dir.path().join("x:y.pem");
        std::fs::write(&colon, "").unwrap();
        let whole = CertSource::parse(colon.to_str().unwrap(), None).unwrap();
        assert_eq!(whole.cert, colon);
        assert!(CertSource::parse("a.pem:", None).is_err());
        assert!(CertSource::parse("", None).is_err());
    }

    #[test]
    fn loads_names_and_chain() {
        let loaded = load(&source("localhost.pem", "localhost.key"), &provider()).unwrap();
        assert_eq!(loaded.names, ["localhost"]);
        assert!(loaded.warnings.is_empty());
        let other = load(&source("other.test.pem", "other.test.key"), &provider()).unwrap();
        assert_eq!(other.names, ["other.test", "*.other.test"]);
    }

    #[test]
    fn key_in_the_certificate_file() {
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("both.pem");
        let mut pem = std::fs::read(certs().join("localhost.pem")).unwrap();
        pem.extend(std::fs::read(certs().join("localhost.key")).unwrap());
        std::fs::write(&both, pem).unwrap();
        let source = CertSource::parse(both.to_str().unwrap(), None).unwrap();
        assert!(load(&source, &provider()).is_ok());
        // Without a key anywhere, the error says how to give one.
        let alone = CertSource::parse(certs().join("localhost.pem").to_str().unwrap(), None);
        let err = load(&alone.unwrap(), &provider()).unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let err = load(&source("localhost.pem", "other.test.key"), &provider()).unwrap_err();
        assert_eq!(err.setting, "--tls");
        assert!(err.message.contains("does not match"), "{err}");
    }

    #[test]
    fn expired_is_a_warning() {
        let loaded = load(&source("expired.pem", "localhost.key"), &provider()).unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(
            loaded.warnings[0].contains("expired"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let err = load(&source("missing.pem", "localhost.key"), &provider()).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let source = CertSource {
            cert: junk,
            key: certs().join("localhost.key"),
            key_flag: "--tls-key",
        };
        let err = load(&source, &provider()).unwrap_err().to_string();
        assert!(err.contains("junk.pem") && err.contains("PEM"), "{err}");
    }
}
