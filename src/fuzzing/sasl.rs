//! Fuzz target for SCRAM-SHA-256 (beside the login in `session::auth`): auth-file verifiers and
//! the client's messages against the server side in `auth::scram`.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::Reader;
use crate::auth::scram::{ScramExchange, ScramVerifier};
use crate::auth::{Secret, UserList};

const SCRAM_PASSWORD: &str = "pencil";

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// RFC 5802 Hi() with one iteration, so a full exchange costs microseconds.
fn salted(password: &[u8], salt: &[u8]) -> [u8; 32] {
    let mut msg = salt.to_vec();
    msg.extend_from_slice(&1u32.to_be_bytes());
    hmac(password, &msg)
}

fn fast_verifier() -> &'static ScramVerifier {
    static V: OnceLock<ScramVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let salt = b"fuzz-salt".to_vec();
        let sp = salted(SCRAM_PASSWORD.as_bytes(), &salt);
        ScramVerifier::new(
            1,
            salt,
            Sha256::digest(hmac(&sp, b"Client Key")).into(),
            hmac(&sp, b"Server Key"),
        )
    })
}

/// Overwrites, truncates or extends `msg` as the input says; true when it changed.
fn mutate(msg: &mut Vec<u8>, r: &mut Reader) -> bool {
    let mut changed = false;
    for _ in 0..usize::from(r.byte() % 4) {
        let at = usize::from(r.byte());
        let b = r.byte();
        match r.byte() % 3 {
            0 if !msg.is_empty() => {
                let at = at % msg.len();
                changed |= msg[at] != b;
                msg[at] = b;
            }
            1 => {
                changed |= at < msg.len();
                msg.truncate(at);
            }
            _ => {
                msg.insert(at.min(msg.len()), b);
                changed = true;
            }
        }
    }
    changed
}

/// SCRAM: auth-file verifiers, then client-first and client-final messages against the server
/// side. Mode 0 sends raw bytes; mode 1 runs a correct client (an independent implementation
/// here) whose messages are then mutated: unmutated, the right password must succeed and a
/// wrong one fail.
pub fn scram(data: &[u8]) {
    let mut r = Reader::new(data);
    let mode = r.byte() % 2;
    let userlist = String::from_utf8_lossy(r.until_nul());
    let mut verifier = fast_verifier().clone();
    if let Ok(list) = UserList::parse(&userlist, "fuzz") {
        if let Some(Secret::Scram(v)) = list.get("u").map(|e| &e.secret) {
            verifier = v.clone();
        }
    }
    let server_nonce = "srvNONCE+/0123456789";
    if mode == 0 {
        let first = r.until_nul();
        let last = r.rest();
        if let Ok((ex, _)) = ScramExchange::start(first, &verifier, server_nonce) {
            let _ = ex.finish(last, &verifier, "u");
        }
        return;
    }
    let verifier = fast_verifier();
    let password = match r.byte() % 4 {
        0 => r.chunk().to_vec(),
        _ => SCRAM_PASSWORD.as_bytes().to_vec(),
    };
    let nonce: String = r
        .chunk()
        .iter()
        .map(|b| char::from(b'!' + b % 90))
        .filter(|&c| c != ',')
        .collect();
    let nonce = if nonce.is_empty() {
        "cNonce".into()
    } else {
        nonce
    };
    let bare = format!("n=,r={nonce}");
    let mut first = format!("n,,{bare}").into_bytes();
    let mut changed = mutate(&mut first, &mut r);
    let Ok((ex, server_first)) = ScramExchange::start(&first, verifier, server_nonce) else {
        assert!(changed, "a well-formed client-first was refused");
        return;
    };
    let Some(full_nonce) = server_first
        .split(',')
        .next()
        .and_then(|a| a.strip_prefix("r="))
    else {
        panic!("server-first without a nonce: {server_first}");
    };
    let without_proof = format!("c=biws,r={full_nonce}");
    let auth = format!("{bare},{server_first},{without_proof}");
    let sp = salted(&password, &verifier.salt);
    let client_key = hmac(&sp, b"Client Key");
    let signature = hmac(&Sha256::digest(client_key), auth.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let mut last = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
    changed |= mutate(&mut last, &mut r);
    let result = ex.finish(&last, verifier, "u");
    if !changed {
        let right = password == SCRAM_PASSWORD.as_bytes();
        assert_eq!(result.is_ok(), right, "password right: {right}");
    }
}
