//! PostgreSQL message framing over one TCP stream, read into a buffer the
//! caller borrows from: a message's body is handed out as a slice of the
//! read buffer, never copied.
//!
//! Memory: the buffer grows only to hold one message, so to the largest
//! row a `COPY` sends (as any client's would); it starts at 256 KiB.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PgWireError;

const INITIAL_BUFFER: usize = 256 << 10;
/// A message longer than this is a broken stream, not a row: the server
/// never sends one field value over 1 GiB.
const MAX_MESSAGE: usize = 1 << 30;

/// Type and body length of the message whose 5-byte header is `h`; the
/// length on the wire counts itself, the body does not.
fn header(h: &[u8]) -> Result<(u8, usize), PgWireError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(PgWireError::Protocol(format!(
            "message '{}' announces an impossible length {len}",
            char::from(h[0])
        )));
    }
    Ok((h[0], len - 4))
}

pub struct Frames {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Where in `buf` the last message's body lies.
    body: std::ops::Range<usize>,
}

impl Frames {
    pub fn new(stream: TcpStream) -> Self {
        Frames {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            body: 0..0,
        }
    }

    /// Makes at least `n` unconsumed bytes available in `buf`.
    async fn fill(&mut self, n: usize) -> Result<(), PgWireError> {
        if self.end - self.start >= n {
            return Ok(());
        }
        if self.start + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if n > self.buf.len() {
                self.buf.resize(n.max(self.buf.len() * 2), 0);
            }
        }
        while self.end - self.start < n {
            let read = self
                .stream
                .read(&mut self.buf[self.end..])
                .await
                .map_err(PgWireError::Io)?;
            if read == 0 {
                return Err(PgWireError::Closed);
            }
            self.end += read;
        }
        Ok(())
    }

    /// Reads the next message; returns its type byte. Its body is
    /// [`Frames::body`] until the next call. (Type and body are separate
    /// calls so that a loop can skip a message and read on while another
    /// arm returns the body it borrows.)
    pub async fn advance(&mut self) -> Result<u8, PgWireError> {
        // Most rows are whole in the buffer already: take them without
        // going through the reads below.
        if self.end - self.start >= 5 {
            let (kind, len) = header(&self.buf[self.start..self.start + 5])?;
            let at = self.start + 5;
            if at + len <= self.end {
                self.body = at..at + len;
                self.start = at + len;
                return Ok(kind);
            }
        }
        self.fill(5).await?;
        let (kind, len) = header(&self.buf[self.start..self.start + 5])?;
        self.start += 5;
        self.fill(len).await?;
        self.body = self.start..self.start + len;
        self.start += len;
        Ok(kind)
    }

    /// The body of the message [`Frames::advance`] read last.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// Sends `bytes` (whole frontend messages) and flushes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), PgWireError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(PgWireError::Io)?;
        self.stream.flush().await.map_err(PgWireError::Io)
    }

    pub async fn shutdown(&mut self) {
        drop(self.stream.shutdown().await);
    }
}
