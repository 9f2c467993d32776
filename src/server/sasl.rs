//! Pipeline's last step (… → pool → **server**): the SCRAM-SHA-256 client pgdecomp runs to log
//! in to a server, with a plaintext password (postgres-protocol's client) or with the keys a
//! client proved at its own login (SCRAM passthrough).

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::ServerCredential;
use crate::auth::scram_client::ScramClient;

/// One SCRAM exchange in progress.
pub(super) enum Sasl {
    Password(Box<ScramSha256>),
    Keys(ScramClient),
}

impl Sasl {
    /// Starts with what `credential` holds; returns the client-first-message.
    pub fn start(credential: &ServerCredential) -> Result<(Self, Vec<u8>), String> {
        match credential {
            ServerCredential::Plain(pw) => {
                let client = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                let first = client.message().to_vec();
                Ok((Self::Password(Box::new(client)), first))
            }
            ServerCredential::ScramKeys(keys) => {
                let (client, first) = ScramClient::start(keys.clone());
                Ok((Self::Keys(client), first.into_bytes()))
            }
            _ => Err("server wants SCRAM: needs a password ([server] or the auth file), or a SCRAM verifier in the auth file and a client that logged in with it".into()),
        }
    }

    /// The client-final-message answering `server_first`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Self::Password(c) => {
                c.update(server_first).map_err(|e| e.to_string())?;
                Ok(c.message().to_vec())
            }
            Self::Keys(c) => c
                .client_final(server_first)
                .map(String::into_bytes)
                .map_err(|e| e.to_string()),
        }
    }

    /// Checks the server-final-message.
    pub fn finish(&mut self, server_final: &[u8]) -> Result<(), String> {
        match self {
            Self::Password(c) => c.finish(server_final).map_err(|e| e.to_string()),
            Self::Keys(c) => c.verify(server_final).map_err(|e| e.to_string()),
        }
    }
}
