//! Sockets under the pipeline: a TCP connection, plaintext or TLS (either side), behind one
//! type so the session and the server connection read and write it the same way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = match self.get_mut() {
            Self::Plain(s) => return Pin::new(s).poll_read(cx, buf),
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
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
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
