//! Sockets under the pipeline: a TCP connection, plaintext or TLS (either side), behind one
//! type so the session and the server connection read and write it the same way.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{client, server};

/// A connection to a client or a server.
pub enum Stream {
    Plain(TcpStream),
    /// pgdecomp is the TLS server (a client connected to it).
    Accepted(Box<server::TlsStream<TcpStream>>),
    /// pgdecomp is the TLS client (its connection to a PostgreSQL server).
    Connected(Box<client::TlsStream<TcpStream>>),
    /// Taken for an upgrade that failed; every operation errors.
    Closed,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Accepted(_) | Self::Connected(_))
    }

    /// TLS records written into the session but not yet onto the socket (the socket was full):
    /// the caller must poll a flush until this is false, or the peer never gets them.
    pub fn needs_flush(&self) -> bool {
        match self {
            Self::Accepted(s) => s.get_ref().1.wants_write(),
            Self::Connected(s) => s.get_ref().1.wants_write(),
            _ => false,
        }
    }

    /// The TCP socket, for an upgrade to TLS (leaves `Closed` behind until the upgrade is done).
    pub fn take_tcp(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Self::Closed) {
            Self::Plain(tcp) => Ok(tcp),
            other => {
                *self = other;
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is already on (a second SSLRequest)",
                ))
            }
        }
    }

    /// True when the peer has closed or sent something while the connection should be idle
    /// (a pooled server connection); reading what is there is fine, the caller drops it.
    pub fn is_closed_or_dirty(&mut self) -> bool {
        match self {
            Self::Plain(tcp) => {
                let mut probe = [0u8; 1];
                match tcp.try_read(&mut probe) {
                    Ok(_) => true,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                }
            }
            Self::Closed => true,
            tls => {
                let mut probe = [0u8; 64];
                let mut buf = ReadBuf::new(&mut probe);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                Pin::new(tls).poll_read(&mut cx, &mut buf).is_ready()
            }
        }
    }
}

/// A plaintext read: tried first without the runtime's readiness poll (its cooperative budget
/// and waker checks cost more than the read itself on every request), which is polled only when
/// the socket has nothing. The relay loop keeps the budget itself, once per wait.
fn poll_plain_read<B: BufMut>(
    s: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut B,
) -> Poll<io::Result<usize>> {
    loop {
        let mut read = None;
        let tried = s.try_io(Interest::READABLE, || {
            // The room the read is offered (the read itself takes the same chunk).
            let room = buf.chunk_mut().len();
            let n = s.try_read_buf(buf)?;
            read = Some(n);
            // Edge-triggered: a read that left room drained the socket. Saying so here (as
            // tokio's own poll_read does) spares the next read a failed system call. A read
            // that filled the room says nothing: more may be there, and no new edge would come.
            if n > 0 && n < room {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        if let Some(n) = read {
            return Poll::Ready(Ok(n));
        }
        match tried {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(s.poll_read_ready(cx))?,
            Err(e) => return Poll::Ready(Err(e)),
            Ok(()) => return Poll::Ready(Ok(0)),
        }
    }
}

/// A plaintext write, tried before the readiness poll as [`poll_plain_read`] is.
fn poll_plain_write(s: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        match s.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(s.poll_write_ready(cx))?,
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = match self.get_mut() {
            Self::Plain(s) => return poll_plain_read(s, cx, buf).map_ok(|_| ()),
            Self::Accepted(s) => Pin::new(s).poll_read(cx, buf),
            Self::Connected(s) => Pin::new(s).poll_read(cx, buf),
            Self::Closed => return Poll::Ready(Err(closed())),
        };
        // libpq and most drivers close after Terminate without a TLS close_notify; that is
        // their end of the session, not an error.
        match polled {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => poll_plain_write(s, cx, buf),
            Self::Accepted(s) => Pin::new(s).poll_write(cx, buf),
            Self::Connected(s) => Pin::new(s).poll_write(cx, buf),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Accepted(s) => Pin::new(s).poll_flush(cx),
            Self::Connected(s) => Pin::new(s).poll_flush(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Accepted(s) => Pin::new(s).poll_shutdown(cx),
            Self::Connected(s) => Pin::new(s).poll_shutdown(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::Stream;

    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        (Stream::Plain(accepted.unwrap().0), peer.unwrap())
    }

    /// A read that fills its room must leave the socket marked readable: the rest is already
    /// there and no new edge will announce it. (Clearing it would hang this read.)
    #[tokio::test]
    async fn a_read_that_fills_its_room_finds_the_rest_without_a_new_edge() {
        let (mut ours, mut peer) = pair().await;
        peer.write_all(&[7u8; 8192]).await.unwrap();
        // Every edge the bytes make is taken in before the first read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut room = [0u8; 4096];
        let bounded = Duration::from_secs(5);
        let mut got = 0;
        while got < 8192 {
            let n = tokio::time::timeout(bounded, ours.read(&mut room))
                .await
                .expect("the rest of the bytes is read without a new edge")
                .unwrap();
            assert!(n > 0);
            got += n;
        }
        assert_eq!(got, 8192);
    }

    /// After a short read drained the socket, the next read waits, and wakes for new bytes.
    #[tokio::test]
    async fn a_drained_socket_wakes_the_reader_for_new_bytes() {
        let (mut ours, mut peer) = pair().await;
        let mut buf = bytes::BytesMut::with_capacity(1024);
        peer.write_all(b"first").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), ours.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"first");
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peer.write_all(b"second").await.unwrap();
            peer
        });
        let n = tokio::time::timeout(Duration::from_secs(5), ours.read_buf(&mut buf))
            .await
            .expect("woken for the second write")
            .unwrap();
        assert_eq!(&buf[5..5 + n], b"second");
        let mut peer = later.await.unwrap();
        peer.shutdown().await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), ours.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "end of stream");
    }

    /// Writes go through when the socket takes them, and wait (not spin) when it is full.
    #[tokio::test]
    async fn a_full_socket_makes_the_writer_wait_then_finish() {
        let (mut ours, mut peer) = pair().await;
        let block = vec![1u8; 4 << 20];
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        tokio::time::timeout(Duration::from_secs(10), ours.write_all(&block))
            .await
            .expect("the write finishes once the peer reads")
            .unwrap();
        ours.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), 4 << 20);
    }
}
