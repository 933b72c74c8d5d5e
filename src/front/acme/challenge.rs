//! The TLS-ALPN-01 challenge certificate (RFC 8737 §3): self-signed, naming the domain
//! being validated, with the critical acmeIdentifier extension holding the SHA-256
//! digest of the key authorization. Served only to handshakes whose ALPN is exactly
//! `acme-tls/1` (see `conn::tls`), never to a browser.

use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::config::tls::provider;

/// The ALPN protocol of the TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificate that proves control of `domain` for the key authorization whose
/// SHA-256 is `digest`.
pub fn certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let why = |err: rcgen::Error| format!("cannot make the tls-alpn-01 certificate: {err}");
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(why)?;
    // RFC 8737 §3: "The acmeIdentifier extension MUST be critical".
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(why)?;
    let cert = params.self_signed(&key).map_err(why)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|err| format!("cannot use the tls-alpn-01 key: {err}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    #[test]
    fn carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let certified = certificate("acme.test", &digest).unwrap();
        let (_, cert) = X509Certificate::from_der(&certified.cert[0]).unwrap();
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31 (RFC 8737 §6.1).
        let ext = cert
            .extensions()
            .iter()
            .find(|ext| ext.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        // An OCTET STRING (0x04) of 32 bytes holding the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        let names = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", names.value.general_names),
            "[DNSName(\"acme.test\")]"
        );
    }
}
