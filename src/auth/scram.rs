//! Server side of SCRAM-SHA-256 (RFC 5802/7677) for verifying clients against a stored
//! verifier. Only the message flow is here; HMAC and SHA-256 come from the RustCrypto crates and
//! verifier derivation from postgres-protocol.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::scram_client::ScramKeys;
use super::AuthError;

/// What PostgreSQL stores for a SCRAM-SHA-256 password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
    /// Boxed: a verifier sits in every auth-file entry that has one, the MACs are 288 bytes.
    macs: Box<KeyedMacs>,
}

/// What every login would otherwise compute again, done once per verifier: HMAC-SHA-256 keyed
/// with the StoredKey and the ServerKey (keying hashes a block for each), and the tail of the
/// server-first-message.
#[derive(Clone)]
struct KeyedMacs {
    stored: Hmac<Sha256>,
    server: Hmac<Sha256>,
    /// `,s=<salt>,i=<iterations>`.
    salt_and_iterations: String,
}

impl KeyedMacs {
    fn new(stored_key: &[u8; 32], server_key: &[u8; 32], salt: &[u8], iterations: u32) -> Self {
        let keyed = |k: &[u8]| {
            <Hmac<Sha256> as KeyInit>::new_from_slice(k).expect("HMAC accepts any key length")
        };
        Self {
            stored: keyed(stored_key),
            server: keyed(server_key),
            salt_and_iterations: format!(",s={},i={iterations}", B64.encode(salt)),
        }
    }
}

/// Made from the keys the verifier compares: equal keys, equal MACs.
impl PartialEq for KeyedMacs {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeyedMacs {}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    pub fn new(iterations: u32, salt: Vec<u8>, stored_key: [u8; 32], server_key: [u8; 32]) -> Self {
        Self {
            macs: Box::new(KeyedMacs::new(&stored_key, &server_key, &salt, iterations)),
            iterations,
            salt,
            stored_key,
            server_key,
        }
    }

    /// Derives a verifier from a plaintext password (PBKDF2, run once per user and load).
    pub fn derive(password: &str) -> Self {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        parse_verifier(&text).expect("postgres-protocol produces well-formed verifiers")
    }
}

pub(super) fn parse_verifier(s: &str) -> Option<ScramVerifier> {
    let rest = s.strip_prefix("SCRAM-SHA-256$")?;
    let (iter_salt, keys) = rest.split_once('$')?;
    let (iter, salt) = iter_salt.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(ScramVerifier::new(
        iter.parse().ok()?,
        B64.decode(salt).ok()?,
        B64.decode(stored).ok()?.try_into().ok()?,
        B64.decode(server).ok()?.try_into().ok()?,
    ))
}

pub(super) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// HMAC of `msg` with a MAC already keyed.
fn keyed_hmac(keyed: &Hmac<Sha256>, msg: &[u8]) -> [u8; 32] {
    let mut m = keyed.clone();
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// State between the server-first and client-final messages.
pub struct ScramExchange {
    client_first_bare: String,
    server_first: String,
    /// The base64 of the client's gs2 header, which client-final-message must repeat.
    channel_binding: &'static str,
    nonce: String,
}

/// Joins `parts` into one string allocated once (`format!` grows its string as it goes).
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| s.push_str(p));
    s
}

/// RFC 5802 client-first-message-bare: `[m=ext,]n=user,r=nonce[,ext...]`. A mandatory
/// extension (`m=`) must fail the exchange; the user name is PostgreSQL's startup user, so the
/// attribute is only checked for presence.
fn client_nonce(bare: &str) -> Result<&str, AuthError> {
    let mut attrs = bare.split(',');
    let user = attrs.next().unwrap_or_default();
    if user.starts_with("m=") {
        return Err(protocol("client requires an unsupported SCRAM extension"));
    }
    if !user.starts_with("n=") {
        return Err(protocol("expected the username attribute"));
    }
    attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or_else(|| protocol("missing client nonce"))
}

fn protocol(msg: &str) -> AuthError {
    AuthError::Protocol(msg.to_string())
}

impl ScramExchange {
    /// Handles client-first-message; returns the exchange and the server-first-message.
    pub fn start(
        client_first: &[u8],
        verifier: &ScramVerifier,
        server_nonce: &str,
    ) -> Result<(Self, String), AuthError> {
        let text = std::str::from_utf8(client_first).map_err(|_| protocol("not UTF-8"))?;
        // gs2 header: "n,," (no channel binding) or "y,," (client could, server did not offer).
        let (cb, rest) = text
            .split_once(',')
            .ok_or_else(|| protocol("missing gs2 header"))?;
        let channel_binding = match cb {
            "n" => "biws",
            "y" => "eSws",
            _ => return Err(protocol("channel binding is not supported")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| protocol("missing gs2 header"))?;
        if !authzid.is_empty() {
            return Err(protocol("authorization identity is not supported"));
        }
        let client_nonce = client_nonce(bare)?;
        let nonce = concat(&[client_nonce, server_nonce]);
        let server_first = concat(&["r=", &nonce, &verifier.macs.salt_and_iterations]);
        let ex = ScramExchange {
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            channel_binding,
            nonce,
        };
        Ok((ex, server_first))
    }

    /// Verifies client-final-message; returns server-final-message on success, and the keys
    /// the client proved (for SCRAM passthrough to servers holding the same verifier).
    pub fn finish(
        &self,
        client_final: &[u8],
        verifier: &ScramVerifier,
        user: &str,
    ) -> Result<(String, ScramKeys), AuthError> {
        let text = std::str::from_utf8(client_final).map_err(|_| protocol("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| protocol("missing client proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .unwrap_or_default();
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .unwrap_or_default();
        if cbind != self.channel_binding || nonce != self.nonce {
            return Err(AuthError::Failed(user.to_string()));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| protocol("client proof is not base64"))?;
        let auth_message = concat(&[
            &self.client_first_bare,
            ",",
            &self.server_first,
            ",",
            without_proof,
        ]);
        let client_signature = keyed_hmac(&verifier.macs.stored, auth_message.as_bytes());
        let Ok(proof) = <[u8; 32]>::try_from(proof.as_slice()) else {
            return Err(AuthError::Failed(user.to_string()));
        };
        let client_key: [u8; 32] = std::array::from_fn(|i| proof[i] ^ client_signature[i]);
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        // In constant time: how long a wrong proof takes to refuse says nothing of the key.
        if !bool::from(computed.ct_eq(&verifier.stored_key)) {
            return Err(AuthError::Failed(user.to_string()));
        }
        let server_signature = keyed_hmac(&verifier.macs.server, auth_message.as_bytes());
        let keys = ScramKeys {
            client_key,
            server_key: verifier.server_key,
        };
        let mut server_final = String::with_capacity(2 + 44);
        server_final.push_str("v=");
        B64.encode_string(server_signature, &mut server_final);
        Ok((server_final, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(client_pw: &str, stored_pw: &str) -> Result<(), AuthError> {
        run_with(client_pw, stored_pw, ChannelBinding::unsupported())
    }

    fn run_with(client_pw: &str, stored_pw: &str, cb: ChannelBinding) -> Result<(), AuthError> {
        let verifier = ScramVerifier::derive(stored_pw);
        let mut client = ScramSha256::new(client_pw.as_bytes(), cb);
        let (ex, server_first) = ScramExchange::start(client.message(), &verifier, "srvnonce")?;
        client.update(server_first.as_bytes()).unwrap();
        let (server_final, _) = ex.finish(client.message(), &verifier, "u")?;
        client
            .finish(server_final.as_bytes())
            .map_err(|e| AuthError::Protocol(e.to_string()))
    }

    #[test]
    fn accepts_right_password_rejects_wrong() {
        run("s3cret", "s3cret").unwrap();
        assert!(matches!(run("wrong", "s3cret"), Err(AuthError::Failed(_))));
    }

    /// gs2 "y,,": the client could bind but the server offered no binding; its final message
    /// repeats that header, and the wrong one is refused.
    #[test]
    fn a_client_that_could_bind_logs_in_with_its_own_header() {
        run_with("s3cret", "s3cret", ChannelBinding::unrequested()).unwrap();
        let verifier = ScramVerifier::derive("pw");
        let (ex, _) = ScramExchange::start(b"y,,n=,r=abc", &verifier, "srv").unwrap();
        let forged = format!("c=biws,r=abcsrv,p={}", B64.encode([0u8; 32]));
        assert!(matches!(
            ex.finish(forged.as_bytes(), &verifier, "u"),
            Err(AuthError::Failed(_))
        ));
    }

    #[test]
    fn client_first_extensions_and_authzid_are_refused() {
        assert_eq!(client_nonce("n=,r=abc").unwrap(), "abc");
        assert_eq!(client_nonce("n=u,r=abc,x=1").unwrap(), "abc");
        for bad in ["m=ext,n=,r=abc", "r=abc", "n=,", "n=,r=", "n=,x=1,r=abc"] {
            assert!(client_nonce(bad).is_err(), "{bad}");
        }
    }
}
