//! MySQL packet framing over one TCP stream, read into a buffer the caller
//! borrows from: a packet's payload is handed out as a slice of the read
//! buffer, never copied, unless it spans several wire packets (payloads of
//! 16 MiB and more), which are joined in a separate buffer.
//!
//! Memory: the read buffer grows only to hold one wire packet (at most
//! 16 MiB + header); the join buffer to the largest row, as any client's.

use tokio::io::AsyncWriteExt;

use super::WireError;
use crate::readbuf::ReadBuf;
use crate::tls::Stream;

/// Largest payload one wire packet carries; a payload this long continues
/// in the next packet.
const MAX_PAYLOAD: usize = 0xFF_FFFF;
const INITIAL_BUFFER: usize = 256 << 10;
/// A join buffer above this is released after use instead of kept.
const KEEP_JOINED: usize = 32 << 20;
/// The longest payload a server may send (MariaDB's and MySQL's largest
/// `max_allowed_packet`); a longer chain of packets is a broken or hostile
/// stream, refused before it is buffered.
pub const MAX_JOINED: usize = 1 << 30;

/// The payload length a 4-byte packet header announces (3 bytes, little-endian).
fn payload_len(h: &[u8]) -> usize {
    usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16
}

pub struct PacketStream {
    stream: Stream,
    rb: ReadBuf,
    joined: Vec<u8>,
    /// Packets framed but not yet sent: they go with the next flush.
    pending: Vec<u8>,
    /// Sequence number the next packet (read or written) must carry.
    seq: u8,
}

impl PacketStream {
    pub fn new(stream: Stream) -> Self {
        PacketStream {
            stream,
            rb: ReadBuf::new(INITIAL_BUFFER),
            joined: Vec::new(),
            pending: Vec::new(),
            seq: 0,
        }
    }

    /// Starts a new command: its first packet has sequence number 0.
    pub fn reset_seq(&mut self) {
        self.seq = 0;
    }

    /// Reads one wire packet's header; returns its payload length.
    async fn header(&mut self) -> Result<usize, WireError> {
        self.rb.fill(&mut self.stream, 4).await?;
        let h = &self.rb.buf[self.rb.start..self.rb.start + 4];
        let len = payload_len(h);
        if h[3] != self.seq {
            return Err(WireError::Protocol(format!(
                "packet out of order (sequence {} where {} was due)",
                h[3], self.seq
            )));
        }
        self.seq = self.seq.wrapping_add(1);
        self.rb.start += 4;
        Ok(len)
    }

    /// The next payload. It borrows the stream until the next call.
    pub async fn read(&mut self) -> Result<&[u8], WireError> {
        // Most rows are whole in the buffer already: take them without
        // going through the reads below (their futures showed in profiles).
        if let Some(h) = self.rb.buf.get(self.rb.start..self.rb.start + 4) {
            let len = payload_len(h);
            let at = self.rb.start + 4;
            if h[3] == self.seq && len < MAX_PAYLOAD && at + len <= self.rb.end {
                self.seq = self.seq.wrapping_add(1);
                self.rb.start = at + len;
                return Ok(&self.rb.buf[at..at + len]);
            }
        }
        let len = self.header().await?;
        self.rb.fill(&mut self.stream, len).await?;
        if len < MAX_PAYLOAD {
            let at = self.rb.start;
            self.rb.start += len;
            return Ok(&self.rb.buf[at..at + len]);
        }
        if self.joined.capacity() > KEEP_JOINED {
            self.joined = Vec::new();
        }
        self.joined.clear();
        let mut len = len;
        loop {
            self.joined
                .extend_from_slice(&self.rb.buf[self.rb.start..self.rb.start + len]);
            self.rb.start += len;
            if len < MAX_PAYLOAD {
                return Ok(&self.joined);
            }
            len = self.header().await?;
            if self.joined.len() + len > MAX_JOINED {
                return Err(WireError::Protocol(format!(
                    "a payload longer than {MAX_JOINED} bytes (the largest max_allowed_packet)"
                )));
            }
            self.rb.fill(&mut self.stream, len).await?;
        }
    }

    /// Sends `payload` as the next packet(s), after any queued ones, and flushes.
    pub async fn write(&mut self, payload: &[u8]) -> Result<(), WireError> {
        self.queue(payload);
        self.flush().await
    }

    /// Frames `payload` as the next packet(s) without sending it: it goes
    /// out with the next [`Self::flush`] (or write), in the same system call.
    pub fn queue(&mut self, payload: &[u8]) {
        let out = &mut self.pending;
        let mut rest = payload;
        loop {
            let len = rest.len().min(MAX_PAYLOAD);
            // `len` < 2^24: the three low bytes are the whole value.
            out.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
            out.push(self.seq);
            self.seq = self.seq.wrapping_add(1);
            out.extend_from_slice(&rest[..len]);
            rest = &rest[len..];
            if len < MAX_PAYLOAD {
                break;
            }
        }
    }

    /// Sends every queued packet.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        let sent = self.stream.write_all(&self.pending).await;
        self.pending.clear();
        if self.pending.capacity() > KEEP_JOINED {
            self.pending = Vec::new();
        }
        sent.map_err(WireError::Io)?;
        self.stream.flush().await.map_err(WireError::Io)
    }

    /// Gives the stream back (to start TLS on it); nothing may be buffered.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// The sequence number the next packet carries.
    pub fn seq(&self) -> u8 {
        self.seq
    }

    pub fn set_seq(&mut self, seq: u8) {
        self.seq = seq;
    }

    pub async fn shutdown(&mut self) {
        drop(self.stream.shutdown().await);
    }
}
