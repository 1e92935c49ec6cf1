//! The read buffer both of shardcut's own protocol clients (`mysql::wire`,
//! `postgres::wire`) frame messages in: bytes are read into one buffer and
//! messages handed out as slices of it, so a row is never copied on its way
//! from the socket to the chunk buffer.
//!
//! Memory: the buffer grows only when one message does not fit, to that
//! message's length (so to the largest row, as any client's would).

use tokio::io::{AsyncRead, AsyncReadExt};

pub struct ReadBuf {
    pub buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    pub start: usize,
    pub end: usize,
}

#[derive(Debug)]
pub enum FillError {
    Io(std::io::Error),
    /// The peer closed the connection before `n` bytes arrived.
    Closed,
}

impl ReadBuf {
    pub fn new(capacity: usize) -> Self {
        ReadBuf {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// Makes at least `n` unconsumed bytes available in `buf`, moving the
    /// unconsumed rest to the front (or growing the buffer) when they would
    /// not fit behind it.
    pub async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        n: usize,
    ) -> Result<(), FillError> {
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
            let read = stream
                .read(&mut self.buf[self.end..])
                .await
                .map_err(FillError::Io)?;
            if read == 0 {
                return Err(FillError::Closed);
            }
            self.end += read;
        }
        Ok(())
    }
}
