//! The client side of a SCRAM exchange, used by the proxy to log in to upstreams that ask
//! for a password. The server chooses the PBKDF2 cost, so its one expensive step, the salted
//! password, can be taken out of the exchange ([`ScramClient::key_derivation`]) and run where
//! blocking is fine; the iteration count is capped before any of it runs.

use subtle::ConstantTimeEq;

use super::attrs::{self, b64, expect, to_b64};
use super::crypto::{self, Key};
use super::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError};

/// The most PBKDF2 iterations a server may ask of the proxy. The upstream chooses the count
/// and the proxy pays for it at every login it makes there: PostgreSQL's default is 4096, and
/// this allows 25 times that for operators who raised `scram_iterations`, at some tens of
/// milliseconds of one core per login, while a million (the earlier limit) cost a second.
pub const MAX_ITERATIONS: u32 = 100_000;

/// What the client proves: a password, or the keys recovered from another exchange.
enum Secret {
    Password(Vec<u8>),
    Keys { client_key: Key, server_key: Key },
}

pub struct ScramClient {
    secret: Secret,
    plus: bool,
    cbind_input: Vec<u8>,
    gs2_header: &'static str,
    client_nonce: String,
    client_first_bare: String,
    state: State,
}

enum State {
    Initial,
    /// The server-first message was accepted; its keys are being derived.
    Deriving {
        without_proof: String,
        auth_message: String,
    },
    SentFinal {
        server_signature: Key,
    },
    Done,
}

/// The salted-password computation a server-first message asks for, owned so that it can
/// run on another thread: `Send + 'static`, and its `Debug` shows no secret.
pub struct KeyDerivation(Derivation);

enum Derivation {
    Pbkdf2 {
        password: Vec<u8>,
        salt: Vec<u8>,
        iterations: u32,
    },
    /// Pass-through keys: nothing to compute.
    Known(DerivedKeys),
}

/// ClientKey and ServerKey, from a [`KeyDerivation`].
#[derive(Clone)]
pub struct DerivedKeys {
    client_key: Key,
    server_key: Key,
}

impl KeyDerivation {
    /// The PBKDF2 iterations this costs; 0 when the keys are already known.
    pub fn iterations(&self) -> u32 {
        match &self.0 {
            Derivation::Pbkdf2 { iterations, .. } => *iterations,
            Derivation::Known(_) => 0,
        }
    }

    /// Runs PBKDF2 (at most [`MAX_ITERATIONS`]); CPU-bound, so not on an async runtime's
    /// threads when `iterations()` is more than trivial.
    pub fn run(self) -> DerivedKeys {
        match self.0 {
            Derivation::Pbkdf2 { password, salt, iterations } => {
                let salted = crypto::salted_password(&password, &salt, iterations);
                DerivedKeys {
                    client_key: crypto::hmac(&salted, &[b"Client Key"]),
                    server_key: crypto::hmac(&salted, &[b"Server Key"]),
                }
            }
            Derivation::Known(keys) => keys,
        }
    }
}

impl std::fmt::Debug for KeyDerivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyDerivation(*** x{})", self.iterations())
    }
}

impl std::fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivedKeys(***)")
    }
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramClient(***)")
    }
}

impl ScramClient {
    /// Chooses the mechanism from what the server offered: PLUS when both sides can bind.
    pub fn new(
        password: &str,
        channel_binding: ChannelBinding,
        offered: &[String],
    ) -> Result<Self, ScramError> {
        Self::with_secret(Secret::Password(crypto::normalize_password(password)), channel_binding, offered)
    }

    /// Logs in with a ClientKey and ServerKey instead of a password (SCRAM pass-through).
    pub fn with_keys(
        client_key: [u8; 32],
        server_key: [u8; 32],
        channel_binding: ChannelBinding,
        offered: &[String],
    ) -> Result<Self, ScramError> {
        Self::with_secret(Secret::Keys { client_key, server_key }, channel_binding, offered)
    }

    fn with_secret(secret: Secret, cb: ChannelBinding, offered: &[String]) -> Result<Self, ScramError> {
        let offers = |m: &str| offered.iter().any(|o| o == m);
        let (plus, gs2_header, cbind_input) = match cb {
            ChannelBinding::TlsServerEndPoint(hash) if offers(SCRAM_SHA_256_PLUS) => {
                (true, "p=tls-server-end-point,,", hash)
            }
            _ if !offers(SCRAM_SHA_256) => return Err(ScramError::UnsupportedMechanism),
            ChannelBinding::TlsServerEndPoint(_) => (false, "y,,", Vec::new()),
            ChannelBinding::None => (false, "n,,", Vec::new()),
        };
        let client_nonce = crypto::nonce();
        Ok(ScramClient {
            secret,
            plus,
            cbind_input,
            gs2_header,
            client_first_bare: format!("n=,r={client_nonce}"),
            client_nonce,
            state: State::Initial,
        })
    }

    pub fn mechanism(&self) -> &'static str {
        if self.plus { SCRAM_SHA_256_PLUS } else { SCRAM_SHA_256 }
    }

    pub fn client_first(&self) -> String {
        format!("{}{}", self.gs2_header, self.client_first_bare)
    }

    /// Handles AuthenticationSASLContinue and returns the client-final-message, deriving the
    /// keys in place: [`key_derivation`](Self::key_derivation) and
    /// [`client_final`](Self::client_final) in one call, for callers that may block.
    pub fn handle_server_first(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let derivation = self.key_derivation(data)?;
        self.client_final(derivation.run())
    }

    /// Checks AuthenticationSASLContinue's server-first message (nonce, salt, an iteration
    /// count of at most [`MAX_ITERATIONS`]) and returns the key derivation it asks for. Pass
    /// its result to [`client_final`](Self::client_final).
    pub fn key_derivation(&mut self, data: &[u8]) -> Result<KeyDerivation, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed)?;
        let a = attrs::split(msg)?;
        let nonce = expect(&a, 0, b'r')?;
        let salt = b64(expect(&a, 1, b's')?)?;
        let iterations: u32 = expect(&a, 2, b'i')?.parse().map_err(|_| ScramError::Malformed)?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if !attrs::valid_nonce(nonce) || iterations == 0 {
            return Err(ScramError::Malformed);
        }
        if iterations > MAX_ITERATIONS {
            return Err(ScramError::TooManyIterations(iterations));
        }
        let derivation = match &self.secret {
            Secret::Password(pw) => Derivation::Pbkdf2 { password: pw.clone(), salt, iterations },
            Secret::Keys { client_key, server_key } => {
                Derivation::Known(DerivedKeys { client_key: *client_key, server_key: *server_key })
            }
        };
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cbind_input);
        let without_proof = format!("c={},r={nonce}", to_b64(&cbind));
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        self.state = State::Deriving { without_proof, auth_message };
        Ok(KeyDerivation(derivation))
    }

    /// The client-final-message, from the keys the server-first message's derivation gave.
    pub fn client_final(&mut self, keys: DerivedKeys) -> Result<String, ScramError> {
        let State::Deriving { without_proof, auth_message } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let DerivedKeys { client_key, server_key } = keys;
        let stored_key = crypto::sha256(&client_key);
        let signature = crypto::hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof = crypto::xor(&client_key, &signature);
        self.state =
            State::SentFinal { server_signature: crypto::hmac(&server_key, &[auth_message.as_bytes()]) };
        Ok(format!("{without_proof},p={}", to_b64(&proof)))
    }

    /// Handles AuthenticationSASLFinal: the server must prove it knows the verifier too.
    pub fn handle_server_final(&mut self, data: &[u8]) -> Result<(), ScramError> {
        let State::SentFinal { server_signature } = std::mem::replace(&mut self.state, State::Done) else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed)?;
        let a = attrs::split(msg)?;
        if let Ok(e) = expect(&a, 0, b'e') {
            return Err(ScramError::ServerError(e.to_owned()));
        }
        let v = b64(expect(&a, 0, b'v')?)?;
        if bool::from(v.ct_eq(&server_signature)) { Ok(()) } else { Err(ScramError::ServerSignatureMismatch) }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ScramServer, ScramVerifier};
    use super::*;

    fn run(
        verifier_pw: &str,
        client_pw: &str,
        server_cb: ChannelBinding,
        client_cb: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut server = ScramServer::new(ScramVerifier::generate(verifier_pw), server_cb);
        let mut client = ScramClient::new(client_pw, client_cb, &server.mechanisms())?;
        let first = server.handle_client_first(client.mechanism(), client.client_first().as_bytes())?;
        let fin = client.handle_server_first(first.as_bytes())?;
        let server_final = server.handle_client_final(fin.as_bytes())?;
        client.handle_server_final(server_final.as_bytes())?;
        assert!(server.client_key().is_some());
        Ok(())
    }

    #[test]
    fn right_password_succeeds() {
        run("s3cret", "s3cret", ChannelBinding::None, ChannelBinding::None).unwrap();
    }

    #[test]
    fn non_ascii_password_is_normalized() {
        // U+00AA normalizes to "a" under NFKC, as PostgreSQL's SASLprep does.
        run("\u{aa}bc", "abc", ChannelBinding::None, ChannelBinding::None).unwrap();
    }

    #[test]
    fn wrong_password_fails() {
        let err = run("s3cret", "guess", ChannelBinding::None, ChannelBinding::None).unwrap_err();
        assert_eq!(err, ScramError::InvalidProof);
    }

    #[test]
    fn channel_binding_succeeds_when_hashes_match() {
        let cb = ChannelBinding::tls_server_end_point(b"cert");
        run("pw", "pw", cb.clone(), cb).unwrap();
    }

    #[test]
    fn channel_binding_mismatch_fails() {
        let err = run(
            "pw",
            "pw",
            ChannelBinding::tls_server_end_point(b"proxy cert"),
            ChannelBinding::tls_server_end_point(b"mitm cert"),
        )
        .unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingMismatch);
    }

    #[test]
    fn downgrade_is_detected() {
        // A client that can bind but was told the server cannot sends "y": a server that
        // does offer PLUS must refuse.
        let mut server =
            ScramServer::new(ScramVerifier::generate("pw"), ChannelBinding::tls_server_end_point(b"c"));
        let client =
            ScramClient::new("pw", ChannelBinding::tls_server_end_point(b"c"), &["SCRAM-SHA-256".to_owned()])
                .unwrap();
        assert!(client.client_first().starts_with("y,,"));
        let err =
            server.handle_client_first(client.mechanism(), client.client_first().as_bytes()).unwrap_err();
        assert_eq!(err, ScramError::ChannelBindingDowngrade);
    }

    #[test]
    fn fake_server_always_fails_with_invalid_proof() {
        let mut server = ScramServer::fake("nobody", "db", b"key", ChannelBinding::None);
        let mut client = ScramClient::new("anything", ChannelBinding::None, &server.mechanisms()).unwrap();
        let first = server.handle_client_first(client.mechanism(), client.client_first().as_bytes()).unwrap();
        let fin = client.handle_server_first(first.as_bytes()).unwrap();
        assert_eq!(server.handle_client_final(fin.as_bytes()), Err(ScramError::InvalidProof));
    }

    #[test]
    fn pass_through_keys_log_in() {
        let verifier = ScramVerifier::generate("pw");
        // First exchange: the proxy verifies the client and recovers its ClientKey.
        let mut proxy = ScramServer::new(verifier.clone(), ChannelBinding::None);
        let mut client = ScramClient::new("pw", ChannelBinding::None, &proxy.mechanisms()).unwrap();
        let first = proxy.handle_client_first(client.mechanism(), client.client_first().as_bytes()).unwrap();
        let fin = client.handle_server_first(first.as_bytes()).unwrap();
        proxy.handle_client_final(fin.as_bytes()).unwrap();
        // Second exchange: the proxy logs in upstream with the recovered keys.
        let mut upstream = ScramServer::new(verifier, ChannelBinding::None);
        let mut proxy_client = ScramClient::with_keys(
            proxy.client_key().unwrap(),
            proxy.server_key().unwrap(),
            ChannelBinding::None,
            &upstream.mechanisms(),
        )
        .unwrap();
        let first = upstream
            .handle_client_first(proxy_client.mechanism(), proxy_client.client_first().as_bytes())
            .unwrap();
        let fin = proxy_client.handle_server_first(first.as_bytes()).unwrap();
        let done = upstream.handle_client_final(fin.as_bytes()).unwrap();
        proxy_client.handle_server_final(done.as_bytes()).unwrap();
    }

    #[test]
    fn either_verifier_of_a_rotation_is_accepted() {
        let old = ScramVerifier::generate("old");
        let new = ScramVerifier::derive("new", &old.salt, old.iterations);
        for (pw, ok) in [("old", true), ("new", true), ("other", false)] {
            let mut server =
                ScramServer::with_verifiers(vec![old.clone(), new.clone()], ChannelBinding::None).unwrap();
            let mut client = ScramClient::new(pw, ChannelBinding::None, &server.mechanisms()).unwrap();
            let first =
                server.handle_client_first(client.mechanism(), client.client_first().as_bytes()).unwrap();
            let fin = client.handle_server_first(first.as_bytes()).unwrap();
            let res = server.handle_client_final(fin.as_bytes());
            assert_eq!(res.is_ok(), ok, "{pw}");
            if let Ok(done) = res {
                client.handle_server_final(done.as_bytes()).unwrap();
            }
        }
    }

    #[test]
    fn absurd_iteration_counts_are_refused() {
        let mut client = ScramClient::new("pw", ChannelBinding::None, &["SCRAM-SHA-256".to_owned()]).unwrap();
        let nonce = client.client_first()["n,,n=,r=".len()..].to_owned();
        let first = format!("r={nonce}xyz,s=c2FsdA==,i={}", MAX_ITERATIONS + 1);
        assert_eq!(
            client.handle_server_first(first.as_bytes()),
            Err(ScramError::TooManyIterations(MAX_ITERATIONS + 1))
        );
    }

    #[test]
    fn the_derivation_can_run_elsewhere_and_is_capped_before_it_runs() {
        let mut server = ScramServer::new(ScramVerifier::derive("pw", b"salt", 5000), ChannelBinding::None);
        let mut client = ScramClient::new("pw", ChannelBinding::None, &server.mechanisms()).unwrap();
        let first = server.handle_client_first(client.mechanism(), client.client_first().as_bytes()).unwrap();
        let derivation = client.key_derivation(first.as_bytes()).unwrap();
        assert_eq!(derivation.iterations(), 5000);
        assert_eq!(format!("{derivation:?}"), "KeyDerivation(*** x5000)");
        let keys = std::thread::spawn(move || derivation.run()).join().unwrap();
        let fin = client.client_final(keys).unwrap();
        let done = server.handle_client_final(fin.as_bytes()).unwrap();
        client.handle_server_final(done.as_bytes()).unwrap();

        // At the cap, a derivation; above it, none, and the exchange is over.
        let nonce_of = |c: &ScramClient| c.client_first()["n,,n=,r=".len()..].to_owned();
        let mut client = ScramClient::new("pw", ChannelBinding::None, &["SCRAM-SHA-256".to_owned()]).unwrap();
        let at_cap = format!("r={}xyz,s=c2FsdA==,i={MAX_ITERATIONS}", nonce_of(&client));
        assert_eq!(client.key_derivation(at_cap.as_bytes()).unwrap().iterations(), MAX_ITERATIONS);
        let mut client = ScramClient::new("pw", ChannelBinding::None, &["SCRAM-SHA-256".to_owned()]).unwrap();
        let above = format!("r={}xyz,s=c2FsdA==,i={}", nonce_of(&client), MAX_ITERATIONS + 1);
        assert_eq!(
            client.key_derivation(above.as_bytes()).unwrap_err(),
            ScramError::TooManyIterations(MAX_ITERATIONS + 1)
        );
        assert_eq!(MAX_ITERATIONS, 100_000, "documented in DESIGN.md");
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let mut server = ScramServer::new(ScramVerifier::generate("pw"), ChannelBinding::None);
        for bad in ["", "n", "n,", "x,,n=,r=abc", "n,a=admin,n=,r=abc", "n,,r=abc", "n,,n=,r=a,b"] {
            let mut s = ScramServer::new(ScramVerifier::generate("pw"), ChannelBinding::None);
            assert!(s.handle_client_first("SCRAM-SHA-256", bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(server.handle_client_first("MD5", b"n,,n=,r=abc"), Err(ScramError::UnsupportedMechanism));
        assert_eq!(server.handle_client_final(b"c=biws,r=x,p=AAAA"), Err(ScramError::OutOfOrder));
    }
}
