//! Bounds-checked cursor over one frozen frame; every string and binary field is a zero-copy
//! `Bytes` slice of that frame.

use bytes::{Buf, Bytes};

use crate::error::DecodeError;
use crate::types::ByteStr;

/// Cursor over `buf[pos..end]`. `end` can be narrowed to a property block and restored.
#[derive(Debug)]
pub(super) struct Reader {
    buf: Bytes,
    pos: usize,
    end: usize,
    pub(super) limits: super::PropertyLimits,
}

impl Reader {
    /// A reader over `buf` starting at `pos` (the first byte after the fixed header).
    #[inline]
    pub(super) fn new(buf: Bytes, pos: usize) -> Reader {
        let end = buf.len();
        Reader { buf, pos: pos.min(end), end, limits: super::PropertyLimits::UNLIMITED }
    }

    /// Applies limits on property blocks.
    #[inline]
    pub(super) fn with_limits(mut self, limits: super::PropertyLimits) -> Reader {
        self.limits = limits;
        self
    }

    /// Bytes left before the current end.
    #[inline]
    pub(super) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// Narrows the end to `len` bytes from here (checked by the caller) and returns the old end.
    #[inline]
    pub(super) fn narrow(&mut self, len: usize) -> usize {
        let old = self.end;
        self.end = self.pos + len.min(self.remaining());
        old
    }

    /// Restores an end returned by [`Reader::narrow`].
    #[inline]
    pub(super) fn restore(&mut self, end: usize) {
        self.end = end;
    }

    /// Fails with `TrailingBytes` unless everything was read.
    #[inline]
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// The next `n` bytes as a borrowed slice.
    #[inline]
    fn slice(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(field));
        }
        let start = self.pos;
        self.pos += n;
        self.buf.get(start..start + n).ok_or(DecodeError::Truncated(field))
    }

    /// One byte.
    #[inline]
    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        if self.pos < self.end
            && let Some(&b) = self.buf.get(self.pos)
        {
            self.pos += 1;
            return Ok(b);
        }
        Err(DecodeError::Truncated(field))
    }

    /// A big-endian two byte integer.
    #[inline]
    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let s = self.slice(2, field)?;
        Ok(u16::from_be_bytes(s.try_into().map_err(|_| DecodeError::Truncated(field))?))
    }

    /// A big-endian four byte integer.
    #[inline]
    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let s = self.slice(4, field)?;
        Ok(u32::from_be_bytes(s.try_into().map_err(|_| DecodeError::Truncated(field))?))
    }

    /// A non-zero packet identifier (MQTT-2.2.1-3).
    #[inline]
    pub(super) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16("packet identifier")? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// A variable byte integer: at most 4 bytes, minimal encoding (MQTT-1.5.5-1).
    #[inline]
    pub(super) fn vbi(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8(field)?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(DecodeError::NonMinimalVariableInteger);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVariableInteger)
    }

    /// The next `n` bytes as a shared slice of the frame.
    #[inline]
    pub(super) fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated(field));
        }
        let start = self.pos;
        self.pos += n;
        Ok(self.buf.slice(start..start + n))
    }

    /// Everything up to the current end (the PUBLISH payload). When that is the end of the
    /// frame (always, outside a property block) the frame itself is moved out and advanced,
    /// saving a reference-count increment and decrement; the reader is empty afterwards.
    #[inline]
    pub(super) fn rest(&mut self) -> Bytes {
        let (start, end) = (self.pos, self.end);
        if end == self.buf.len() {
            let mut frame = std::mem::take(&mut self.buf);
            frame.advance(start);
            self.pos = 0;
            self.end = 0;
            return frame;
        }
        self.pos = end;
        self.buf.slice(start..end)
    }

    /// Binary data: two byte length, then the bytes.
    #[inline]
    pub(super) fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
    }

    /// The raw bytes of a length-prefixed field, borrowed (for the protocol name).
    #[inline]
    pub(super) fn binary_ref(&mut self, field: &'static str) -> Result<&[u8], DecodeError> {
        let n = self.u16(field)?;
        self.slice(usize::from(n), field)
    }

    /// A UTF-8 string (MQTT-1.5.4-1, MQTT-1.5.4-2).
    #[inline]
    pub(super) fn string(&mut self, field: &'static str) -> Result<ByteStr, DecodeError> {
        Ok(ByteStr::try_from_bytes(self.binary(field)?)?)
    }

    /// A topic name: a UTF-8 string without wildcards (MQTT-3.3.2-2); may be empty (the caller
    /// decides, because an MQTT 5 topic alias allows it). Validated in two passes total.
    #[inline]
    pub(super) fn topic_name(&mut self, field: &'static str) -> Result<ByteStr, DecodeError> {
        let bytes = self.binary(field)?;
        std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        if has_nul_or_wildcard(&bytes) {
            for &b in &bytes {
                match b {
                    0 => return Err(DecodeError::NullCharacter),
                    b'+' | b'#' => return Err(DecodeError::WildcardInTopicName),
                    _ => {}
                }
            }
        }
        Ok(ByteStr::from_validated(bytes))
    }
}

/// Whether `s` contains 0x00, `+` or `#`, eight bytes at a time (SWAR). PUBLISH topic names are
/// checked on every packet, so this is on the hot path.
#[inline]
fn has_nul_or_wildcard(s: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    #[inline]
    fn has_zero_byte(x: u64) -> bool {
        x.wrapping_sub(LO) & !x & HI != 0
    }
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w);
        if has_zero_byte(x)
            || has_zero_byte(x ^ (LO * u64::from(b'+')))
            || has_zero_byte(x ^ (LO * u64::from(b'#')))
        {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b == 0 || b == b'+' || b == b'#')
}

#[cfg(test)]
mod tests {
    use super::has_nul_or_wildcard;

    #[test]
    fn swar_scan_finds_every_position() {
        for len in 0..40 {
            let clean = vec![b'a'; len];
            assert!(!has_nul_or_wildcard(&clean));
            for at in 0..len {
                for bad in [0u8, b'+', b'#'] {
                    let mut s = clean.clone();
                    s[at] = bad;
                    assert!(has_nul_or_wildcard(&s), "len {len} at {at} byte {bad:#x}");
                }
            }
        }
        // Bytes next to the targets, and high bytes, are not false positives.
        assert!(!has_nul_or_wildcard("\x01\x22\x24\x2A\x2C\u{80}\u{ff}é中😀/abc".as_bytes()));
    }
}
