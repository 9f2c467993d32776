//! Client login exchanges (md5 and SCRAM-SHA-256) over the client socket, verified against the
//! auth file. Unknown users go through the same exchange and fail the same way, so the error
//! does not reveal which user names exist.

use bytes::{Buf, Bytes};
use md5::{Digest, Md5};
use pgwire::messages::startup::Authentication;
use subtle::ConstantTimeEq;

use super::io::ClientIo;
use super::SessionError;
use crate::auth::scram::{ScramExchange, ScramVerifier};
use crate::auth::scram_client::ScramKeys;
use crate::auth::{AuthError, Secret, UserList};
use crate::config::AuthType;
use crate::protocol::backend;
use crate::protocol::frame::read_cstr;

/// Authenticates `user`; returns once the client has proven its password, with the SCRAM keys
/// the proof revealed when the exchange was SCRAM (for passthrough to servers).
pub async fn authenticate(
    io: &mut ClientIo,
    users: &UserList,
    auth_type: AuthType,
    user: &str,
) -> Result<Option<ScramKeys>, SessionError> {
    let entry = users.get(user);
    if auth_type == AuthType::Trust {
        return Ok(None);
    }
    let md5_secret = match entry.map(|e| &e.secret) {
        Some(Secret::Md5(h)) => Some(h.clone()),
        Some(Secret::Plain(p)) if auth_type == AuthType::Md5 => {
            Some(md5_hex(&[p.as_bytes(), user.as_bytes()]))
        }
        _ => None,
    };
    let failed = || SessionError::Auth(AuthError::Failed(user.to_string()));
    match md5_secret {
        Some(hash) if md5_exchange(io, &hash).await? => Ok(None),
        Some(_) => Err(failed()),
        None => {
            // Unknown users get a throwaway verifier so the exchange looks the same.
            let verifier = entry.map_or_else(|| users.dummy_verifier(), |e| e.scram());
            match scram_exchange(io, verifier, user).await? {
                Some(keys) if entry.is_some() => Ok(Some(keys)),
                _ => Err(failed()),
            }
        }
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_password(io: &mut ClientIo) -> Result<Bytes, SessionError> {
    io.flush().await?;
    match io.read_frame().await? {
        Some(f) if f.tag == b'p' => Ok(f.raw.slice(5..)),
        Some(f) => Err(SessionError::Auth(AuthError::Protocol(format!(
            "expected a password message, got '{}'",
            f.tag as char
        )))),
        None => Err(SessionError::Hangup),
    }
}

async fn md5_exchange(io: &mut ClientIo, stored_hash: &str) -> Result<bool, SessionError> {
    let salt: [u8; 4] = rand::random();
    backend::auth(Authentication::MD5Password(salt.to_vec()), &mut io.wbuf);
    let body = read_password(io).await?;
    let mut b = &body[..];
    let got = read_cstr(&mut b).unwrap_or_default();
    Ok(md5_matches(got, stored_hash, salt))
}

/// Whether `got` is the md5 response to `salt` for the stored `md5(password || user)` hash.
fn md5_matches(got: &[u8], stored_hash: &str, salt: [u8; 4]) -> bool {
    let want = format!("md5{}", md5_hex(&[stored_hash.as_bytes(), &salt]));
    // In constant time: how long a wrong password takes to refuse says nothing of the hash.
    bool::from(got.ct_eq(want.as_bytes()))
}

/// `None` when the proof is wrong.
async fn scram_exchange(
    io: &mut ClientIo,
    verifier: &ScramVerifier,
    user: &str,
) -> Result<Option<ScramKeys>, SessionError> {
    backend::auth(
        Authentication::SASL(vec!["SCRAM-SHA-256".into()]),
        &mut io.wbuf,
    );
    let body = read_password(io).await?;
    let mut b = &body[..];
    let mech = read_cstr(&mut b).unwrap_or_default();
    if mech != b"SCRAM-SHA-256" || b.len() < 4 {
        return Err(SessionError::Auth(AuthError::Protocol(
            "expected SCRAM-SHA-256".into(),
        )));
    }
    let len = b.get_i32();
    let first = b.get(..len.max(0) as usize).unwrap_or_default();
    let nonce = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>())
    };
    let (exchange, server_first) = ScramExchange::start(first, verifier, &nonce)?;
    backend::auth(
        Authentication::SASLContinue(Bytes::from(server_first)),
        &mut io.wbuf,
    );
    let body = read_password(io).await?;
    match exchange.finish(&body, verifier, user) {
        Ok((server_final, keys)) => {
            backend::auth(
                Authentication::SASLFinal(Bytes::from(server_final)),
                &mut io.wbuf,
            );
            Ok(Some(keys))
        }
        Err(AuthError::Failed(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_md5_response_matches_only_for_its_own_hash_and_salt() {
        // What libpq sends: "md5" || md5(md5(password || user) || salt), in hex.
        let stored = md5_hex(&[b"secret", b"alice"]);
        let salt = [1, 2, 3, 4];
        let sent = format!("md5{}", md5_hex(&[stored.as_bytes(), &salt]));
        assert!(md5_matches(sent.as_bytes(), &stored, salt));
        assert!(!md5_matches(sent.as_bytes(), &stored, [4, 3, 2, 1]));
        assert!(!md5_matches(
            sent.as_bytes(),
            &md5_hex(&[b"other", b"alice"]),
            salt
        ));
        assert!(!md5_matches(&sent.as_bytes()[..20], &stored, salt));
        assert!(!md5_matches(b"", &stored, salt));
    }
}
