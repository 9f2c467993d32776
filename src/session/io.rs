//! The client socket with its read and write buffers (the client end of the pipeline).

use std::task::Poll;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::{spare, SessionError};
use crate::net::Stream;
use crate::protocol::backend::PgError;
use crate::protocol::frame::{decode_frame, Frame, FrameError};

/// The read buffer a client starts with.
const READ_BUFFER: usize = spare::SIZE;

/// A message longer than this leaves a fresh read buffer behind it.
const SHRINK_AFTER: usize = 256 * 1024;

/// A message over `max_message_size` is a limit like the others: its own error and counter.
fn too_long(e: FrameError) -> SessionError {
    match e {
        FrameError::TooLong { tag, len, max } => SessionError::Limit {
            limit: "max_message_size",
            error: PgError::fatal(
                "54000",
                format!(
                    "message '{}' of {len} bytes exceeds max_message_size ({max} bytes)",
                    tag as char
                ),
            ),
        },
        other => SessionError::Frame(other),
    }
}

pub struct ClientIo {
    pub stream: Stream,
    pub rbuf: BytesMut,
    /// Bytes waiting to be written to the client.
    pub wbuf: BytesMut,
    pub max_message: usize,
}

/// A client that leaves gives its buffers back too: the next login takes them rather than
/// two fresh allocations (most logins are followed by a logout, with `-C` one per transaction).
impl Drop for ClientIo {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.rbuf));
        spare::give(std::mem::take(&mut self.wbuf));
    }
}

impl ClientIo {
    pub fn new(stream: TcpStream, max_message: usize) -> Self {
        Self {
            stream: Stream::Plain(stream),
            rbuf: spare::take(),
            wbuf: spare::take(),
            max_message,
        }
    }

    /// Reads more bytes; `Ok(false)` on a clean EOF. A parked client waits for the socket to
    /// be readable before it takes its buffers back.
    pub async fn fill(&mut self) -> Result<bool, SessionError> {
        if self.rbuf.capacity() == 0 {
            if let Stream::Plain(s) = &self.stream {
                // Readiness already known needs no runtime poll (the wake-up's poll finds it
                // so); else the socket's own reader slot, as a read uses (`readable()` queues a
                // waiter under a lock instead, which cost 400 instructions on every request).
                std::future::poll_fn(|cx| match s.try_io(Interest::READABLE, || Ok(())) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(_) => s.poll_read_ready(cx),
                })
                .await?;
            }
            self.rbuf = spare::take();
            if self.wbuf.capacity() == 0 {
                self.wbuf = spare::take();
            }
        }
        Ok(self.stream.read_buf(&mut self.rbuf).await? > 0)
    }

    /// Between requests, with nothing read ahead or left to write: gives both buffers back, so
    /// an idle client holds none (TLS streams keep theirs: readiness of the socket says
    /// nothing about a whole TLS record).
    pub fn park(&mut self) {
        if self.rbuf.is_empty() && self.wbuf.is_empty() && matches!(self.stream, Stream::Plain(_)) {
            spare::give(std::mem::take(&mut self.rbuf));
            spare::give(std::mem::take(&mut self.wbuf));
        }
    }

    /// The next complete frame already buffered, if any.
    pub fn buffered_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        let frame = decode_frame(&mut self.rbuf, self.max_message).map_err(too_long)?;
        if frame.as_ref().is_some_and(|f| f.raw.len() > SHRINK_AFTER) {
            // The read buffer still shares the long message's allocation: start a small one,
            // so the memory goes as soon as the message has been forwarded.
            let mut fresh = BytesMut::with_capacity(READ_BUFFER.max(self.rbuf.len()));
            fresh.extend_from_slice(&self.rbuf);
            self.rbuf = fresh;
        }
        Ok(frame)
    }

    /// Reads until one whole frame is available; `Ok(None)` when the client hung up.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, SessionError> {
        loop {
            if let Some(f) = self.buffered_frame()? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Sends what is buffered (a final ErrorResponse), then half-closes and reads what the
    /// client still sends for a moment before the socket is dropped: closing with unread input
    /// makes the kernel send a reset, and the client would lose the error it was sent.
    pub async fn close_gracefully(&mut self) {
        const DRAIN: usize = 64 * 1024;
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
        let mut drained = 0;
        let drain = async {
            while drained < DRAIN {
                // Into the read buffer, emptied each time: a sink array would sit in every
                // client task's state for the whole session.
                self.rbuf.clear();
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), drain).await;
    }

    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        if self.stream.needs_flush() {
            self.stream.flush().await?;
        }
        Ok(())
    }
}
