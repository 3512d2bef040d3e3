//! Configuration errors that say where and how to fix.

use std::fmt;

use super::locate;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigError {
    pub fn plain(file: &str, message: String) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: None,
            column: None,
            message,
            hint: None,
        }
    }

    pub fn line(file: &str, line: usize, message: String, hint: Option<String>) -> ConfigError {
        ConfigError {
            line: Some(line),
            hint,
            ..ConfigError::plain(file, message)
        }
    }

    /// An error about the node at `path` (mapping keys, or sequence indexes such as `"2"`), placed at that key or
    /// item in the YAML; when the path is not all there (a missing key), at the deepest part that is, e.g. the
    /// section. `["exporters", "otlp", "endpoint"]` is the exporter's endpoint, never a receiver's.
    pub fn at_path(
        file: &str,
        text: &str,
        path: &[&str],
        message: String,
        hint: Option<String>,
    ) -> ConfigError {
        let at = locate::locate(text, path);
        ConfigError {
            line: at.map(|p| p.line),
            column: at.map(|p| p.column),
            hint,
            ..ConfigError::plain(file, message)
        }
    }

    /// A detector's complaint about its section `processors.<section>`, placed at the key it names.
    pub fn from_section(
        file: &str,
        text: &str,
        section: &str,
        e: crate::detect::SectionError,
    ) -> ConfigError {
        let mut path = vec!["processors", section];
        path.extend(e.path.iter().map(String::as_str));
        let hint = unknown_field_hint(&e.message)
            .or_else(|| type_hint(&e.message))
            .unwrap_or_else(|| "see pipelines/default.yaml and the README".into());
        ConfigError::at_path(file, text, &path, e.message, Some(hint))
    }

    /// A parse error of the whole file. An unknown key is placed at the key itself (found by its path in
    /// `text`), wherever the parser happened to be when it noticed.
    pub fn from_yaml(file: &str, text: &str, e: &serde_norway::Error) -> ConfigError {
        let location = e.location();
        // serde_norway appends " at line L column C" to its message; the location is printed separately.
        let mut message = e.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        let hint = unknown_field_hint(&message).or_else(|| type_hint(&message));
        let key = message
            .split_once(": unknown field `")
            .and_then(|(path, rest)| {
                let field = rest.split('`').next()?;
                let mut path: Vec<&str> = path.split('.').collect();
                path.push(field);
                // Only the key itself, not a section where a partial path stopped.
                locate::locate(text, &path).filter(|p| locate::keys_named(text, field).contains(p))
            });
        let (line, column) = match key {
            Some(p) => (Some(p.line), Some(p.column)),
            None => (
                location.as_ref().map(|l| l.line()),
                location.as_ref().map(|l| l.column()),
            ),
        };
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message,
            hint,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// "did you mean `x`?" for the closest of `candidates`, when one is close.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant") -> a suggestion.
fn unknown_field_hint(message: &str) -> Option<String> {
    let (rest, variant) = match message.split("unknown field `").nth(1) {
        Some(rest) => (rest, false),
        None => (message.split("unknown variant `").nth(1)?, true),
    };
    let (field, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    did_you_mean(field, &expected).or_else(|| {
        (!expected.is_empty()).then(|| {
            if variant {
                format!("use one of: {}", expected.join(", "))
            } else {
                format!("remove `{field}`; allowed here: {}", expected.join(", "))
            }
        })
    })
}

fn type_hint(message: &str) -> Option<String> {
    if message.contains("invalid duration") {
        Some("write durations with a unit, e.g. 500ms, 10s, 5m".into())
    } else if message.contains("invalid type") {
        Some("check the value's type against pipelines/default.yaml".into())
    } else {
        None
    }
}
