//! Automatic HTTPS (`--acme`): certificates ordered from an ACME CA (RFC 8555) with the
//! TLS-ALPN-01 challenge (RFC 8737) answered on the `--bind` listeners or the HTTP-01
//! challenge (RFC 8555 §8.3) on the `--redirect-http` ones, kept in `--acme-cache`, and
//! renewed inside the CA's renewal window when its directory offers ARI (RFC 9773), else
//! at two thirds of their lifetime (or always `--acme-renew-before`, when given).
//!
//! With a `--redirect-http` listener, HTTP-01 is tried first: it passes through anything
//! that forwards plain HTTP to port 80, while TLS-ALPN-01 needs the handshake on port 443
//! to reach rwsgi untouched (a load balancer or CDN that terminates TLS there breaks it),
//! and every ACME CA offers HTTP-01 (TLS-ALPN-01 is optional). After a failed order the
//! next attempt starts with the other type, so a host whose port 80 is blocked still gets
//! its certificate over 443.
//!
//! It runs in the front tier, which owns the TLS config: one task per domain, one
//! account per instance. The certificates it holds ([`Certificates`]) are read by the
//! SNI resolver of `conn::tls`, so a new one serves the next handshake without a restart
//! and without touching open connections. It must never stop the server: a CA that
//! fails or cannot be reached is a WARNING line and a retry with backoff, while the
//! certificate in hand (if any) is served as long as it is valid.

mod cache;
mod challenge;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use tracing::{error, info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::AcmeSettings;
use crate::config::tls::{CertSource, load, provider};
use cache::Cache;
pub use challenge::ACME_TLS_ALPN;

/// The certificates obtained so far, and the challenge certificates being validated;
/// shared with the TLS resolver.
#[derive(Default)]
pub struct Certificates {
    /// The `--acme` domains in order: the first serves clients that send no SNI.
    domains: Vec<String>,
    served: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// The HTTP-01 tokens being validated: token → (domain, key authorization).
    tokens: RwLock<HashMap<String, (String, String)>>,
    /// The failed orders of each domain (in the order of `domains`), for the metrics.
    failures: Vec<AtomicU64>,
}

impl Certificates {
    /// The certificate obtained for `name` (lowercase, no trailing dot), if any yet.
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let served = self.served.read().unwrap_or_else(PoisonError::into_inner);
        served.get(name).cloned()
    }

    /// The certificate for a client that names no host: the first domain's.
    pub fn first(&self) -> Option<Arc<CertifiedKey>> {
        self.get(self.domains.first()?)
    }

    /// The TLS-ALPN-01 certificate for `name` while its validation runs.
    pub fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let challenges = self
            .challenges
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        challenges.get(name).cloned()
    }

    /// The key authorization that answers the HTTP-01 `token` while its validation runs
    /// (RFC 8555 §8.3).
    pub fn key_authorization(&self, token: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        tokens
            .get(token)
            .map(|(_, key_authorization)| key_authorization.clone())
    }

    /// Each domain with a certificate, and when it expires (seconds since the epoch).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let served = self.served.read().unwrap_or_else(PoisonError::into_inner);
        served
            .iter()
            .filter_map(|(domain, certified)| Some((domain.clone(), expiry(certified)?)))
            .collect()
    }

    /// Each domain, and how many of its orders have failed.
    pub fn failures(&self) -> impl Iterator<Item = (&str, u64)> {
        (self.domains.iter())
            .zip(&self.failures)
            .map(|(domain, n)| (domain.as_str(), n.load(Ordering::Relaxed)))
    }

    fn failed(&self, domain: &str) {
        if let Some(i) = self.domains.iter().position(|d| d == domain) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn serve(&self, domain: &str, certified: Arc<CertifiedKey>) {
        let mut served = self.served.write().unwrap_or_else(PoisonError::into_inner);
        served.insert(domain.to_string(), certified);
    }

    fn set_challenge(&self, domain: &str, certified: Option<Arc<CertifiedKey>>) {
        let mut challenges = self
            .challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match certified {
            Some(certified) => challenges.insert(domain.to_string(), certified),
            None => challenges.remove(domain),
        };
    }

    fn set_token(&self, domain: &str, token: &str, key_authorization: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        tokens.insert(
            token.to_string(),
            (domain.to_string(), key_authorization.to_string()),
        );
    }

    /// Forgets `domain`'s challenges of either type once its order is over.
    fn clear_challenges(&self, domain: &str) {
        self.set_challenge(domain, None);
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, (of, _)| of != domain);
    }
}

/// A certificate's lifetime, in seconds since the epoch.
#[derive(Debug, Clone, Copy)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

impl Validity {
    fn of(certified: &CertifiedKey) -> Option<Validity> {
        let (_, cert) = X509Certificate::from_der(certified.end_entity_cert().ok()?).ok()?;
        Some(Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// When to order the next one: `renew_before` seconds before the end, by default
    /// two thirds into its life (as Let's Encrypt advises for 90-day certificates: 30
    /// days before the end).
    fn renew_at(&self, renew_before: Option<u64>) -> i64 {
        match renew_before {
            Some(before) => self
                .not_after
                .saturating_sub(i64::try_from(before).unwrap_or(i64::MAX)),
            None => self.not_before + self.lifetime() * 2 / 3,
        }
    }

    fn lifetime(&self) -> i64 {
        self.not_after - self.not_before
    }

    fn expired(&self) -> bool {
        now() >= self.not_after
    }

    fn until(&self) -> String {
        date(self.not_after)
    }
}

/// A CA's suggested renewal window (RFC 9773 §4.2), in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: i64,
    end: i64,
}

impl Window {
    /// The time to renew at, `permille` thousandths into the window: RFC 9773 §4.2
    /// recommends a uniformly random time within it, so that the CA's load is spread.
    /// One already past means at once.
    fn pick(&self, permille: u64) -> i64 {
        let span = (self.end - self.start).max(0);
        self.start + span.saturating_mul(permille.min(1000) as i64) / 1000
    }
}

/// What the renewal of one certificate waits for.
struct Schedule {
    /// When to renew, in seconds since the epoch.
    at: i64,
    /// How it was chosen, for the log.
    how: String,
    /// When to ask the CA's renewal information again, which may move the window.
    recheck: Option<Duration>,
    /// The certificate's ARI identifier, when the CA's window set the time: the new
    /// order names it as the one it replaces (RFC 9773 §5).
    replaces: Option<CertificateIdentifier<'static>>,
}

/// How often to ask for renewal information again: the CA's Retry-After, but no more
/// often than each minute and at least each day (RFC 9773 §4.3.2 advises such limits).
fn recheck_after(retry_after: Duration) -> Duration {
    retry_after.clamp(Duration::from_secs(60), Duration::from_secs(86400))
}

/// When asking for renewal information failed for a passing reason (not a CA without
/// ARI), it is asked again after this long.
const ARI_RETRY: Duration = Duration::from_secs(6 * 3600);

/// `secs` since the epoch as an HTTP date.
fn date(secs: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// When `certified` expires (its notAfter), in seconds since the epoch.
pub fn expiry(certified: &CertifiedKey) -> Option<i64> {
    Some(Validity::of(certified)?.not_after)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The ACME client of one front tier.
pub struct Acme {
    settings: AcmeSettings,
    cache: Cache,
    certificates: Arc<Certificates>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// The challenge types to answer, the preferred first (see the module's comment).
    challenge_types: Vec<ChallengeType>,
    /// This process's place, in thousandths, in the thirtieth of a certificate's life
    /// after two thirds where it renews without the CA's window (`Acme::renew_at`).
    spread: i64,
}

impl Acme {
    /// Loads the certificates still valid in the cache (served at once, no order) and
    /// says what the server waits for. `http01`: a `--redirect-http` listener answers
    /// the HTTP-01 challenge.
    pub fn new(settings: &AcmeSettings, http01: bool) -> Acme {
        let cache = Cache::new(&settings.cache, &settings.directory);
        let certificates = Certificates {
            domains: settings.domains.clone(),
            failures: settings.domains.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Certificates::default()
        };
        for domain in &settings.domains {
            match cached(&cache, domain) {
                Some((certified, validity)) => {
                    certificates.serve(domain, certified);
                    info!(
                        "ACME: serving the cached certificate for {domain} (valid until {})",
                        validity.until()
                    );
                }
                None => info!(
                    "ACME: no certificate for {domain} yet: ordering one from {}; HTTPS for \
                     {domain} fails until it arrives",
                    settings.directory
                ),
            }
        }
        Acme {
            settings: settings.clone(),
            cache,
            certificates: Arc::new(certificates),
            account: tokio::sync::Mutex::new(None),
            spread: permille() as i64,
            challenge_types: if http01 {
                vec![ChallengeType::Http01, ChallengeType::TlsAlpn01]
            } else {
                vec![ChallengeType::TlsAlpn01]
            },
        }
    }

    /// What the TLS resolver serves.
    pub fn certificates(&self) -> Arc<Certificates> {
        self.certificates.clone()
    }

    /// Keeps every domain's certificate: one task each, for the life of the process.
    pub fn spawn(self: Arc<Self>) {
        for domain in self.settings.domains.clone() {
            tokio::spawn(self.clone().keep(domain));
        }
    }

    /// Orders `domain`'s certificate when it is missing or due for renewal, and again
    /// after a failure (with backoff), forever.
    async fn keep(self: Arc<Self>, domain: String) {
        let mut failures: u32 = 0;
        loop {
            let current = self.certificates.get(&domain);
            let validity = current.as_deref().and_then(Validity::of);
            let mut replaces = None;
            if let (Some(certified), Some(validity)) = (&current, validity) {
                replaces = self.until_renewal(&domain, certified, validity).await;
                if self.adopt_renewed(&domain, validity) {
                    continue;
                }
                info!(
                    "ACME: renewing the certificate for {domain} (valid until {})",
                    validity.until()
                );
            }
            // After a failure, the other challenge type first; and no `replaces`, which
            // the CA may have refused (RFC 9773 §5: alreadyReplaced).
            let mut types = self.challenge_types.clone();
            let first = failures as usize % types.len();
            types.rotate_left(first);
            let replaces = replaces.filter(|_| failures == 0);
            match self.obtain(&domain, &types, replaces).await {
                Ok(validity) => {
                    failures = 0;
                    info!(
                        "ACME: obtained a certificate for {domain} (valid until {}); serving it",
                        validity.until()
                    );
                    if let Some(before) = self.settings.renew_before
                        && i64::try_from(before).unwrap_or(i64::MAX) >= validity.lifetime()
                    {
                        warn!(
                            "ACME: the certificate for {domain} lives {}s, no more than \
                             --acme-renew-before ({before}s): it is renewed at once, again \
                             and again",
                            validity.lifetime()
                        );
                    }
                }
                Err(why) => {
                    failures = failures.saturating_add(1);
                    self.certificates.failed(&domain);
                    let backoff = backoff(failures);
                    let kept = match validity {
                        Some(v) if !v.expired() => {
                            format!(
                                "keeping the current certificate (valid until {})",
                                v.until()
                            )
                        }
                        _ => format!("HTTPS for {domain} fails until one is obtained"),
                    };
                    warn!(
                        "ACME: cannot obtain a certificate for {domain} from {}: {why}; {kept}; \
                         retrying in {}s",
                        self.settings.directory,
                        backoff.as_secs()
                    );
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// When to renew a certificate valid for `validity` without the CA's window: as
    /// `--acme-renew-before` says, else two thirds into its life and up to a thirtieth
    /// more (three days of ninety), picked once per process: instances sharing
    /// `--acme-cache` then do not all order in the same second, and those after the first
    /// find its certificate (`adopt_renewed`).
    fn renew_at(&self, validity: Validity) -> i64 {
        match self.settings.renew_before {
            Some(_) => validity.renew_at(self.settings.renew_before),
            None => validity.renew_at(None) + validity.lifetime() * self.spread / 30_000,
        }
    }

    /// Serves the cache's certificate for `domain` instead of ordering one, when another
    /// instance sharing `--acme-cache` has renewed it meanwhile: it outlives `current`
    /// and is not due for renewal itself. Several instances then order once between
    /// them, not once each (the first to reach its renewal time orders).
    fn adopt_renewed(&self, domain: &str, current: Validity) -> bool {
        let Some((renewed, validity)) = cached(&self.cache, domain) else {
            return false;
        };
        if validity.not_after <= current.not_after || self.renew_at(validity) <= now() {
            return false;
        }
        self.certificates.serve(domain, renewed);
        info!(
            "ACME: serving the certificate for {domain} found renewed in {} (valid until {}); \
             no order needed",
            self.settings.cache.display(),
            validity.until()
        );
        true
    }

    /// Sleeps until `certified` (valid for `validity`) is due for renewal, and logs when
    /// that is and why. Gives the ARI identifier for the new order's `replaces`.
    async fn until_renewal(
        &self,
        domain: &str,
        certified: &CertifiedKey,
        validity: Validity,
    ) -> Option<CertificateIdentifier<'static>> {
        let mut picked: Option<(Window, i64)> = None;
        let mut said = None;
        loop {
            let schedule = self.schedule(certified, validity, &mut picked).await;
            if said != Some(schedule.at) {
                info!(
                    "ACME: the certificate for {domain} is to be renewed at {} ({})",
                    date(schedule.at),
                    schedule.how
                );
                said = Some(schedule.at);
            }
            let wait = Duration::from_secs((schedule.at - now()).max(0) as u64);
            match schedule.recheck {
                Some(recheck) if recheck < wait => tokio::time::sleep(recheck).await,
                _ => {
                    tokio::time::sleep(wait).await;
                    return schedule.replaces;
                }
            }
        }
    }

    /// When to renew `certified`: `--acme-renew-before` when given, else a time inside
    /// the CA's ARI window (the same one while the window stays, `picked`), else two
    /// thirds into its life.
    async fn schedule(
        &self,
        certified: &CertifiedKey,
        validity: Validity,
        picked: &mut Option<(Window, i64)>,
    ) -> Schedule {
        let fallback = |how: String, recheck| Schedule {
            at: self.renew_at(validity),
            how,
            recheck,
            replaces: None,
        };
        if let Some(before) = self.settings.renew_before {
            return fallback(
                format!("{before}s before it expires, as --acme-renew-before says"),
                None,
            );
        }
        match self.renewal_info(certified).await {
            Ok((replaces, window, retry_after)) => {
                let at = match *picked {
                    Some((seen, at)) if seen == window => at,
                    _ => window.pick(permille()),
                };
                *picked = Some((window, at));
                Schedule {
                    at,
                    how: format!(
                        "inside the CA's renewal window (ARI), {} to {}",
                        date(window.start),
                        date(window.end)
                    ),
                    recheck: Some(recheck_after(retry_after)),
                    replaces: Some(replaces),
                }
            }
            // A window seen before stays good while the CA cannot be asked.
            Err((_, true)) if picked.is_some() => Schedule {
                at: picked.map_or(0, |(_, at)| at),
                how: String::new(),
                recheck: Some(ARI_RETRY),
                replaces: None,
            },
            Err((why, passing)) => fallback(
                format!("two thirds into its life: no renewal window from the CA: {why}"),
                passing.then_some(ARI_RETRY),
            ),
        }
    }

    /// The CA's renewal information for `certified` (RFC 9773 §4): its identifier, its
    /// window and when to ask again. The error says whether it may pass (true), or the
    /// CA has no ARI or the certificate cannot be named (false).
    async fn renewal_info(
        &self,
        certified: &CertifiedKey,
    ) -> Result<(CertificateIdentifier<'static>, Window, Duration), (String, bool)> {
        let der = (certified.end_entity_cert()).map_err(|err| (format!("{err:?}"), false))?;
        let id = CertificateIdentifier::try_from(der)
            .map_err(|err| (err, false))?
            .into_owned();
        let account = self.account().await.map_err(|err| (err, true))?;
        let (info, retry_after) = match account.renewal_info(&id).await {
            Ok(answer) => answer,
            Err(instant_acme::Error::Unsupported(_)) => {
                return Err(("its directory offers none".to_string(), false));
            }
            Err(err) => return Err((why(&err), true)),
        };
        let window = Window {
            start: info.suggested_window.start.unix_timestamp(),
            end: info.suggested_window.end.unix_timestamp(),
        };
        // RFC 9773 §4.2: the end must come after the start.
        if window.end < window.start {
            return Err(("its window ends before it starts".to_string(), true));
        }
        Ok((id, window, retry_after))
    }

    /// One order for `domain`, from the new order to the certificate served and cached,
    /// answering the first of `types` that the CA offers; `replaces`: the certificate
    /// it renews, named to a CA with ARI.
    async fn obtain(
        &self,
        domain: &str,
        types: &[ChallengeType],
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<Validity, String> {
        let account = self.account().await?;
        let result = self.order(&account, domain, types, replaces).await;
        self.certificates.clear_challenges(domain);
        let (key_pem, chain_pem) = result?;
        let path = self.cache.certificate(domain);
        let pem = format!("{key_pem}{chain_pem}");
        self.cache.write(&path, pem.as_bytes()).map_err(|err| {
            format!(
                "the certificate came, but cannot be kept in {}: {err}",
                path.display()
            )
        })?;
        let (certified, validity) = cached(&self.cache, domain)
            .ok_or_else(|| format!("the certificate in {} is unusable", path.display()))?;
        self.certificates.serve(domain, certified);
        Ok(validity)
    }

    /// Runs the order: answers the first of `types` the CA offers, waits for validation,
    /// sends the CSR. Gives the private key and the chain, both PEM.
    async fn order(
        &self,
        account: &Account,
        domain: &str,
        types: &[ChallengeType],
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<(String, String), String> {
        let text = |err: instant_acme::Error| why(&err);
        let identifiers = [Identifier::Dns(domain.to_string())];
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(replaces) = replaces {
            new_order = new_order.replaces(replaces);
        }
        let mut order = account.new_order(&new_order).await.map_err(text)?;
        let mut answered = None;
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authorization = result.map_err(text)?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("the authorization is {other:?}")),
            }
            let offered = |kind: &&ChallengeType| {
                (authorization.challenges.iter()).any(|challenge| challenge.r#type == **kind)
            };
            let kind = types.iter().find(offered).cloned().ok_or_else(|| {
                let names: Vec<&str> = types.iter().map(challenge_name).collect();
                format!("the CA offers no {} challenge", names.join(" or "))
            })?;
            let mut challenge = authorization
                .challenge(kind.clone())
                .ok_or("the challenge went away")?;
            let key_authorization = challenge.key_authorization();
            if kind == ChallengeType::Http01 {
                let token = &challenge.token;
                self.certificates
                    .set_token(domain, token, key_authorization.as_str());
            } else {
                let digest = key_authorization.digest();
                let certified = challenge::certificate(domain, digest.as_ref())?;
                self.certificates.set_challenge(domain, Some(certified));
            }
            info!(
                "ACME: answering the {} challenge for {domain}",
                challenge_name(&kind)
            );
            challenge.set_ready().await.map_err(text)?;
            answered = Some(kind);
        }
        let retries = RetryPolicy::default().timeout(Duration::from_secs(120));
        let status = order.poll_ready(&retries).await.map_err(text)?;
        if status != OrderStatus::Ready {
            let why = match &order.state().error {
                Some(problem) => problem.to_string(),
                None => match answered {
                    Some(ChallengeType::Http01) => "the CA could not validate the http-01 \
                        challenge (is DNS pointing at this host, and port 80 reaching the \
                        --redirect-http listener?)"
                        .to_string(),
                    _ => "the CA could not validate the tls-alpn-01 challenge (is DNS pointing \
                          at this host, and port 443 reaching rwsgi?)"
                        .to_string(),
                },
            };
            return Err(format!("the order is {status:?}: {why}"));
        }
        let key_pem = order.finalize().await.map_err(text)?;
        let chain_pem = order.poll_certificate(&retries).await.map_err(text)?;
        Ok((key_pem, chain_pem))
    }

    /// The account, from the cache or created (and cached) on first use.
    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(account) = &*slot {
            return Ok(account.clone());
        }
        let builder = match &self.settings.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(|err| format!("cannot set up HTTPS to the CA: {err}"))?;
        let path = self.cache.account();
        let account = match std::fs::read(&path) {
            Ok(json) => {
                let credentials = serde_json::from_slice(&json)
                    .map_err(|err| format!("{}: unreadable account: {err}", path.display()))?;
                builder
                    .from_credentials(credentials)
                    .await
                    .map_err(|err| why(&err))?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let contact: Vec<String> = self
                    .settings
                    .email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder
                    .create(&new, self.settings.directory.clone(), None)
                    .await
                    .map_err(|err| format!("cannot create an account: {}", why(&err)))?;
                let json = serde_json::to_vec(&credentials).map_err(|err| err.to_string())?;
                if let Err(err) = self.cache.write(&path, &json) {
                    // The account works for this run; the next start makes another.
                    error!("ACME: cannot keep the account in {}: {err}", path.display());
                }
                info!("ACME: created an account at {}", self.settings.directory);
                account
            }
            Err(err) => return Err(format!("{}: {err}", path.display())),
        };
        *slot = Some(account.clone());
        Ok(account)
    }
}

/// A challenge type as RFC 8555 and RFC 8737 spell it.
fn challenge_name(kind: &ChallengeType) -> &'static str {
    match kind {
        ChallengeType::Http01 => "http-01",
        ChallengeType::TlsAlpn01 => "tls-alpn-01",
        _ => "other",
    }
}

/// An error with its causes ("client error (Connect): tcp connect error: Connection
/// refused"): hyper's own message alone does not say what went wrong.
fn why(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = inner.source();
    }
    text
}

/// `domain`'s certificate in the cache, when it loads and has not expired.
fn cached(cache: &Cache, domain: &str) -> Option<(Arc<CertifiedKey>, Validity)> {
    let path = cache.certificate(domain);
    if !path.exists() {
        return None;
    }
    let source = CertSource {
        cert: path.clone(),
        key: path.clone(),
        key_flag: "--acme-cache",
    };
    let loaded = match load(&source, &provider()) {
        Ok(loaded) => loaded,
        Err(err) => {
            warn!(
                "ACME: the cached certificate for {domain} is unusable ({err}); ordering another"
            );
            return None;
        }
    };
    let validity = Validity::of(&loaded.certified)?;
    if validity.expired() {
        info!("ACME: the cached certificate for {domain} has expired; ordering another");
        return None;
    }
    Some((loaded.certified, validity))
}

/// How long to wait after the `failures`-th failure in a row: 10 s doubling to an hour,
/// give or take a quarter so that instances sharing a CA do not retry in step.
fn backoff(failures: u32) -> Duration {
    let base = 10u64
        .saturating_mul(1 << failures.saturating_sub(1).min(9))
        .min(3600);
    let jitter = base * (permille() / 2) / 1000; // 0 to half of base
    Duration::from_secs(base - base / 4 + jitter)
}

/// A number from 0 to 999 that differs from call to call (the clock's nanoseconds):
/// enough to spread retries and renewals, with no random number generator.
fn permille() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_into_the_life() {
        let v = Validity {
            not_before: 0,
            not_after: 90,
        };
        assert_eq!(v.renew_at(None), 60);
        assert_eq!(v.renew_at(Some(10)), 80);
        // A window longer than the life renews at once.
        assert!(v.renew_at(Some(u64::MAX)) < 0);
    }

    #[test]
    fn an_ari_window_is_renewed_inside() {
        let window = Window {
            start: 1000,
            end: 2000,
        };
        assert_eq!(window.pick(0), 1000);
        assert_eq!(window.pick(500), 1500);
        assert_eq!(window.pick(999), 1999);
        assert_eq!(window.pick(5000), 2000);
        for _ in 0..100 {
            let at = window.pick(permille());
            assert!((1000..2000).contains(&at), "{at}");
        }
        // A window of one instant, or one reversed (refused before it gets here).
        let point = Window { start: 7, end: 7 };
        assert_eq!(point.pick(700), 7);
    }

    #[test]
    fn ari_is_asked_again_within_a_minute_and_a_day() {
        let secs = |s: u64| recheck_after(Duration::from_secs(s)).as_secs();
        assert_eq!(secs(0), 60);
        assert_eq!(secs(6 * 3600), 6 * 3600);
        assert_eq!(secs(30 * 86400), 86400);
    }

    #[test]
    fn backoff_grows_to_an_hour_with_jitter() {
        for failures in 1..40 {
            let base = (10u64 << (failures - 1).min(9)).min(3600);
            let got = backoff(failures).as_secs();
            assert!(
                got >= base * 3 / 4 && got <= base * 5 / 4,
                "{failures}: {got}"
            );
        }
    }
}
