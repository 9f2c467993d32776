//! Login: SSL refusal, cancel dispatch, startup parameters, database and user checks,
//! authentication and the welcome (ParameterStatus, BackendKeyData, ReadyForQuery).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BufMut;
use pgwire::messages::startup::Authentication;

use super::client::Login;
use super::io::ClientIo;
use super::params::ClientParams;
use super::seat::Seat;
use super::SessionError;
use crate::auth::scram_client::ScramKeys;
use crate::auth::Secret;
use crate::config::Snapshot;
use crate::pool::{checkout, PoolKey, Welcome};
use crate::protocol::backend::{self, PgError};
use crate::protocol::startup::{decode_startup, encode_negotiate, StartupParams, StartupRequest};
use crate::route::Target;
use crate::server::{ServerCredential, ServerSpec};
use crate::shared::logins::PendingLogin;
use crate::shared::Shared;

async fn read_startup(
    io: &mut ClientIo,
    shared: &Shared,
    snap: &Snapshot,
) -> Result<Option<StartupParams>, SessionError> {
    loop {
        match decode_startup(&mut io.rbuf)? {
            // Boxed, as are the other rare steps below: inline, the login future every
            // connection allocates (and copies into its box) would carry their largest state.
            Some(StartupRequest::Ssl) => Box::pin(start_tls(io, snap)).await?,
            Some(StartupRequest::Gss) => {
                // No GSSAPI encryption: 'N' tells the client to continue without it.
                io.wbuf.put_u8(b'N');
                io.flush().await?;
            }
            Some(StartupRequest::Cancel { pid, secret }) => {
                Box::pin(shared.cancels.cancel(pid, secret)).await;
                return Ok(None);
            }
            Some(StartupRequest::Startup(p)) => return Ok(Some(p)),
            None => {
                if !io.fill().await? {
                    return Ok(None);
                }
            }
        }
    }
}

/// Answers SSLRequest: 'S' and a TLS handshake when client TLS is on, else 'N' (the client
/// continues in plaintext or gives up).
async fn start_tls(io: &mut ClientIo, snap: &Snapshot) -> Result<(), SessionError> {
    let config = match &snap.client_tls.config {
        Some(config) if !io.stream.is_tls() => config.clone(),
        _ => {
            io.wbuf.put_u8(b'N');
            return io.flush().await;
        }
    };
    if !io.rbuf.is_empty() {
        // Bytes sent before the handshake would be taken as if they came encrypted.
        return Err(fatal(
            "08P01",
            "received unencrypted data after SSL request",
        ));
    }
    io.wbuf.put_u8(b'S');
    io.flush().await?;
    let tcp = io.stream.take_tcp()?;
    let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    io.stream = crate::net::Stream::Accepted(Box::new(tls));
    Ok(())
}

/// The user and secret pgdecomp logs in to servers with on behalf of `user`: `[server]`, else the
/// user's own secret from the auth file; for a SCRAM verifier, the keys the client's own login
/// proved (SCRAM passthrough).
pub fn server_credential(
    snap: &Snapshot,
    user: &str,
    proved: Option<ScramKeys>,
) -> (String, ServerCredential) {
    if let Some(u) = &snap.server_user {
        let cred = snap
            .server_password
            .clone()
            .map_or(ServerCredential::None, ServerCredential::Plain);
        return (u.clone(), cred);
    }
    let cred = match snap.users.get(user).map(|e| &e.secret) {
        Some(Secret::Plain(p)) => ServerCredential::Plain(p.clone()),
        Some(Secret::Md5(h)) => ServerCredential::Md5Hash(h.clone()),
        Some(Secret::Scram(_)) => {
            proved.map_or(ServerCredential::None, ServerCredential::ScramKeys)
        }
        None => ServerCredential::None,
    };
    (user.to_string(), cred)
}

pub async fn handshake<'a>(
    io: &mut ClientIo,
    shared: &'a Arc<Shared>,
    snap: &Snapshot,
    peer: SocketAddr,
    pending: &PendingLogin<'_>,
) -> Result<Option<Accepted<'a>>, SessionError> {
    let Some(startup) = read_startup(io, shared, snap).await? else {
        return Ok(None);
    };
    if snap.client_tls.mode == crate::config::ClientTlsMode::Require && !io.stream.is_tls() {
        return Err(fatal("28000", "SSL required (client_tls_mode = require)"));
    }
    if startup.needs_negotiation() {
        // Sent ahead of the authentication request, as PostgreSQL does.
        encode_negotiate(&startup.protocol_options, &mut io.wbuf);
    }
    let user = startup
        .get("user")
        .ok_or_else(|| {
            fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            )
        })?
        .to_string();
    let database = startup.get("database").unwrap_or(&user).to_string();
    if database == crate::ADMIN_DB {
        if !snap.admin_users.contains(&user) {
            return Err(fatal(
                "28000",
                format!("user \"{user}\" is not an admin user (admin_users)"),
            ));
        }
        authenticate(io, shared, snap, &user, peer).await?;
        pending.leave();
        admin_welcome(io);
        io.flush().await?;
        return Ok(Some(Accepted::Admin { user }));
    }
    let Some(db) = snap.databases.get(&database).cloned() else {
        return Err(fatal(
            "3D000",
            format!("database \"{database}\" does not exist"),
        ));
    };
    let seat = Seat::take(shared, snap, &user, &database)?;
    let proved = authenticate(io, shared, snap, &user, peer).await?;
    // From here the login waits on servers, not on its client: it can no longer be evicted.
    pending.leave();
    let (server_user, credential) = server_credential(snap, &user, proved);
    // Any main server gives the same parameter list: the primary, or during a switchover a
    // replica (through a replica pool, which does not insist on a primary).
    let view = shared.topology.view();
    let main = view.cluster(crate::topology::ClusterId::Main);
    let Some((addr, target)) = main
        .writer()
        .map(|n| (n.addr.clone(), Target::Main))
        .or_else(|| {
            main.nodes
                .iter()
                .find(|n| n.readable())
                .map(|n| (n.addr.clone(), Target::MainReplica))
        })
    else {
        return Err(fatal(
            "08006",
            "pgdecomp knows no reachable server of the main cluster",
        ));
    };
    let spec = ServerSpec {
        addr,
        dbname: db.dbname.clone(),
        user: server_user,
        credential,
        tls: snap.server_tls.clone(),
    };
    let welcome = welcome(shared, &spec, target).await?;
    let params =
        ClientParams::from_startup(startup.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    backend::auth(Authentication::Ok, &mut io.wbuf);
    for (k, v) in welcome.iter() {
        let v = params.get(k).unwrap_or(v);
        backend::parameter_status(k, v, &mut io.wbuf);
    }
    let (cancel_key, cancel_slot) = shared.cancels.register();
    backend::backend_key_data(cancel_key.0, cancel_key.1, &mut io.wbuf);
    backend::ready_for_query(b'I', &mut io.wbuf);
    io.flush().await?;
    let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(client = id, %peer, %user, %database, "client logged in");
    Ok(Some(Accepted::Client(
        Box::new(Login {
            id,
            user,
            database,
            db,
            params,
            spec,
            cancel_key,
            cancel_slot,
            snap: shared.config.load_full(),
        }),
        seat,
    )))
}

/// Authenticates `user`; a wrong password from an address that failed repeatedly is answered
/// only after a delay, while it stays evictable like any connection waiting on its client.
async fn authenticate(
    io: &mut ClientIo,
    shared: &Shared,
    snap: &Snapshot,
    user: &str,
    peer: SocketAddr,
) -> Result<Option<ScramKeys>, SessionError> {
    match super::auth::authenticate(io, &snap.users, snap.auth_type, user).await {
        Err(e @ SessionError::Auth(crate::auth::AuthError::Failed(_))) => {
            let delay = shared.logins.failed(peer.ip());
            if !delay.is_zero() {
                shared.metrics.login_delays.inc();
                tokio::time::sleep(delay).await;
            }
            Err(e)
        }
        other => other,
    }
}

/// Who logged in. A client holds its seat (see `seat.rs`) until it registers.
pub enum Accepted<'a> {
    Client(Box<Login>, Seat<'a>),
    Admin { user: String },
}

fn admin_welcome(io: &mut ClientIo) {
    backend::auth(Authentication::Ok, &mut io.wbuf);
    for (k, v) in [
        ("server_version", "15.0 (pgdecomp admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        backend::parameter_status(k, v, &mut io.wbuf);
    }
    backend::backend_key_data(0, 0, &mut io.wbuf);
    backend::ready_for_query(b'I', &mut io.wbuf);
}

fn fatal(code: &'static str, message: impl Into<String>) -> SessionError {
    SessionError::Fatal(PgError::fatal(code, message))
}

/// The server's ParameterStatus list for this pool, learned from its first connection.
async fn welcome(
    shared: &Shared,
    spec: &ServerSpec,
    target: Target,
) -> Result<Welcome, SessionError> {
    if let Some(w) = shared.pools.load().welcome(spec) {
        return Ok(w);
    }
    let pool = shared.pools.load().pool(&PoolKey {
        target,
        spec: spec.clone(),
    });
    let since = std::time::Instant::now();
    let conn = Box::pin(checkout(&pool, target, &mut None, since, true)).await?;
    let w = conn.welcome.clone();
    shared.pools.load().set_welcome(spec, w.clone());
    Ok(w)
}
