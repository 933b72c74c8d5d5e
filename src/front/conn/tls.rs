//! TLS for the `--bind` listeners: the handshake (rustls, TLS 1.2 and 1.3, ALPN `h2`
//! and `http/1.1`), the certificate chosen by SNI, and reloading the certificates when
//! the master asks (it got SIGHUP).
//!
//! Certificates are swapped behind the resolver, so a reload touches only handshakes
//! that start after it; open connections keep the keys they agreed on. A handshake
//! that fails or stalls must never cost more than a debug line and the head timeout.
//! Plain HTTP sent to the port is answered in plain HTTP ([`plain`]). With `--acme`,
//! the certificates rwsgi obtains itself are picked first for their names, and a
//! handshake asking only for `acme-tls/1` gets the TLS-ALPN-01 challenge certificate
//! (RFC 8737) and is closed once done.

mod plain;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info, warn};

use crate::config::TlsSettings;
use crate::config::tls::{CertSource, LoadedCert, load_all, provider};
use crate::front::acme::{ACME_TLS_ALPN, Certificates, expiry};
pub use plain::Peek;

/// The front tier's TLS: what every TLS connection shares.
pub struct Tls {
    acceptor: TlsAcceptor,
    certificates: Arc<SniResolver>,
    sources: Vec<CertSource>,
}

impl Tls {
    /// Builds the server side of TLS. The certificate files are read again (a front
    /// tier restarted after a SIGHUP must serve the reloaded ones); if they no longer
    /// load, the ones checked at start-up are served. `acme`: the certificates of
    /// `--acme`, when given.
    pub fn new(settings: &TlsSettings, acme: Option<Arc<Certificates>>) -> Result<Tls, String> {
        let loaded = match load_all(&settings.sources) {
            Ok(loaded) => loaded,
            Err(err) => {
                error!(
                    "cannot read the TLS certificates again ({err}); serving those checked at start-up"
                );
                settings.loaded.clone()
            }
        };
        let set = CertSet::new(loaded);
        if set.default.is_none() && acme.is_none() {
            return Err("no TLS certificate to serve".into());
        }
        let answers_acme = acme.is_some();
        let certificates = Arc::new(SniResolver {
            current: RwLock::new(Arc::new(set)),
            acme,
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| format!("cannot set up TLS: {err}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        // The server's order of cipher suites wins (its strongest first), not the
        // client's: as nginx's ssl_prefer_server_ciphers, which TLS scanners check for.
        config.ignore_client_order = true;
        // HTTP/2 when the client can, HTTP/1.1 otherwise (RFC 7301, RFC 9113 §3.2).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if answers_acme {
            // Last: chosen only by a client offering nothing else (the CA's validation).
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificates,
            sources: settings.sources.clone(),
        })
    }

    /// Runs the server side of the handshake; `None` (after a debug line) if it fails
    /// or takes longer than `timeout`. A client that speaks plain HTTP instead is
    /// answered 400 ([`plain`]) within the same time, and `None` returned.
    pub async fn accept<S>(
        &self,
        stream: S,
        peer: Option<SocketAddr>,
        timeout: Duration,
    ) -> Option<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Peek + Unpin,
    {
        let handshake = async {
            match stream.first_byte().await {
                Ok(Some(first)) if plain::is_plain_http(first) => {
                    Err(match plain::refuse(stream).await {
                        Ok(()) => "plain HTTP, answered 400".to_string(),
                        Err(err) => format!("plain HTTP, while answering 400: {err}"),
                    })
                }
                Err(err) => Err(err.to_string()),
                Ok(_) => self
                    .acceptor
                    .accept(stream)
                    .await
                    .map_err(|err| err.to_string()),
            }
        };
        let why = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(mut stream)) if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) => {
                // RFC 8737 §3: the validation ends with the handshake; no data follows.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                "a tls-alpn-01 validation, answered".to_string()
            }
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(why)) => why,
            Err(_) => "timed out".to_string(),
        };
        match peer {
            Some(peer) => debug!("TLS handshake with {peer} failed: {why}"),
            None => debug!("TLS handshake with a local peer failed: {why}"),
        }
        None
    }

    /// When the certificate served for each name expires (seconds since the epoch), by
    /// name: `--acme`'s domains, then the names of the `--tls` certificates.
    pub fn expiries(&self) -> BTreeMap<String, i64> {
        let resolver = &self.certificates;
        let mut expiries: BTreeMap<String, i64> = (resolver.acme.iter())
            .flat_map(|acme| acme.expiries())
            .collect();
        let set = (resolver.current.read())
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, certified) in &set.by_name {
            if let Some(not_after) = expiry(certified) {
                // --acme's certificate is served first for its names (`SniResolver`).
                expiries.entry(name.clone()).or_insert(not_after);
            }
        }
        expiries
    }

    /// The `--acme` certificates, when given.
    pub fn acme(&self) -> Option<&Certificates> {
        self.certificates.acme.as_deref()
    }

    /// Reads the certificate files again and serves them to new handshakes; on any
    /// error the current certificates stay.
    pub async fn reload(&self) {
        if self.sources.is_empty() {
            return info!("asked to reload TLS certificates: --acme renews its own, none to read");
        }
        let sources = self.sources.clone();
        let loaded = match tokio::task::spawn_blocking(move || load_all(&sources)).await {
            Ok(loaded) => loaded,
            Err(err) => return error!("TLS certificate reload failed: {err}"),
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(err) => {
                return error!(
                    "cannot reload the TLS certificates: {err}; keeping the current ones"
                );
            }
        };
        for warning in loaded.iter().flat_map(|cert| &cert.warnings) {
            warn!("--tls {warning}");
        }
        let names = describe(&loaded);
        match CertSet::new(loaded) {
            set if set.default.is_some() => {
                *self
                    .certificates
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
                info!("Reloaded TLS certificates ({names})");
            }
            _ => {
                error!("cannot reload the TLS certificates: none loaded; keeping the current ones")
            }
        }
    }
}

fn describe(loaded: &[LoadedCert]) -> String {
    let names: Vec<String> = loaded
        .iter()
        .map(|cert| match cert.names.is_empty() {
            true => "no DNS name".to_string(),
            false => cert.names.join(", "),
        })
        .collect();
    names.join("; ")
}

/// Reloads the certificates each time `requested` is notified (the master passes on
/// its SIGHUP over the control socket). Requests that arrive during a reload make one
/// more reload, not one each.
pub async fn reload_when_asked(tls: Option<Arc<Tls>>, requested: Arc<Notify>) {
    loop {
        requested.notified().await;
        match &tls {
            Some(tls) => tls.reload().await,
            None => info!("asked to reload TLS certificates, but there are none"),
        }
    }
}

/// The `--tls` certificates served at one time: by DNS name, and the default (the
/// first `--tls`) for clients that send no name or one no certificate has.
struct CertSet {
    default: Option<Arc<CertifiedKey>>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    fn new(loaded: Vec<LoadedCert>) -> CertSet {
        let default = loaded.first().map(|cert| cert.certified.clone());
        let mut by_name = HashMap::new();
        for cert in loaded {
            for name in cert.names {
                // The first --tls naming a host serves it.
                by_name
                    .entry(name)
                    .or_insert_with(|| cert.certified.clone());
            }
        }
        CertSet { default, by_name }
    }

    /// The certificate for a client asking for `name`: exact, then a wildcard for its
    /// parent (one label, RFC 6125 §6.4.3), then the default.
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.by_name.get(&format!("*.{parent}"))
        };
        (self.by_name.get(&name).or_else(wildcard).cloned()).or_else(|| self.default.clone())
    }
}

/// Chooses the certificate by the client's SNI: `--acme`'s for its domains, else the
/// `--tls` ones (swappable on reload), else `--acme`'s first.
struct SniResolver {
    current: RwLock<Arc<CertSet>>,
    acme: Option<Arc<Certificates>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
        if let Some(acme) = &self.acme {
            // RFC 8737 §3: the validation offers exactly one protocol, acme-tls/1, and
            // gets the challenge certificate or no handshake at all.
            let mut offered = hello.alpn().into_iter().flatten();
            if offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none() {
                return acme.challenge(name.as_deref()?);
            }
            if let Some(certified) = name.as_deref().and_then(|name| acme.get(name)) {
                return Some(certified);
            }
        }
        let set = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        set.pick(name.as_deref())
            .or_else(|| self.acme.as_ref()?.first())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::load;
    use std::path::Path;

    fn loaded(cert: &str, key: &str) -> LoadedCert {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
        let source = CertSource {
            cert: dir.join(cert),
            key: dir.join(key),
            key_flag: "--tls",
        };
        load(&source, &provider()).unwrap()
    }

    #[test]
    fn sni_picks_by_name_with_the_first_as_default() {
        let localhost = loaded("localhost.pem", "localhost.key");
        let other = loaded("other.test.pem", "other.test.key");
        let set = CertSet::new(vec![localhost.clone(), other.clone()]);
        let is = |picked: Option<Arc<CertifiedKey>>, cert: &LoadedCert| {
            Arc::ptr_eq(&picked.unwrap(), &cert.certified)
        };
        assert!(is(set.pick(None), &localhost));
        assert!(is(set.pick(Some("localhost")), &localhost));
        assert!(is(set.pick(Some("other.test")), &other));
        assert!(is(set.pick(Some("OTHER.test.")), &other));
        assert!(is(set.pick(Some("www.other.test")), &other));
        // A wildcard covers one label only.
        assert!(is(set.pick(Some("a.b.other.test")), &localhost));
        assert!(is(set.pick(Some("unknown.example")), &localhost));
    }
}
