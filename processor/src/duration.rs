//! A duration written with a unit ("500ms", "10s", "5m"), held in nanoseconds: the one type every section of the
//! pipeline file uses for times. A leaf: it imports nothing of the crate.

use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub u64);

impl Duration {
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_duration(std::time::Duration::from_nanos(self.0))
        )
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
            .and_then(|d| {
                u64::try_from(d.as_nanos())
                    .map(Duration)
                    .map_err(|_| serde::de::Error::custom(format!("duration {s:?} is too long")))
            })
    }
}
