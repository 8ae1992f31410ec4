//! The server side of a SCRAM exchange: client-first → server-first, client-final →
//! server-final. The proof check is constant time and runs the same way for a fake
//! verifier, which never succeeds.

use subtle::ConstantTimeEq;

use super::attrs::{self, b64, expect, to_b64};
use super::crypto::{self, Key};
use super::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError, ScramVerifier};

const CB_NAME: &str = "tls-server-end-point";

pub struct ScramServer {
    /// Every verifier that is valid now; they share salt and iteration count (a rotation
    /// derives the new one with the old salt), so one exchange can be checked against all.
    verifiers: Vec<ScramVerifier>,
    fake: bool,
    channel_binding: ChannelBinding,
    state: State,
}

enum State {
    Initial,
    SentFirst {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        bound: bool,
    },
    Done {
        keys: Option<(Key, Key)>,
    },
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramServer(..)")
    }
}

impl ScramServer {
    pub fn new(verifier: ScramVerifier, channel_binding: ChannelBinding) -> Self {
        ScramServer { verifiers: vec![verifier], fake: false, channel_binding, state: State::Initial }
    }

    /// An exchange that accepts any of `verifiers`. Those whose salt or iteration count
    /// differ from the first one's cannot be checked in the same exchange and are ignored.
    pub fn with_verifiers(verifiers: Vec<ScramVerifier>, channel_binding: ChannelBinding) -> Option<Self> {
        let first = verifiers.first()?;
        let (salt, iterations) = (first.salt.clone(), first.iterations);
        let verifiers =
            verifiers.into_iter().filter(|v| v.salt == salt && v.iterations == iterations).collect();
        Some(ScramServer { verifiers, fake: false, channel_binding, state: State::Initial })
    }

    /// An exchange that runs exactly like a real one and then fails with `InvalidProof`; see
    /// [`ScramVerifier::fake`] for its salt.
    pub fn fake(user: &str, database: &str, key: &[u8], channel_binding: ChannelBinding) -> Self {
        ScramServer {
            verifiers: vec![ScramVerifier::fake(user, database, key)],
            fake: true,
            channel_binding,
            state: State::Initial,
        }
    }

    /// Mechanisms to advertise in AuthenticationSASL, strongest first.
    pub fn mechanisms(&self) -> Vec<String> {
        match self.channel_binding {
            ChannelBinding::None => vec![SCRAM_SHA_256.to_owned()],
            ChannelBinding::TlsServerEndPoint(_) => {
                vec![SCRAM_SHA_256_PLUS.to_owned(), SCRAM_SHA_256.to_owned()]
            }
        }
    }

    /// Handles SASLInitialResponse and returns the server-first-message.
    pub fn handle_client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<String, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS => true,
            _ => return Err(ScramError::UnsupportedMechanism),
        };
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed)?;
        let (flag, rest) = msg.split_once(',').ok_or(ScramError::Malformed)?;
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed)?;
        if !authzid.is_empty() {
            return Err(ScramError::AuthzidUnsupported);
        }
        let offered_plus = matches!(self.channel_binding, ChannelBinding::TlsServerEndPoint(_));
        let bound = match flag {
            "n" if !plus => false,
            "y" if !plus => {
                if offered_plus {
                    return Err(ScramError::ChannelBindingDowngrade);
                }
                false
            }
            f if f.starts_with("p=") => {
                if !plus {
                    return Err(ScramError::Malformed);
                }
                if !offered_plus || &f[2..] != CB_NAME {
                    return Err(ScramError::ChannelBindingUnsupported);
                }
                true
            }
            _ => return Err(ScramError::Malformed),
        };
        let gs2_header = msg[..flag.len() + 1 + authzid.len() + 1].to_owned();
        let a = attrs::split(bare)?;
        if a.first().is_some_and(|(n, _)| *n == b'm') {
            return Err(ScramError::Malformed);
        }
        expect(&a, 0, b'n')?;
        let client_nonce = expect(&a, 1, b'r')?;
        if !attrs::valid_nonce(client_nonce) {
            return Err(ScramError::Malformed);
        }
        let nonce = format!("{client_nonce}{}", crypto::nonce());
        let server_first =
            format!("r={nonce},s={},i={}", to_b64(&self.verifiers[0].salt), self.verifiers[0].iterations);
        self.state = State::SentFirst {
            gs2_header,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            bound,
        };
        Ok(server_first)
    }

    /// Handles the client-final-message; on success returns the server-final-message.
    pub fn handle_client_final(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let State::SentFirst { gs2_header, client_first_bare, server_first, nonce, bound } =
            std::mem::replace(&mut self.state, State::Done { keys: None })
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed)?;
        let proof_at = msg.rfind(",p=").ok_or(ScramError::Malformed)?;
        let without_proof = &msg[..proof_at];
        let a = attrs::split(without_proof)?;
        let cbind = b64(expect(&a, 0, b'c')?)?;
        let mut expected_cbind = gs2_header.into_bytes();
        if bound && let ChannelBinding::TlsServerEndPoint(hash) = &self.channel_binding {
            expected_cbind.extend_from_slice(hash);
        }
        if !bool::from(cbind.ct_eq(&expected_cbind)) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if expect(&a, 1, b'r')? != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: Key = b64(&msg[proof_at + 3..])?.try_into().map_err(|_| ScramError::Malformed)?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        // Check every verifier, without stopping early, so timing does not say which matched.
        let mut matched: Option<(Key, Key)> = None;
        for v in &self.verifiers {
            let signature = crypto::hmac(&v.stored_key, &[auth_message.as_bytes()]);
            let client_key = crypto::xor(&proof, &signature);
            if bool::from(crypto::sha256(&client_key).ct_eq(&v.stored_key)) && matched.is_none() {
                matched = Some((client_key, v.server_key));
            }
        }
        let Some((client_key, server_key)) = matched.filter(|_| !self.fake) else {
            return Err(ScramError::InvalidProof);
        };
        let server_signature = crypto::hmac(&server_key, &[auth_message.as_bytes()]);
        self.state = State::Done { keys: Some((client_key, server_key)) };
        Ok(format!("v={}", to_b64(&server_signature)))
    }

    /// After a successful exchange, the client's ClientKey recovered from its proof. With
    /// the verifier's ServerKey it lets the proxy log in upstream as the client without ever
    /// knowing the password.
    pub fn client_key(&self) -> Option<[u8; 32]> {
        match self.state {
            State::Done { keys } => keys.map(|k| k.0),
            _ => None,
        }
    }

    /// After a successful exchange, the ServerKey of the verifier that matched.
    pub fn server_key(&self) -> Option<[u8; 32]> {
        match self.state {
            State::Done { keys } => keys.map(|k| k.1),
            _ => None,
        }
    }
}
