//! Bounds-checked cursor over one frozen frame; every string and binary field is a zero-copy
//! `Bytes` slice of that frame.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::types::ByteStr;

/// Cursor over `buf[pos..end]`. `end` can be narrowed to a property block and restored.
#[derive(Debug)]
pub(super) struct Reader {
    buf: Bytes,
    pos: usize,
    end: usize,
}

impl Reader {
    /// A reader over `buf` starting at `pos` (the first byte after the fixed header).
    #[inline]
    pub(super) fn new(buf: Bytes, pos: usize) -> Reader {
        let end = buf.len();
        Reader { buf, pos: pos.min(end), end }
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

    /// Everything up to the current end (the PUBLISH payload).
    #[inline]
    pub(super) fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.buf.slice(start..self.end)
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
        for &b in &bytes {
            match b {
                0 => return Err(DecodeError::NullCharacter),
                b'+' | b'#' => return Err(DecodeError::WildcardInTopicName),
                _ => {}
            }
        }
        Ok(ByteStr::from_validated(bytes))
    }
}
