//! The byte-level JSON reading under the OTLP/JSON reader: whitespace, strings, numbers, and skipping a value
//! unread. It follows RFC 8259 strictly (a document that is not JSON fails, with the byte offset and what was
//! expected there) and builds nothing: strings come back as slices of the body, unescaped into a scratch
//! buffer only when they hold an escape.

use std::fmt;

use crate::extract::model::Budget;

/// Why a body is not OTLP/JSON: what was expected or found, in which OTLP field if one, and the byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    pub at: usize,
    pub what: &'static str,
    pub field: &'static str,
    /// The body ended where more was expected (a truncated body).
    pub eof: bool,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.eof {
            f.write_str("unexpected EOF: ")?;
        }
        f.write_str(self.what)?;
        if !self.field.is_empty() {
            write!(f, " ({})", self.field)?;
        }
        write!(f, " at byte {}", self.at)
    }
}

impl std::error::Error for JsonError {}

/// Within the reader, errors are boxed: they are rare, and every `Result` it passes around stays a word wide.
pub type Result<T> = std::result::Result<T, Box<JsonError>>;

/// How deep arrays and objects may nest (serde_json's limit too): deeper is refused rather than walked.
pub const MAX_DEPTH: usize = 128;

/// A JSON number as written: an integer that fits i64 or u64, or any other number as the nearest f64. A
/// literal beyond f64's range (`1e400`) is `None`: that value alone is missing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    I64(i64),
    U64(u64),
    F64(f64),
}

/// Bytes that end the plain run of a string: the quote, the backslash, and the control characters JSON
/// forbids unescaped.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// What a reading that ran out of its decode budget fails with (see [`super::ReadError`]).
pub const OVER_BUDGET: &str = "over the decode budget";

/// A position in a body, and the decode budget that every allocation of its reading asks first.
pub struct Cursor<'a, 'b> {
    body: &'a [u8],
    at: usize,
    pub budget: Budget<'b>,
}

impl<'a, 'b> Cursor<'a, 'b> {
    pub fn new(body: &'a [u8], budget: Budget<'b>) -> Cursor<'a, 'b> {
        Cursor {
            body,
            at: 0,
            budget,
        }
    }

    pub fn offset(&self) -> usize {
        self.at
    }

    pub fn error<T>(&self, what: &'static str) -> Result<T> {
        self.error_in(what, "")
    }

    /// An error in OTLP field `field`.
    pub fn error_in<T>(&self, what: &'static str, field: &'static str) -> Result<T> {
        Err(Box::new(JsonError {
            at: self.at,
            what,
            field,
            eof: self.at >= self.body.len(),
        }))
    }

    #[inline(always)]
    pub fn skip_ws(&mut self) {
        while let Some(&b) = self.body.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    #[inline(always)]
    pub fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.body.get(self.at).copied()
    }

    #[inline(always)]
    pub fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    pub fn expect(&mut self, byte: u8, what: &'static str) -> Result<()> {
        if self.eat(byte) {
            Ok(())
        } else {
            self.error(what)
        }
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.error("trailing characters after the document"),
        }
    }

    /// Consumes `null` if it comes next.
    pub fn eat_null(&mut self) -> Result<bool> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<()> {
        if self.body[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            self.error("expected a JSON value")
        }
    }

    /// Begins an object's members after its `{` was consumed, or goes to the next one: the next key, or `None`
    /// at the closing `}`. `first` is true until the first member has been read.
    #[inline]
    pub fn next_key(&mut self, first: &mut bool, scratch: &mut Vec<u8>) -> Result<Option<Key<'a>>> {
        if std::mem::take(first) {
            if self.eat(b'}') {
                return Ok(None);
            }
        } else if !self.eat(b',') {
            self.expect(b'}', "expected ',' or '}' in an object")?;
            return Ok(None);
        }
        if self.peek() != Some(b'"') {
            return self.error("expected a string key");
        }
        let key = self.string(scratch)?;
        self.expect(b':', "expected ':' after a key")?;
        Ok(Some(key))
    }

    /// Goes to an array's next element after its `[` was consumed: whether there is one. `first` as for
    /// [`Cursor::next_key`].
    #[inline]
    pub fn next_element(&mut self, first: &mut bool) -> Result<bool> {
        if std::mem::take(first) {
            return Ok(!self.eat(b']'));
        }
        if self.eat(b',') {
            return Ok(true);
        }
        self.expect(b']', "expected ',' or ']' in an array")?;
        Ok(false)
    }

    /// Reads a string whose opening quote comes next. A string without escapes is a slice of the body; one
    /// with escapes is unescaped into the end of `scratch`.
    #[inline]
    pub fn string(&mut self, scratch: &mut Vec<u8>) -> Result<Key<'a>> {
        debug_assert_eq!(self.body.get(self.at), Some(&b'"'));
        self.at += 1;
        let start = self.at;
        self.plain_run();
        match self.body.get(self.at) {
            Some(b'"') => {
                self.at += 1;
                Ok(Key::Body(&self.body[start..self.at - 1]))
            }
            _ => self.escaped(start, scratch),
        }
    }

    /// Moves to the end of the plain run of a string: the next quote, backslash or control character (or the
    /// end of the body). Eight bytes at a time: a byte is flagged when it is a quote or a backslash or below
    /// 0x20 (the lowest flagged byte is always a true one).
    #[inline(always)]
    fn plain_run(&mut self) {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = self.body.get(self.at..self.at + 8) {
            let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            let x = u64::from_le_bytes(bytes);
            let quote = x ^ (ONES * u64::from(b'"'));
            let backslash = x ^ (ONES * u64::from(b'\\'));
            let flagged = (quote.wrapping_sub(ONES) & !quote
                | backslash.wrapping_sub(ONES) & !backslash
                | x.wrapping_sub(ONES * 0x20) & !x)
                & HIGH;
            if flagged != 0 {
                self.at += (flagged.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while let Some(&b) = self.body.get(self.at) {
            if STRING_STOP[b as usize] {
                break;
            }
            self.at += 1;
        }
    }

    /// The rest of a string that holds an escape, unescaped into `scratch`. Its first use in a document
    /// reserves the body's length from the budget: a string unescaped is never longer than its JSON, and what
    /// is kept and what is being read never add up to more than the body, so the buffer never grows again.
    #[cold]
    fn escaped(&mut self, start: usize, scratch: &mut Vec<u8>) -> Result<Key<'a>> {
        if scratch.capacity() < self.body.len() {
            if !(self.budget)(self.body.len()) {
                return self.error(OVER_BUDGET);
            }
            scratch.reserve_exact(self.body.len() - scratch.len());
        }
        let from = scratch.len();
        scratch.extend_from_slice(&self.body[start..self.at]);
        loop {
            match self.body.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(Key::Scratch(from, scratch.len()));
                }
                Some(b'\\') => {
                    self.at += 1;
                    self.escape(scratch)?;
                }
                Some(_) => return self.error("a control character unescaped in a string"),
                None => return self.error("a string not closed"),
            }
            let run = self.at;
            self.plain_run();
            scratch.extend_from_slice(&self.body[run..self.at]);
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let Some(&b) = self.body.get(self.at) else {
            return self.error("a string not closed");
        };
        self.at += 1;
        let byte = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let c = self.unicode_escape()?;
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => return self.error("an unknown escape in a string"),
        };
        out.push(byte);
        Ok(())
    }

    /// The character of a `\u` escape (the `\u` consumed), joining a surrogate pair; a lone surrogate becomes
    /// U+FFFD, which costs that character alone.
    fn unicode_escape(&mut self) -> Result<char> {
        let high = self.hex4()?;
        if !(0xD800..0xDC00).contains(&high) {
            return Ok(char::from_u32(high).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
        if self.body[self.at..].starts_with(b"\\u") {
            let back = self.at;
            self.at += 2;
            let low = self.hex4()?;
            if (0xDC00..0xE000).contains(&low) {
                let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            self.at = back;
        }
        Ok(char::REPLACEMENT_CHARACTER)
    }

    fn hex4(&mut self) -> Result<u32> {
        let Some(digits) = self.body.get(self.at..self.at + 4) else {
            return self.error("a \\u escape without four hex digits");
        };
        let mut v = 0;
        for &d in digits {
            let Some(x) = (d as char).to_digit(16) else {
                return self.error("a \\u escape without four hex digits");
            };
            v = v * 16 + x;
        }
        self.at += 4;
        Ok(v)
    }

    /// Reads a number that comes next (its first byte is `-` or a digit). `Ok(None)`: a literal beyond f64's
    /// range.
    pub fn number(&mut self) -> Result<Option<Num>> {
        let start = self.at;
        let negative = self.body.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let digits = self.at;
        let mut magnitude: u64 = 0;
        let mut overflow = false;
        while let Some(&d) = self.body.get(self.at) {
            if !d.is_ascii_digit() {
                break;
            }
            match magnitude
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(d - b'0')))
            {
                Some(m) => magnitude = m,
                None => overflow = true,
            }
            self.at += 1;
        }
        match self.at - digits {
            0 => return self.error("expected a digit"),
            1 => {}
            _ if self.body[digits] == b'0' => return self.error("a number with a leading zero"),
            _ => {}
        }
        let mut integer = !overflow;
        if self.body.get(self.at) == Some(&b'.') {
            self.at += 1;
            integer = false;
            self.digits()?;
        }
        if matches!(self.body.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            integer = false;
            if matches!(self.body.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits()?;
        }
        if integer {
            if !negative {
                return Ok(Some(Num::U64(magnitude)));
            }
            // -0 is the double -0.0, and a magnitude past i64's is read as a double (as serde_json reads them).
            if magnitude != 0 && magnitude <= 1 << 63 {
                return Ok(Some(Num::I64((magnitude as i64).wrapping_neg())));
            }
        }
        // The literal is ASCII digits, signs, '.' and 'e' only: valid UTF-8, and Rust's f64 grammar.
        let text = std::str::from_utf8(&self.body[start..self.at]).unwrap_or("NaN");
        let f: f64 = text.parse().unwrap_or(f64::NAN);
        Ok(f.is_finite().then_some(Num::F64(f)))
    }

    fn digits(&mut self) -> Result<()> {
        let from = self.at;
        while self.body.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        if self.at == from {
            return self.error("expected a digit");
        }
        Ok(())
    }

    /// Consumes `true` or `false` if one comes next, returning it and its literal.
    pub fn bool(&mut self) -> Result<Option<(bool, &'static [u8])>> {
        let (value, word): (bool, &'static [u8]) = match self.peek() {
            Some(b't') => (true, b"true"),
            Some(b'f') => (false, b"false"),
            _ => return Ok(None),
        };
        self.literal(word)?;
        Ok(Some((value, word)))
    }

    /// Skips one value of any kind, checking that it is JSON, without recursion (nesting up to [`MAX_DEPTH`]).
    pub fn skip(&mut self, scratch: &mut Vec<u8>) -> Result<()> {
        // The open containers, innermost in bit 0: 1 for an object, 0 for an array.
        let mut objects: u128 = 0;
        let mut depth = 0;
        let mut first;
        loop {
            // Read a value, or open a container.
            match self.peek() {
                Some(b'{' | b'[') if depth >= MAX_DEPTH => {
                    return self.error("nesting deeper than 128");
                }
                Some(open @ (b'{' | b'[')) => {
                    self.at += 1;
                    objects = objects << 1 | u128::from(open == b'{');
                    depth += 1;
                    first = true;
                }
                _ => {
                    self.scalar(scratch)?;
                    first = false;
                }
            }
            // Go to the next value to read, closing containers.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let more = if objects & 1 == 1 {
                    let mark = scratch.len();
                    let key = self.next_key(&mut first, scratch)?;
                    scratch.truncate(mark);
                    key.is_some()
                } else {
                    self.next_element(&mut first)?
                };
                if more {
                    break;
                }
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// Reads a scalar (string, number, literal) and forgets it.
    fn scalar(&mut self, scratch: &mut Vec<u8>) -> Result<()> {
        match self.peek() {
            Some(b'"') => {
                let mark = scratch.len();
                self.string(scratch)?;
                scratch.truncate(mark);
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
            }
            Some(b'n') => self.literal(b"null")?,
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            _ => return self.error("expected a JSON value"),
        }
        Ok(())
    }
}

/// A string as read: a slice of the body, or a range of the scratch buffer it was unescaped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    Body(&'a [u8]),
    Scratch(usize, usize),
}

impl<'a> Key<'a> {
    /// Its bytes.
    pub fn bytes<'s>(self, scratch: &'s [u8]) -> &'s [u8]
    where
        'a: 's,
    {
        match self {
            Key::Body(b) => b,
            Key::Scratch(from, to) => scratch.get(from..to).unwrap_or(&[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skips(s: &str) -> Result<usize> {
        let mut all = |_| true;
        let mut c = Cursor::new(s.as_bytes(), &mut all);
        c.skip(&mut Vec::new())?;
        c.end()?;
        Ok(c.offset())
    }

    #[test]
    fn skips_exactly_what_serde_json_accepts() {
        let cases = [
            r#"{"a":[1,2.5,-0,1e3,true,false,null,"x\"y\u00e9\ud83d\ude00"],"b":{}}"#,
            "[]",
            "{}",
            " [ { } , [ ] ] ",
            r#""\/\b\f\n\r\t""#,
            "0",
            "-1.5E-7",
            "[1,]",
            "[,1]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "+1",
            "-",
            "tru",
            "nul",
            "\"a\u{1}\"",
            "\"\\x\"",
            "\"abc",
            "[1",
            "{\"a\":}",
            "{1:2}",
            "[1] x",
            "",
        ];
        for s in cases {
            let ours = skips(s).is_ok();
            let theirs = serde_json::from_str::<serde_json::Value>(s).is_ok();
            assert_eq!(ours, theirs, "{s:?}");
        }
    }

    #[test]
    fn nesting_is_bounded_and_walked_without_recursion() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(skips(&deep(MAX_DEPTH)).is_ok());
        let e = skips(&deep(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.to_string().contains("nesting"), "{e}");
        assert!(skips(&"[".repeat(1_000_000)).is_err());
    }

    #[test]
    fn numbers_read_as_serde_json_reads_them() {
        let read = |s: &str| Cursor::new(s.as_bytes(), &mut |_| true).number().unwrap();
        assert_eq!(read("0"), Some(Num::U64(0)));
        assert_eq!(read("18446744073709551615"), Some(Num::U64(u64::MAX)));
        assert_eq!(
            read("18446744073709551616"),
            Some(Num::F64(18446744073709551616.0))
        );
        assert_eq!(read("-9223372036854775808"), Some(Num::I64(i64::MIN)));
        assert_eq!(
            read("-9223372036854775809"),
            Some(Num::F64(-9223372036854775809.0))
        );
        assert!(matches!(read("-0"), Some(Num::F64(z)) if z == 0.0 && z.is_sign_negative()));
        assert_eq!(read("1.0"), Some(Num::F64(1.0)));
        assert_eq!(read("2e3"), Some(Num::F64(2000.0)));
        assert_eq!(read("0.1"), Some(Num::F64(0.1)));
        assert_eq!(read("1e400"), None);
        assert_eq!(read("-1e999"), None);
        assert_eq!(read("1e-400"), Some(Num::F64(0.0)));
    }

    #[test]
    fn strings_are_slices_of_the_body_unless_escaped() {
        let body = br#""plain" "a\"b\\c\u00e9\ud83d\ude00" "\ud800x""#;
        let mut all = |_| true;
        let mut c = Cursor::new(body, &mut all);
        let mut scratch = Vec::new();
        let a = c.string(&mut scratch).unwrap();
        assert!(matches!(a, Key::Body(b"plain")));
        c.skip_ws();
        let b = c.string(&mut scratch).unwrap();
        assert_eq!(b.bytes(&scratch), "a\"b\\c\u{e9}\u{1f600}".as_bytes());
        c.skip_ws();
        let lone = c.string(&mut scratch).unwrap();
        assert_eq!(lone.bytes(&scratch), "\u{fffd}x".as_bytes());
    }
}
