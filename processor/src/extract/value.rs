//! Reading one attribute or point value as a byte count.

use super::model::{AnyValue, Value};

/// Nothing measured in bytes on one process is larger than 1 PiB; a bigger number is a unit or encoding bug.
pub const MAX_PLAUSIBLE_BYTES: f64 = (1u64 << 50) as f64;

/// Why one value was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// A bool, array, map, bytes or empty value where a number was expected.
    WrongType,
    /// A string where a number was expected, such as "12MB".
    String,
    Negative,
    /// NaN or an infinity.
    NotFinite,
    /// A double with a fractional part where a whole number of bytes was expected.
    Fractional,
    /// More than [`MAX_PLAUSIBLE_BYTES`].
    TooLarge,
    /// A metric point with no time: it cannot be placed in event time.
    NoTimestamp,
    /// Stamped further in the future than the receiver's allowed clock skew.
    FutureTimestamp,
    /// Behind its own source's progress when it arrived: the windows it belongs to had closed.
    Late,
    /// Kept for its instance, but its cohort's window had closed (the service's slower sources had moved on).
    LateForCohort,
    /// Its key would have exceeded the cap on live keys.
    KeyOverflow,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::WrongType,
        DropReason::String,
        DropReason::Negative,
        DropReason::NotFinite,
        DropReason::Fractional,
        DropReason::TooLarge,
        DropReason::NoTimestamp,
        DropReason::FutureTimestamp,
        DropReason::Late,
        DropReason::LateForCohort,
        DropReason::KeyOverflow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::WrongType => "wrong_type",
            DropReason::String => "string",
            DropReason::Negative => "negative",
            DropReason::NotFinite => "not_finite",
            DropReason::Fractional => "fractional",
            DropReason::TooLarge => "too_large",
            DropReason::NoTimestamp => "no_timestamp",
            DropReason::FutureTimestamp => "future_timestamp",
            DropReason::Late => "late",
            DropReason::LateForCohort => "late_for_cohort",
            DropReason::KeyOverflow => "key_overflow",
        }
    }
}

/// Checks a number that should be a byte count. `whole` demands an integral value (span attributes are integer
/// bytes by the convention; metric gauges may legitimately be averaged doubles).
pub fn check_bytes(v: f64, whole: bool) -> Result<f64, DropReason> {
    if !v.is_finite() {
        Err(DropReason::NotFinite)
    } else if v < 0.0 {
        Err(DropReason::Negative)
    } else if v > MAX_PLAUSIBLE_BYTES {
        Err(DropReason::TooLarge)
    } else if whole && v.fract() != 0.0 {
        Err(DropReason::Fractional)
    } else {
        Ok(v)
    }
}

/// Reads a span attribute value as a whole number of bytes.
pub fn bytes_value(value: Option<&AnyValue>) -> Result<f64, DropReason> {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::Int(i)) => check_bytes(*i as f64, true),
        Some(Value::Double(d)) => check_bytes(*d, true),
        Some(Value::String(_)) => Err(DropReason::String),
        _ => Err(DropReason::WrongType),
    }
}

/// The longest label (service, instance, cohort) kept as sent, in bytes. A longer one is shortened by
/// [`bounded_label`], so that no sender can make a series key, a window summary or a `/metrics` line large.
pub const MAX_LABEL_BYTES: usize = 128;

/// Reads an attribute as a label (cohort, service name). Numbers and bools are accepted as their text; a string
/// that is not UTF-8 is no label. The second value says whether the label was shortened ([`bounded_label`]).
pub fn label_value(value: Option<&AnyValue>) -> Option<(String, bool)> {
    let text = match value.and_then(|v| v.value.as_ref())? {
        Value::String(s) if !s.is_empty() => std::str::from_utf8(s).ok()?,
        Value::Int(i) => return Some((i.to_string(), false)),
        Value::Bool(b) => return Some((b.to_string(), false)),
        Value::Double(d) => return Some((d.to_string(), false)),
        _ => return None,
    };
    Some(bounded_label(text))
}

/// `text` itself when it is at most [`MAX_LABEL_BYTES`]; otherwise its first bytes (cut at a character
/// boundary), `~` and 16 hex digits of a 64-bit FNV-1a hash of the whole text: at most [`MAX_LABEL_BYTES`], and
/// two long labels that differ anywhere stay two labels.
pub fn bounded_label(text: &str) -> (String, bool) {
    if text.len() <= MAX_LABEL_BYTES {
        return (text.to_string(), false);
    }
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut keep = MAX_LABEL_BYTES - 17;
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    (format!("{}~{hash:016x}", &text[..keep]), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: Value<'_>) -> AnyValue<'_> {
        AnyValue { value: Some(v) }
    }

    #[test]
    fn accepts_ints_and_integral_doubles() {
        assert_eq!(bytes_value(Some(&any(Value::Int(1024)))), Ok(1024.0));
        assert_eq!(bytes_value(Some(&any(Value::Double(2048.0)))), Ok(2048.0));
        assert_eq!(bytes_value(Some(&any(Value::Int(0)))), Ok(0.0));
    }

    #[test]
    fn rejects_each_kind_of_bad_value_by_reason() {
        let cases = [
            (Value::Int(-1), DropReason::Negative),
            (Value::Double(f64::NAN), DropReason::NotFinite),
            (Value::Double(f64::INFINITY), DropReason::NotFinite),
            (Value::Double(1.5), DropReason::Fractional),
            (Value::Int(i64::MAX), DropReason::TooLarge),
            (Value::String(b"12MB"), DropReason::String),
            (Value::Bool(true), DropReason::WrongType),
        ];
        for (v, reason) in cases {
            assert_eq!(bytes_value(Some(&any(v))), Err(reason), "{v:?}");
        }
        assert_eq!(bytes_value(None), Err(DropReason::WrongType));
        assert_eq!(
            bytes_value(Some(&AnyValue { value: None })),
            Err(DropReason::WrongType)
        );
    }

    #[test]
    fn labels_read_text_numbers_and_bools_but_not_invalid_utf8() {
        assert_eq!(
            label_value(Some(&any(Value::String(b"1.5.0")))).map(|l| l.0),
            Some("1.5.0".into())
        );
        assert_eq!(
            label_value(Some(&any(Value::Int(2)))),
            Some(("2".into(), false))
        );
        assert_eq!(label_value(Some(&any(Value::String(&[0xff, 0xfe])))), None);
        assert_eq!(label_value(Some(&any(Value::String(b"")))), None);
    }

    #[test]
    fn long_labels_are_shortened_to_the_cap_and_stay_distinct() {
        let (short, cut) = bounded_label(&"a".repeat(MAX_LABEL_BYTES));
        assert_eq!((short.len(), cut), (MAX_LABEL_BYTES, false));
        let mib = "s".repeat(1 << 20);
        let (a, cut) = bounded_label(&mib);
        assert!(cut && a.len() <= MAX_LABEL_BYTES, "{} bytes", a.len());
        assert!(a.starts_with("sss"));
        let mut other = mib.clone();
        other.push('t');
        assert_ne!(bounded_label(&other).0, a, "labels differing at the end");
        // Cut at a character boundary: 3-byte characters throughout.
        let wide = "\u{20ac}".repeat(100);
        let (w, cut) = bounded_label(&wide);
        assert!(cut && w.len() <= MAX_LABEL_BYTES && w.starts_with('\u{20ac}'));
        let via_attribute = label_value(Some(&any(Value::String(mib.as_bytes()))));
        assert_eq!(via_attribute, Some((a, true)));
    }

    #[test]
    fn metric_values_may_be_fractional() {
        assert_eq!(check_bytes(1.5, false), Ok(1.5));
        assert_eq!(check_bytes(1.5, true), Err(DropReason::Fractional));
    }
}
