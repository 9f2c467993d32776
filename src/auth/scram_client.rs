//! Client side of SCRAM-SHA-256 with keys instead of a password (SCRAM passthrough, as
//! PgBouncer does it): a client that proved its password to pgdecomp revealed its ClientKey, and
//! with the ServerKey of the same verifier pgdecomp logs in to a server that stores that verifier
//! (copied from pg_authid) — no plaintext password anywhere, and no PBKDF2 either.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::scram::hmac;
use super::AuthError;

/// ClientKey and ServerKey of one verifier, learned from a client's successful login.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(..)")
    }
}

fn protocol(msg: &str) -> AuthError {
    AuthError::Protocol(msg.to_string())
}

/// One exchange with a server.
pub struct ScramClient {
    keys: ScramKeys,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// Starts an exchange; returns it and the client-first-message.
    pub fn start(keys: ScramKeys) -> (Self, String) {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        let client = Self {
            keys,
            client_first_bare,
            nonce,
            server_signature: None,
        };
        (client, first)
    }

    /// Answers the server-first-message with the client-final-message (the proof).
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, AuthError> {
        let text = std::str::from_utf8(server_first).map_err(|_| protocol("not UTF-8"))?;
        let mut attrs = text.split(',');
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| n.starts_with(&self.nonce) && n.len() > self.nonce.len())
            .ok_or_else(|| protocol("server nonce does not extend ours"))?;
        let has = |prefix: &str, a: Option<&str>| a.is_some_and(|a| a.starts_with(prefix));
        if !has("s=", attrs.next()) || !has("i=", attrs.next()) {
            return Err(protocol("server-first-message without salt and iterations"));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.keys.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = self
            .keys
            .client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        self.server_signature = Some(hmac(&self.keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message: the server knows the same verifier.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let text = std::str::from_utf8(server_final).map_err(|_| protocol("not UTF-8"))?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(protocol(&format!("server refused the proof: {error}")));
        }
        let got = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| protocol("malformed server-final-message"))?;
        match self.server_signature {
            Some(want) if bool::from(got.ct_eq(&want[..])) => Ok(()),
            _ => Err(protocol(
                "server signature does not match (is the auth file's verifier the server's?)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{ScramExchange, ScramVerifier};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A real client logs in to pgdecomp's server side; the keys it reveals log pgdecomp in to
    /// another server side holding the same verifier.
    #[test]
    fn keys_from_one_login_open_another_exchange() {
        let verifier = ScramVerifier::derive("s3cret");
        let mut client = ScramSha256::new(b"s3cret", ChannelBinding::unsupported());
        let (ex, server_first) = ScramExchange::start(client.message(), &verifier, "n1").unwrap();
        client.update(server_first.as_bytes()).unwrap();
        let (server_final, keys) = ex.finish(client.message(), &verifier, "u").unwrap();
        client.finish(server_final.as_bytes()).unwrap();

        let (mut passthrough, first) = ScramClient::start(keys.clone());
        let (ex, server_first) = ScramExchange::start(first.as_bytes(), &verifier, "n2").unwrap();
        let last = passthrough.client_final(server_first.as_bytes()).unwrap();
        let (server_final, again) = ex.finish(last.as_bytes(), &verifier, "u").unwrap();
        passthrough.verify(server_final.as_bytes()).unwrap();
        assert_eq!(again, keys);

        // Another verifier (another password) refuses the proof.
        let other = ScramVerifier::derive("other");
        let (mut passthrough, first) = ScramClient::start(keys);
        let (ex, server_first) = ScramExchange::start(first.as_bytes(), &other, "n3").unwrap();
        let last = passthrough.client_final(server_first.as_bytes()).unwrap();
        assert!(matches!(
            ex.finish(last.as_bytes(), &other, "u"),
            Err(AuthError::Failed(_))
        ));
    }
}
