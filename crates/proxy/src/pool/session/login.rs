//! The end of login on the pooled port: the ParameterStatus values the client must see (its
//! own settings applied on a server once, then cached per set of settings), BackendKeyData
//! with the session's synthetic process id, and the first ReadyForQuery. It never leaves a
//! server attached in transaction mode.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use wire::backend::{BackendMessage, TransactionStatus};
use wire::{ErrorResponse, SqlState};

use crate::pool::settings::Settings;
use crate::routes::PoolMode;

use super::Session;
use super::attach::checkout;
use super::simple_query::sync_settings;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Session<S> {
    /// Learns the ParameterStatus values this client must see (its own settings applied on
    /// a server, which validates them too) and tells the client it is ready.
    pub(super) async fn login(&mut self, pid: i32) -> Result<(), ErrorResponse> {
        let key = self.settings.sync_sql(&Settings::default()).unwrap_or_default();
        let cached = self.pool.login_params(&key);
        let params = match cached {
            Some(p) if self.mode == PoolMode::Transaction => p,
            _ => {
                let (mut server, permit) = checkout(&self.pool).await?;
                let reported = match sync_settings(&mut server, &self.settings).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The server is fine, the client's settings are not (one that
                        // failed or broke the protocol is marked and closed by checkin).
                        self.pool.checkin(server);
                        let mut e = e;
                        e.set(b'S', "FATAL".into());
                        e.set(b'V', "FATAL".into());
                        return Err(e);
                    }
                };
                let params = Arc::new(merge_params(&self.pool.base_params(), &reported));
                self.pool.remember_login_params(key, Arc::clone(&params));
                self.attach_server((server, permit));
                if self.mode == PoolMode::Transaction {
                    self.release();
                }
                params
            }
        };
        let mut out = BytesMut::new();
        for (name, value) in params.iter() {
            BackendMessage::ParameterStatus { name: name.clone(), value: value.clone() }.encode(&mut out);
        }
        BackendMessage::BackendKeyData { pid, secret: self.cancel.key().secret }.encode(&mut out);
        BackendMessage::ReadyForQuery(TransactionStatus::Idle).encode(&mut out);
        self.client.wbuf.extend_from_slice(&out);
        self.write_out()
            .await
            .map_err(|e| ErrorResponse::fatal(SqlState::CONNECTION_FAILURE, e.to_string()))?;
        // Most clients wait a while before their first query: hold no buffer meanwhile.
        self.client.wbuf = BytesMut::new();
        Ok(())
    }
}

/// The parameters a client sees at login: a fresh server's, with what its own settings
/// changed.
fn merge_params(base: &[(String, String)], reported: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base.to_vec();
    for (name, value) in reported {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.clone(),
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}
