//! Where a key path sits in the pipeline file, read from a YAML parser's events (so flow style, comments, quoted
//! keys and anchors are placed as YAML reads them, not as the text looks).

use saphyr_parser::{Event, Marker, Parser};

/// A place in the text: 1-based line and column (columns count characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(m: Marker) -> Position {
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// The position of the node at `path` in the first document of `text`: a segment names a mapping's key, or
/// indexes a sequence (`"2"`, from 0). For a key the position is the key's own; for an index, the item's. When
/// the path is not all there, the deepest part that is (a missing key is reported at its section); `None` when
/// not even the first segment is. An alias is not followed: the path stops there. Text after a syntax error is
/// not read.
pub fn locate(text: &str, path: &[&str]) -> Option<Position> {
    let mut events = Parser::new_from_str(text)
        .map_while(Result::ok)
        .map(|(event, span)| (event, span.start));
    let root = events.find(|(e, _)| !matches!(e, Event::StreamStart | Event::DocumentStart(_)))?;
    let mut best = None;
    walk(&mut events, root.0, path, &mut best);
    best
}

/// Follows `path` from the node that begins with `node`, recording each segment found in `best`; `None` when a
/// segment is missing or the events run out.
fn walk<'a>(
    events: &mut impl Iterator<Item = (Event<'a>, Marker)>,
    mut node: Event<'a>,
    path: &[&str],
    best: &mut Option<Position>,
) -> Option<()> {
    for segment in path {
        node = match node {
            Event::MappingStart(..) => loop {
                let (key, at) = events.next()?;
                if let Event::Scalar(k, ..) = &key {
                    if k.as_ref() == *segment {
                        *best = Some(at.into());
                        break events.next()?.0;
                    }
                }
                if matches!(key, Event::MappingEnd) {
                    return None;
                }
                skip(events, key)?;
                let value = events.next()?.0;
                skip(events, value)?;
            },
            Event::SequenceStart(..) => {
                let index: usize = segment.parse().ok()?;
                for _ in 0..index {
                    let item = events.next()?.0;
                    if matches!(item, Event::SequenceEnd) {
                        return None;
                    }
                    skip(events, item)?;
                }
                let (item, at) = events.next()?;
                if matches!(item, Event::SequenceEnd) {
                    return None;
                }
                *best = Some(at.into());
                item
            }
            _ => return None,
        };
    }
    Some(())
}

/// Consumes the rest of the node that begins with `first` (nothing more for a scalar or an alias).
fn skip<'a>(
    events: &mut impl Iterator<Item = (Event<'a>, Marker)>,
    first: Event<'a>,
) -> Option<()> {
    let mut depth = usize::from(matches!(
        first,
        Event::MappingStart(..) | Event::SequenceStart(..)
    ));
    while depth > 0 {
        match events.next()?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => depth += 1,
            Event::MappingEnd | Event::SequenceEnd => depth -= 1,
            _ => {}
        }
    }
    Some(())
}

/// The positions of every mapping key named `key` in the first document of `text`, in order.
pub fn keys_named(text: &str, key: &str) -> Vec<Position> {
    // For each open collection: whether it is a mapping, and whether its next node is a key.
    let mut open: Vec<(bool, bool)> = Vec::new();
    let mut found = Vec::new();
    for (event, span) in Parser::new_from_str(text).map_while(Result::ok) {
        let is_key = matches!(open.last(), Some((true, true)));
        let node = match event {
            Event::Scalar(ref s, ..) => {
                if is_key && s.as_ref() == key {
                    found.push(span.start.into());
                }
                true
            }
            Event::Alias(_) => true,
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                open.push((matches!(event, Event::MappingStart(..)), true));
                false
            }
            Event::MappingEnd | Event::SequenceEnd => {
                open.pop();
                true
            }
            Event::DocumentEnd => break,
            _ => false,
        };
        // A whole node ended: in a mapping, a key is followed by a value and a value by a key.
        if node {
            if let Some((true, next_is_key)) = open.last_mut() {
                *next_is_key = !*next_is_key;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    /// The 1-based number of the first line after line `after` (1-based; 0 for the start) that starts with
    /// `prefix`.
    fn line_after(text: &str, after: usize, prefix: &str) -> usize {
        text.lines()
            .enumerate()
            .skip(after)
            .find(|(_, l)| l.starts_with(prefix))
            .map(|(i, _)| i + 1)
            .unwrap_or_else(|| panic!("no line starting {prefix:?} after line {after}"))
    }

    const BLOCK: &str = "\
# alpha: a comment that names the key
processors:
  spread_drift:
    alpha: 0.01 # alpha again
  leak:
    'lookback': 60m
    alpha: 2
service:
  pipelines:
    memory:
      processors:
        - spread_drift
        - leak
";

    #[test]
    fn block_style_keys_are_placed_at_the_key() {
        assert_eq!(locate(BLOCK, &["processors"]), at(2, 1));
        assert_eq!(
            locate(BLOCK, &["processors", "spread_drift", "alpha"]),
            at(4, 5)
        );
        assert_eq!(locate(BLOCK, &["processors", "leak", "alpha"]), at(7, 5));
        assert_eq!(
            locate(BLOCK, &["processors", "leak", "lookback"]),
            at(6, 5),
            "quoted key"
        );
    }

    #[test]
    fn flow_style_keys_are_placed_at_the_key() {
        let text = "processors: { spread_drift: { alpha: 0.01 }, leak: { \"alpha\": 2, lookback: 60m } }\n";
        let col = |s: &str| text.find(s).map(|i| i + 1).expect("in the text");
        assert_eq!(
            locate(text, &["processors", "spread_drift", "alpha"]),
            at(1, col("alpha"))
        );
        assert_eq!(
            locate(text, &["processors", "leak", "alpha"]),
            at(1, col("\"alpha\""))
        );
        assert_eq!(
            locate(text, &["processors", "leak", "lookback"]),
            at(1, col("lookback"))
        );
    }

    #[test]
    fn comments_are_not_keys() {
        let text = "# leak:\n#   alpha: 1\nleak:  # alpha\n  # alpha: 3\n  alpha: 2\n";
        assert_eq!(locate(text, &["leak", "alpha"]), at(5, 3));
        assert_eq!(
            keys_named(text, "alpha"),
            vec![Position { line: 5, column: 3 }]
        );
    }

    #[test]
    fn the_same_key_in_two_sections_of_the_default_pipeline() {
        let text = include_str!("../../../pipelines/default.yaml");
        let processors = line_after(text, 0, "processors:");
        let spread_drift = line_after(text, processors, "  spread_drift:");
        let growth = line_after(text, processors, "  growth:");
        let leak = line_after(text, processors, "  leak:");
        assert!(spread_drift < leak && growth < leak);
        assert_eq!(
            locate(text, &["processors", "spread_drift", "alpha"]),
            at(line_after(text, spread_drift, "    alpha:"), 5)
        );
        assert_eq!(
            locate(text, &["processors", "leak", "alpha"]),
            at(line_after(text, leak, "    alpha:"), 5)
        );
        assert_eq!(
            locate(text, &["processors", "growth", "lookback"]),
            at(line_after(text, growth, "    lookback:"), 5)
        );
        assert_eq!(
            locate(text, &["processors", "leak", "lookback"]),
            at(line_after(text, leak, "    lookback:"), 5)
        );
        let exporters = line_after(text, 0, "exporters:");
        assert_eq!(
            locate(text, &["exporters", "otlp", "endpoint"]),
            at(
                line_after(
                    text,
                    line_after(text, exporters, "  otlp:"),
                    "    endpoint:"
                ),
                5
            ),
            "the exporter's endpoint, not the receiver's"
        );
    }

    #[test]
    fn a_missing_key_is_placed_at_its_section() {
        assert_eq!(locate(BLOCK, &["processors", "leak", "min_span"]), at(5, 3));
        assert_eq!(
            locate(BLOCK, &["processors", "growth", "lookback"]),
            at(2, 1)
        );
        assert_eq!(
            locate(BLOCK, &["processors", "leak", "alpha", "deeper"]),
            at(7, 5)
        );
        assert_eq!(locate(BLOCK, &["exporters"]), None);
        assert_eq!(locate("", &["processors"]), None);
        assert_eq!(locate(BLOCK, &[]), None);
    }

    #[test]
    fn a_sequence_index_is_placed_at_the_item() {
        let path = ["service", "pipelines", "memory", "processors"];
        assert_eq!(locate(BLOCK, &[&path[..], &["1"]].concat()), at(13, 11));
        assert_eq!(
            locate(BLOCK, &[&path[..], &["2"]].concat()),
            at(11, 7),
            "past the end"
        );
        assert_eq!(
            locate(BLOCK, &[&path[..], &["x"]].concat()),
            at(11, 7),
            "not an index"
        );

        let text = include_str!("../../../pipelines/default.yaml");
        let line = line_after(text, 0, "      processors: [");
        let column = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.find("spread_drift"))
            .map(|i| i + 1);
        assert_eq!(
            locate(text, &[&path[..], &["2"]].concat()),
            column.map(|column| Position { line, column })
        );
    }

    #[test]
    fn anchors_and_aliases() {
        let text = "base: &b\n  alpha: 1\nleak: *b\ngrowth: &g { alpha: 2 }\n";
        assert_eq!(locate(text, &["base", "alpha"]), at(2, 3));
        assert_eq!(locate(text, &["growth", "alpha"]), at(4, 14));
        assert_eq!(
            locate(text, &["leak", "alpha"]),
            at(3, 1),
            "an alias is not followed"
        );
    }

    #[test]
    fn text_after_a_syntax_error_is_not_read() {
        let text = "a:\n  b: 1\nc: [\n";
        assert_eq!(locate(text, &["a", "b"]), at(2, 3));
        assert_eq!(locate(text, &["c"]), at(3, 1));
        assert_eq!(locate(text, &["d"]), None);
    }

    #[test]
    fn keys_named_finds_mapping_keys_only() {
        let text = "a: alpha\nalpha: [alpha, {alpha: 1}]\nb:\n  - alpha: 2\n    c: alpha\n? [alpha]\n: x\n";
        assert_eq!(
            keys_named(text, "alpha"),
            vec![
                Position { line: 2, column: 1 },
                Position {
                    line: 2,
                    column: 17
                },
                Position { line: 4, column: 5 },
            ]
        );
        assert_eq!(keys_named(text, "c"), vec![Position { line: 5, column: 5 }]);
        assert!(keys_named(text, "x").is_empty());
    }
}
