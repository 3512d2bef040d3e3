//! The protobuf wire format, read in place: fields of a message as (number, value) with every length-delimited
//! value a slice of the buffer. No allocation and no reference counting: what [`super::model`] decodes with,
//! and what the decode budget weighs a body with before it is decoded.

/// A body that is not valid protobuf wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for WireError {}

/// Reads a base-128 varint from the front of `buf`.
#[inline(always)]
pub fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    // Keys, lengths and small numbers: most varints are one or two bytes.
    let rest: &[u8] = buf;
    match *rest {
        [b0, ref tail @ ..] if b0 < 0x80 => {
            *buf = tail;
            Ok(u64::from(b0))
        }
        [b0, b1, ref tail @ ..] if b1 < 0x80 => {
            *buf = tail;
            Ok(u64::from(b0 & 0x7f) | (u64::from(b1) << 7))
        }
        _ => varint_long(buf),
    }
}

#[inline(never)]
fn varint_long(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(WireError("truncated varint"))?;
        *buf = rest;
        if shift == 63 && byte > 1 {
            return Err(WireError("varint over 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(WireError("varint over 10 bytes"))
}

/// Takes `n` bytes from the front of `buf`.
#[inline(always)]
pub fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], WireError> {
    let n = usize::try_from(n).map_err(|_| WireError("length past the buffer"))?;
    if n > buf.len() {
        return Err(WireError("length past the buffer"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Nesting of groups prost follows before it gives up (its recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;

/// Skips one field that is not length-delimited (a group with everything in it).
pub fn skip(buf: &mut &[u8], wire: u64, field: u64, depth: u32) -> Result<(), WireError> {
    match wire {
        0 => varint(buf).map(|_| ()),
        1 => take(buf, 8).map(|_| ()),
        5 => take(buf, 4).map(|_| ()),
        2 => {
            let len = varint(buf)?;
            take(buf, len).map(|_| ())
        }
        3 if depth < MAX_GROUP_DEPTH => loop {
            let key = varint(buf)?;
            match (key >> 3, key & 7) {
                (inner, 4) if inner == field => return Ok(()),
                (_, 4) => return Err(WireError("a group ends with another group's tag")),
                (inner, w) => skip(buf, w, inner, depth + 1)?,
            }
        },
        3 => Err(WireError("groups nested too deep")),
        4 => Err(WireError("a group ends that never began")),
        _ => Err(WireError("unknown wire type")),
    }
}

/// One field's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Length-delimited: bytes, a string or a message.
    Len(&'a [u8]),
    /// A (deprecated) group, skipped whole.
    Group,
}

impl<'a> Wire<'a> {
    /// The payload of a length-delimited field; any other wire type where one is declared is an error, as in
    /// prost.
    #[inline(always)]
    pub fn bytes(self) -> Result<&'a [u8], WireError> {
        match self {
            Wire::Len(b) => Ok(b),
            _ => Err(WireError("a bytes or message field with another wire type")),
        }
    }

    #[inline(always)]
    pub fn fixed64(self) -> Result<u64, WireError> {
        match self {
            Wire::Fixed64(v) => Ok(v),
            _ => Err(WireError("a fixed64 field with another wire type")),
        }
    }

    #[inline(always)]
    pub fn varint(self) -> Result<u64, WireError> {
        match self {
            Wire::Varint(v) => Ok(v),
            _ => Err(WireError("a varint field with another wire type")),
        }
    }
}

/// The fields of one message, in wire order.
pub struct Fields<'a> {
    buf: &'a [u8],
}

/// The fields of the message `buf`.
#[inline(always)]
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf }
}

impl<'a> Fields<'a> {
    #[inline(always)]
    fn read(&mut self) -> Result<(u32, Wire<'a>), WireError> {
        let key = varint(&mut self.buf)?;
        let (field, wire) = (key >> 3, key & 7);
        let number = match u32::try_from(field) {
            Ok(n) if (1..=0x1fff_ffff).contains(&n) => n,
            _ => return Err(WireError("a field number out of range")),
        };
        let value = match wire {
            0 => Wire::Varint(varint(&mut self.buf)?),
            1 => {
                let b = take(&mut self.buf, 8)?;
                Wire::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            5 => {
                let b = take(&mut self.buf, 4)?;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            2 => {
                let len = varint(&mut self.buf)?;
                Wire::Len(take(&mut self.buf, len)?)
            }
            _ => {
                skip(&mut self.buf, wire, field, 0)?;
                Wire::Group
            }
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Wire<'a>), WireError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let field = self.read();
        if field.is_err() {
            // Nothing after an error can be read.
            self.buf = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, WireError> {
        fields(buf).collect()
    }

    #[test]
    fn reads_each_wire_type() {
        // 1: varint 150; 2: "hi"; 3: fixed64 7; 4: fixed32 9; 5: a group holding a varint.
        let buf = [
            0x08, 0x96, 0x01, 0x12, 2, b'h', b'i', 0x19, 7, 0, 0, 0, 0, 0, 0, 0, 0x25, 9, 0, 0, 0,
            0x2b, 0x08, 0x01, 0x2c,
        ];
        assert_eq!(
            all(&buf),
            Ok(vec![
                (1, Wire::Varint(150)),
                (2, Wire::Len(b"hi")),
                (3, Wire::Fixed64(7)),
                (4, Wire::Fixed32(9)),
                (5, Wire::Group),
            ])
        );
    }

    #[test]
    fn refuses_what_prost_refuses() {
        assert!(all(&[0x12, 5, b'a']).is_err(), "length past the end");
        assert!(all(&[0x08]).is_err(), "truncated varint");
        assert!(all(&[0x00, 0x01]).is_err(), "field 0");
        assert!(all(&[0x0b]).is_err(), "a group never ended");
        assert!(all(&[0x0c]).is_err(), "a group ends that never began");
        assert!(all(&[0x0e]).is_err(), "wire type 6");
        assert!(all(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).is_err());
        assert_eq!(
            Wire::Varint(1).bytes(),
            Err(WireError("a bytes or message field with another wire type"))
        );
    }
}
