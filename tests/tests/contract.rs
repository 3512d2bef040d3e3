//! The attribute names the SDK writes are the names the processor reads (DESIGN.md's MemorySpan convention).

use memdrift::signal::Signal;
use memspan::attributes;

#[test]
fn every_sdk_attribute_is_a_processor_signal() {
    for name in attributes::ALL_BYTES {
        let signal = Signal::from_span_attribute(name.as_bytes())
            .unwrap_or_else(|| panic!("{name} is not read"));
        assert_eq!(signal.name(), name);
    }
    // And every signal read from a span attribute is one the SDK can write.
    let from_spans = Signal::ALL
        .iter()
        .filter(|s| Signal::from_span_attribute(s.name().as_bytes()).is_some())
        .count();
    assert_eq!(from_spans, attributes::ALL_BYTES.len());
    assert_eq!(attributes::COHORT, memdrift::signal::attr::COHORT);
}
