//! PostgreSQL message framing over one TCP stream, read into a buffer the
//! caller borrows from: a message's body is handed out as a slice of the
//! read buffer, never copied.
//!
//! Memory: the buffer grows only to hold one message, so to the largest
//! row a `COPY` sends (as any client's would); it starts at 256 KiB.

use tokio::io::AsyncWriteExt;

use super::PgWireError;
use crate::readbuf::ReadBuf;
use crate::tls::Stream;

const INITIAL_BUFFER: usize = 256 << 10;
/// A message longer than this is a broken stream, not a row: the server
/// never sends one field value over 1 GiB.
const MAX_MESSAGE: usize = 1 << 30;

/// Type and body length of the message whose 5-byte header is `h`; the
/// length on the wire counts itself, the body does not.
pub(crate) fn header(h: &[u8]) -> Result<(u8, usize), PgWireError> {
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
    stream: Stream,
    rb: ReadBuf,
    /// Where in `buf` the last message's body lies.
    body: std::ops::Range<usize>,
}

impl Frames {
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    pub fn new(stream: Stream) -> Self {
        Frames {
            stream,
            rb: ReadBuf::new(INITIAL_BUFFER),
            body: 0..0,
        }
    }

    /// Reads the next message; returns its type byte. Its body is
    /// [`Frames::body`] until the next call. (Type and body are separate
    /// calls so that a loop can skip a message and read on while another
    /// arm returns the body it borrows.)
    pub async fn advance(&mut self) -> Result<u8, PgWireError> {
        // Most rows are whole in the buffer already: take them without
        // going through the reads below.
        if self.rb.end - self.rb.start >= 5 {
            let (kind, len) = header(&self.rb.buf[self.rb.start..self.rb.start + 5])?;
            let at = self.rb.start + 5;
            if at + len <= self.rb.end {
                self.body = at..at + len;
                self.rb.start = at + len;
                return Ok(kind);
            }
        }
        self.rb.fill(&mut self.stream, 5).await?;
        let (kind, len) = header(&self.rb.buf[self.rb.start..self.rb.start + 5])?;
        self.rb.start += 5;
        self.rb.fill(&mut self.stream, len).await?;
        self.body = self.rb.start..self.rb.start + len;
        self.rb.start += len;
        Ok(kind)
    }

    /// The body of the message [`Frames::advance`] read last.
    pub fn body(&self) -> &[u8] {
        &self.rb.buf[self.body.clone()]
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
