//! ACME for `berth up`: a publicly trusted certificate for `--public-host` and its wildcard,
//! obtained and renewed by Berth itself through DNS-01 challenges that its own small DNS
//! responder answers. A valid certificate kept in the data directory is served from the
//! start (no new order); without one the proxy serves the local CA's certificate until ACME
//! succeeds, so the TLS ports always work. Renewal runs two thirds into the lifetime with
//! backoff on failure, the certificate in service kept meanwhile; open sessions keep theirs.
//! Keys (the account's, the certificate's) are never logged.

pub mod dns;
mod order;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use proxy::Proxy;
use proxy::tls::TlsServer;
use tokio_util::sync::CancellationToken;

use dns::{ChallengeRecords, Sockets};
use store::{Certificate, Store};

/// Let's Encrypt's production directory, used by `--acme` without `--acme-directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The first retry after a failed attempt; doubled after each failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(30);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// One whole attempt (account, order, validation, issuance) gives up after this.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(300);
/// The longest single sleep: the wall clock is looked at again after it (a suspended
/// machine wakes up to a renewal that is due).
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

#[derive(Args, Clone, Debug)]
pub struct AcmeArgs {
    /// Obtain and renew a certificate for --public-host and *.<public-host> from Let's
    /// Encrypt (or --acme-directory), answering its DNS-01 challenges with Berth's own DNS
    /// responder (--acme-dns-listen). Using it agrees to the ACME CA's terms of service.
    #[arg(long, requires = "public_host", conflicts_with = "tls_cert")]
    acme: bool,
    /// The ACME directory URL (implies --acme) [default: Let's Encrypt production].
    #[arg(long, value_name = "URL", requires = "public_host", conflicts_with = "tls_cert")]
    acme_directory: Option<String>,
    /// Contact address given to the ACME CA (expiry notices).
    #[arg(long, value_name = "EMAIL")]
    acme_email: Option<String>,
    /// Trust this root certificate (PEM) for the ACME server's HTTPS instead of the system's
    /// roots (a test CA such as pebble).
    #[arg(long, value_name = "FILE")]
    acme_ca_root: Option<PathBuf>,
    /// Where the DNS responder for _acme-challenge.<public-host> listens, UDP and TCP;
    /// delegate that name to it (see the README).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:53")]
    acme_dns_listen: SocketAddr,
}

impl AcmeArgs {
    fn directory(&self) -> Option<String> {
        match (&self.acme_directory, self.acme) {
            (Some(url), _) => Some(url.clone()),
            (None, true) => Some(LETS_ENCRYPT.to_owned()),
            (None, false) => None,
        }
    }

    /// Checks the settings, binds the DNS responder and reads what the data directory
    /// holds: `None` when ACME is off. Errors here stop `berth up` before anything starts.
    pub async fn prepare(&self, data: &Path, public_host: Option<&str>) -> anyhow::Result<Option<Acme>> {
        let Some(directory_url) = self.directory() else { return Ok(None) };
        let host = public_host.context("--acme needs --public-host")?;
        let host = dns_name(host)
            .with_context(|| format!("--public-host {host} cannot have an ACME certificate"))?;
        if let Some(root) = &self.acme_ca_root {
            std::fs::metadata(root).with_context(|| format!("--acme-ca-root {}", root.display()))?;
        }
        let records = Arc::new(ChallengeRecords::new(&host)?);
        let sockets = Sockets::bind(self.acme_dns_listen).await.with_context(|| {
            format!(
                "cannot listen on {} for the ACME DNS responder (port 53 needs root or \
                 CAP_NET_BIND_SERVICE; choose another with --acme-dns-listen)",
                self.acme_dns_listen
            )
        })?;
        let store = Store::open(data, &directory_url, &host)?;
        let stored = match store.certificate() {
            Ok(Some(cert)) if SystemTime::now() < cert.not_after => match server(&cert) {
                Ok(tls) => Some((cert, tls)),
                Err(e) => {
                    tracing::warn!(dir = %store.dir().display(), error = %e, "stored ACME certificate does not load; ordering a new one");
                    None
                }
            },
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(dir = %store.dir().display(), error = %format!("{e:#}"), "stored ACME certificate does not read; ordering a new one");
                None
            }
        };
        let client = order::Client {
            directory_url,
            email: self.acme_email.clone(),
            ca_root: self.acme_ca_root.clone(),
        };
        Ok(Some(Acme { client, store, host, records, sockets, stored }))
    }
}

/// `host` lower-cased if it is a DNS name a CA can issue for (and its wildcard): letters,
/// digits and hyphens in labels of 1 to 63, at least two labels, not an IP address.
fn dns_name(host: &str) -> anyhow::Result<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    anyhow::ensure!(host.parse::<std::net::IpAddr>().is_err(), "an IP address, not a DNS name");
    // Room for "_acme-challenge." in front (253 in all).
    anyhow::ensure!(host.len() <= 253 - 16, "longer than a DNS name can be");
    let labels: Vec<&str> = host.split('.').collect();
    anyhow::ensure!(labels.len() >= 2, "a single label, not a DNS name under a domain");
    for label in labels {
        let ok = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        anyhow::ensure!(ok, "the label {label:?} is not letters, digits and inner hyphens");
    }
    Ok(host)
}

fn server(cert: &Certificate) -> Result<TlsServer, proxy::tls::TlsError> {
    TlsServer::from_pem(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes())
}

/// ACME ready to run: the DNS responder bound, and the stored certificate if valid.
pub struct Acme {
    client: order::Client,
    store: Store,
    host: String,
    records: Arc<ChallengeRecords>,
    sockets: Sockets,
    stored: Option<(Certificate, TlsServer)>,
}

impl Acme {
    /// The stored certificate, to serve from the start: a restart orders nothing.
    pub fn stored(&self) -> Option<TlsServer> {
        self.stored.as_ref().map(|(_, tls)| tls.clone())
    }

    /// One line for the banner.
    pub fn describe(&self) -> String {
        let dns = self.sockets.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let state = if self.stored.is_some() { "in service" } else { "being obtained; local CA meanwhile" };
        format!("ACME for {h} and *.{h} ({state}); DNS-01 responder on {dns}", h = self.host)
    }

    /// Serves the challenges and keeps a certificate in `proxy` until `shutdown`.
    pub async fn run(self, proxy: Proxy, shutdown: CancellationToken) {
        let Acme { client, store, host, records, sockets, stored } = self;
        if let Ok(addr) = sockets.local_addr() {
            tracing::info!(dns = %addr, name = %records.name(), "ACME DNS-01 responder listening");
        }
        let dns = tokio::spawn(dns::serve(Arc::clone(&records), sockets, shutdown.clone()));
        let mut in_service = stored.map(|(cert, _)| cert);
        match &in_service {
            Some(cert) => tracing::info!(
                host = %host,
                serial = %cert.serial,
                not_after = %humantime::format_rfc3339_seconds(cert.not_after),
                "ACME certificate from the data directory in service; no new order"
            ),
            None => tracing::warn!(
                host = %host,
                directory = %client.directory_url,
                "no ACME certificate yet; the proxy serves the local CA's certificate until one is obtained"
            ),
        }
        let mut next = in_service.as_ref().map_or_else(SystemTime::now, Certificate::renew_at);
        let mut backoff = FIRST_RETRY;
        loop {
            while let Ok(wait) = next.duration_since(SystemTime::now()) {
                tokio::select! {
                    _ = shutdown.cancelled() => return dns.await.unwrap_or_default(),
                    _ = tokio::time::sleep(wait.min(LONGEST_SLEEP)) => {}
                }
            }
            tracing::info!(host = %host, directory = %client.directory_url, "ACME: ordering a certificate");
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return dns.await.unwrap_or_default(),
                r = tokio::time::timeout(ATTEMPT_LIMIT, client.issue(&store, &host, &records)) => r,
            };
            let installed = attempt
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {ATTEMPT_LIMIT:?}")))
                .and_then(|cert| Ok((server(&cert)?, cert)));
            match installed {
                Ok((tls, cert)) => {
                    if let Err(e) = store.save_certificate(&cert) {
                        tracing::warn!(error = %format!("{e:#}"), "ACME certificate not saved; a restart will order another");
                    }
                    proxy.set_tls(tls);
                    tracing::info!(
                        host = %host,
                        serial = %cert.serial,
                        not_after = %humantime::format_rfc3339_seconds(cert.not_after),
                        renew_at = %humantime::format_rfc3339_seconds(cert.renew_at()),
                        "ACME certificate installed; new connections get it"
                    );
                    next = cert.renew_at();
                    backoff = FIRST_RETRY;
                    in_service = Some(cert);
                }
                Err(e) => {
                    let serving = match &in_service {
                        Some(cert) if SystemTime::now() >= cert.not_after => "the expired ACME certificate",
                        Some(_) => "the ACME certificate in service",
                        None => "the local CA's certificate",
                    };
                    tracing::warn!(
                        host = %host,
                        directory = %client.directory_url,
                        error = %format!("{e:#}"),
                        retry_in = %humantime::format_duration(backoff),
                        serving,
                        "ACME certificate not obtained; the proxy keeps serving what it has and tries again"
                    );
                    next = SystemTime::now() + backoff;
                    backoff = (backoff * 2).min(MAX_RETRY);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_names_under_a_domain_can_have_a_certificate() {
        assert_eq!(dns_name("DB.Example.com.").unwrap(), "db.example.com");
        for bad in
            ["127.0.0.1", "::1", "localhost", "*.example.com", "db_1.example.com", "-a.example.com", ""]
        {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
        assert!(dns_name(&format!("{}.example.com", "a".repeat(64))).is_err());
    }
}
