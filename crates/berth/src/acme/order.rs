//! One ACME issuance (RFC 8555) for the public host and its wildcard: the account (created
//! once, then restored from the data directory), an order for both names, their DNS-01
//! challenges published through [`ChallengeRecords`] and withdrawn whatever the outcome, a
//! CSR for a fresh key, and the chain. The account key and the certificate key never reach
//! a log or an error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};

use super::dns::ChallengeRecords;
use super::store::{Certificate, Store};

/// What an issuance needs to know.
pub struct Client {
    pub directory_url: String,
    pub email: Option<String>,
    /// Trust this root (PEM) for the ACME server's HTTPS instead of the system's roots.
    pub ca_root: Option<PathBuf>,
}

/// How long the ACME server may take to validate, then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

impl Client {
    fn builder(&self) -> anyhow::Result<instant_acme::AccountBuilder> {
        match &self.ca_root {
            Some(root) => {
                Account::builder_with_root(root).with_context(|| format!("--acme-ca-root {}", root.display()))
            }
            None => Account::builder().context("the system's certificate store"),
        }
    }

    /// The account kept in `store`, or a new one registered now (and kept).
    async fn account(&self, store: &Store) -> anyhow::Result<Account> {
        if let Some(json) = store.account()? {
            let credentials: AccountCredentials =
                serde_json::from_str(&json).context("the stored ACME account does not read")?;
            return self.builder()?.from_credentials(credentials).await.context("ACME directory");
        }
        let contact = self.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new =
            NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
        let (account, credentials) = self
            .builder()?
            .create(&new, self.directory_url.clone(), None)
            .await
            .context("ACME account registration")?;
        store.save_account(&serde_json::to_string(&credentials)?)?;
        tracing::info!(account = account.id(), "ACME account registered");
        Ok(account)
    }

    /// A certificate for `host` and `*.host`, the challenges answered through `records`.
    pub async fn issue(
        &self,
        store: &Store,
        host: &str,
        records: &ChallengeRecords,
    ) -> anyhow::Result<Certificate> {
        let account = self.account(store).await?;
        let names = [host.to_owned(), format!("*.{host}")];
        let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await.context("ACME new order")?;
        let mut published = Published { records, values: Vec::new() };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("ACME authorization")?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => anyhow::bail!("ACME authorization for {} is {status:?}", authz.identifier()),
            }
            let mut challenge = authz
                .challenge(ChallengeType::Dns01)
                .context("the ACME server offers no dns-01 challenge")?;
            let value = challenge.key_authorization().dns_value();
            published.add(value);
            challenge.set_ready().await.context("ACME challenge")?;
        }
        let status = order.poll_ready(&POLL).await.context("ACME validation")?;
        if status != OrderStatus::Ready {
            let problem = order.state().error.as_ref().map(|p| p.to_string()).unwrap_or_default();
            anyhow::bail!("ACME order is {status:?} after validation {problem}");
        }
        drop(published);

        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await.context("ACME finalize")?;
        let chain = order.poll_certificate(&POLL).await.context("ACME certificate download")?;
        Certificate::new(chain, key.serialize_pem())
    }
}

/// The TXT values of one order, withdrawn when it is done, succeeded or not.
struct Published<'a> {
    records: &'a ChallengeRecords,
    values: Vec<String>,
}

impl Published<'_> {
    fn add(&mut self, value: String) {
        self.records.add(&value);
        self.values.push(value);
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for value in &self.values {
            self.records.remove(value);
        }
    }
}
