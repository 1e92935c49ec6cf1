//! Reading the protocol's little-endian integers and strings from a
//! payload. Every read is bounds-checked: a short packet is `None`, which
//! callers turn into a protocol error naming what they were reading.

pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(drop)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A length-encoded integer; `0xFB` (NULL in a text row) is `None` too,
    /// callers that allow NULL test for it first.
    pub fn lenenc(&mut self) -> Option<u64> {
        match self.u8()? {
            b @ 0..=0xFA => Some(u64::from(b)),
            0xFC => self.u16().map(u64::from),
            0xFD => {
                let b: [u8; 3] = self.array()?;
                Some(u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16)
            }
            0xFE => self.u64(),
            _ => None,
        }
    }

    pub fn lenenc_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.lenenc()?).ok()?;
        self.take(n)
    }

    /// Bytes up to a NUL, which is consumed; the whole rest if there is none.
    pub fn until_nul(&mut self) -> &'a [u8] {
        let rest = self.rest();
        match memchr::memchr(0, rest) {
            Some(i) => {
                self.pos += i + 1;
                &rest[..i]
            }
            None => {
                self.pos = self.data.len();
                rest
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_encoded_integers() {
        let data = [
            0xFA, 0xFC, 0x34, 0x12, 0xFD, 1, 2, 3, 0xFE, 1, 0, 0, 0, 0, 0, 0, 0x80, 0xFC, 0x01,
        ];
        let mut c = Cursor::new(&data);
        assert_eq!(c.lenenc(), Some(0xFA));
        assert_eq!(c.lenenc(), Some(0x1234));
        assert_eq!(c.lenenc(), Some(0x030201));
        assert_eq!(c.lenenc(), Some(0x8000_0000_0000_0001));
        // Truncated: two bytes promised, one there.
        assert_eq!(c.lenenc(), None);
    }

    #[test]
    fn strings_are_bounds_checked() {
        let mut c = Cursor::new(b"\x03abcroot\0x");
        assert_eq!(c.lenenc_bytes(), Some(&b"abc"[..]));
        assert_eq!(c.until_nul(), b"root");
        assert_eq!(c.until_nul(), b"x");
        assert_eq!(Cursor::new(b"\x05ab").lenenc_bytes(), None);
    }
}
