//! The relay loop's one wait (… → pool → **server** and back): the first of client bytes,
//! server bytes, either side writable, or the attachment's timer.

use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use super::client::Client;
use super::outbox::Outbox;
use crate::server::ServerConn;

/// What one wait of the relay loop brought.
pub enum Event {
    ClientRead(std::io::Result<usize>),
    ServerRead(std::io::Result<usize>),
    ClientWrote(std::io::Result<()>),
    ServerWrote(std::io::Result<()>),
    Expired,
}

/// Waits for the first of: client writable, server writable, client bytes, server bytes.
/// `reads`: whether to read the client, whether to read the server, and whether server bytes
/// are looked for before client bytes. Each
/// operation is polled through a short-lived future on the one stream, so a TLS stream (which
/// cannot be split into halves) serves reads and writes alike. A TLS session with records still
/// buffered is flushed as part of its write.
pub async fn next_event(
    c: &mut Client,
    sc: &mut ServerConn,
    out: &mut Outbox,
    reads: (bool, bool, bool),
    mut timer: Option<Pin<&mut tokio::time::Sleep>>,
) -> Event {
    std::future::poll_fn(|cx| {
        // The plaintext reads and writes below skip the runtime's per-operation budget: it is
        // taken here, once per wait, so a client that always has bytes still yields in turn.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let ev = poll_event(c, sc, out, reads, &mut timer, cx);
        if ev.is_ready() {
            coop.made_progress();
        }
        ev
    })
    .await
}

/// One poll of the wait, in the order `next_event` gives.
fn poll_event(
    c: &mut Client,
    sc: &mut ServerConn,
    out: &mut Outbox,
    (read_client, read_server, server_first): (bool, bool, bool),
    timer: &mut Option<Pin<&mut tokio::time::Sleep>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Event> {
    use std::future::Future;
    use std::task::Poll;
    if let Some(t) = timer.as_mut() {
        if t.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Expired);
        }
    }
    // Writes first: a socket nearly always takes them at once, and a read polled before
    // that finds nothing yet costs a readiness check and a waker registration each time.
    if !c.io.wbuf.is_empty() || c.io.stream.needs_flush() {
        let mut f = std::pin::pin!(write_some(&mut c.io.stream, &mut c.io.wbuf));
        if let Poll::Ready(r) = f.as_mut().poll(cx) {
            return Poll::Ready(Event::ClientWrote(r));
        }
    }
    if !out.is_empty() || sc.stream.needs_flush() {
        let wrote = std::pin::pin!(write_outbox(&mut sc.stream, out)).poll(cx);
        match wrote {
            // All sent and nothing of the client's left to forward: the relay loop would
            // only come back here, so the reads are polled in this same turn.
            Poll::Ready(Ok(())) if all_sent(sc, out) && c.io.rbuf.is_empty() => {}
            Poll::Ready(r) => return Poll::Ready(Event::ServerWrote(r)),
            Poll::Pending => {}
        }
    }
    // The side the client waits on first: when its reply has come, the other side's
    // readiness check (and waker registration) is skipped for this turn.
    if server_first && read_server {
        if let Poll::Ready(r) = poll_read(&mut sc.stream, &mut sc.rbuf, cx) {
            return Poll::Ready(Event::ServerRead(r));
        }
    }
    if read_client {
        if let Poll::Ready(r) = poll_read(&mut c.io.stream, &mut c.io.rbuf, cx) {
            return Poll::Ready(Event::ClientRead(r));
        }
    }
    if !server_first && read_server {
        if let Poll::Ready(r) = poll_read(&mut sc.stream, &mut sc.rbuf, cx) {
            return Poll::Ready(Event::ServerRead(r));
        }
    }
    Poll::Pending
}

/// Nothing left for the server: the outbox is empty and no TLS record waits.
fn all_sent(sc: &ServerConn, out: &Outbox) -> bool {
    out.is_empty() && !sc.stream.needs_flush()
}

/// One read of what `stream` has now into `buf`.
fn poll_read(
    stream: &mut crate::net::Stream,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<std::io::Result<usize>> {
    use std::future::Future;
    std::pin::pin!(stream.read_buf(buf)).poll(cx)
}

/// Writes what the socket takes now (at least one byte, or the pending TLS records).
async fn write_some(stream: &mut crate::net::Stream, buf: &mut BytesMut) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if !buf.is_empty() {
        stream.write_buf(buf).await?;
    }
    if stream.needs_flush() {
        stream.flush().await?;
    }
    Ok(())
}

/// Writes what the server socket takes now from the outbox (or the pending TLS records).
async fn write_outbox(stream: &mut crate::net::Stream, out: &mut Outbox) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if !out.is_empty() {
        let n = stream.write(out.chunk()).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        out.advance(n);
    }
    if stream.needs_flush() {
        stream.flush().await?;
    }
    Ok(())
}
