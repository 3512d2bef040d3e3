//! The two things serde_json refuses in a whole document that OTLP/JSON reading must refuse in one value only:
//! a number out of f64's range (`1e400`) and a key given twice in one object. When a document fails to parse,
//! one pass over a copy turns each such number into `null` (that value is then missing, and counted by
//! extraction) and renames each repeated key so that it is ignored (the first one wins); the copy is parsed
//! once more. The pass keeps every byte offset (replacements are padded), allocates only the copy and a set of
//! keys per open object, and never runs on a document that parsed.

use std::collections::HashSet;

/// Repairs `body` in place; returns whether anything changed.
pub fn repair(body: &mut [u8]) -> bool {
    let mut changed = false;
    // One entry per open container: the keys of an object seen so far, `None` for an array.
    let mut stack: Vec<Option<HashSet<Vec<u8>>>> = Vec::new();
    // Whether the next string in the innermost object is a key.
    let mut expect_key = false;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'{' => {
                stack.push(Some(HashSet::new()));
                expect_key = true;
                i += 1;
            }
            b'[' => {
                stack.push(None);
                expect_key = false;
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                i += 1;
            }
            b',' => {
                expect_key = matches!(stack.last(), Some(Some(_)));
                i += 1;
            }
            b'"' => {
                let end = string_end(body, i);
                if expect_key {
                    if let Some(Some(keys)) = stack.last_mut() {
                        let key = body[i + 1..end.saturating_sub(1).max(i + 1)].to_vec();
                        if !keys.insert(key) && rename(&mut body[i + 1..end]) {
                            changed = true;
                        }
                    }
                    expect_key = false;
                }
                i = end;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < body.len()
                    && matches!(body[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let overflows = std::str::from_utf8(&body[start..i])
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_some_and(f64::is_infinite);
                if overflows && i - start >= 4 {
                    body[start..start + 4].copy_from_slice(b"null");
                    body[start + 4..i].fill(b' ');
                    changed = true;
                }
            }
            _ => i += 1,
        }
    }
    changed
}

/// The index just past the string that opens at `start` (or the end of the body, for an unclosed one).
fn string_end(body: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    body.len()
}

/// Makes a repeated key (its bytes and closing quote) one no reader knows, keeping it valid JSON: its first
/// byte becomes `~` when that is a plain ASCII letter or digit. Returns whether it did.
fn rename(key: &mut [u8]) -> bool {
    match key.first() {
        Some(b) if b.is_ascii_alphanumeric() && key.len() > 1 => {
            key[0] = b'~';
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repaired(s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        repair(&mut b);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn out_of_range_numbers_become_null_and_offsets_stay() {
        let s = r#"{"a":1e400,"b":[-2E+999,3.5,1e308],"c":"1e400"}"#;
        let r = repaired(s);
        assert_eq!(r, r#"{"a":null ,"b":[null   ,3.5,1e308],"c":"1e400"}"#);
        assert_eq!(r.len(), s.len());
        serde_json::from_str::<serde_json::Value>(&r).unwrap();
    }

    #[test]
    fn a_repeated_key_is_renamed_and_the_first_wins() {
        let r = repaired(r#"{"k":{"x":1,"x":2},"k":[{"x":3},{"x":4,"x":"a\"b"}],"s":"k","x":5}"#);
        assert_eq!(
            r,
            r#"{"k":{"x":1,"~":2},"~":[{"x":3},{"x":4,"~":"a\"b"}],"s":"k","x":5}"#
        );
    }

    #[test]
    fn nothing_changes_in_a_document_without_either() {
        let s =
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a,\"b\"{[","x":-1.5e10}]}]}]}"#;
        let mut b = s.as_bytes().to_vec();
        assert!(!repair(&mut b));
        assert_eq!(b, s.as_bytes());
    }
}
