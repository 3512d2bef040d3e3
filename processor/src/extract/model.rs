//! The OTLP fields extraction reads, decoded in place from the request's one contiguous buffer.
//!
//! Decoding the generated opentelemetry-proto types allocates about twenty times per span (names, ids, every
//! attribute key and string, events, links); a prost model of only the fields read still made a
//! reference-counted slice of the body for every key and string value and a vector per span. Here a request is
//! decoded with [`super::wire`] into three flat arenas (resources, spans or points, and attributes) whose
//! entries borrow keys, strings and ids from the body: a handful of allocations per request, none per value,
//! and every field extraction does not read is skipped where it lies. Strings stay bytes until a label is
//! needed, and only then are checked as UTF-8. The tags are those of `opentelemetry/proto/**/*.proto`, and
//! decoding follows protobuf's rules where a field repeats (the last scalar wins, a repeated message merges);
//! tests check the decoding against prost's of the generated types.
//!
//! Not read here on purpose: array, map and bytes attribute values (a memory attribute holding one is dropped
//! as `wrong_type` all the same), histograms and summaries (not memory levels).

use super::wire::{fields, WireError};

#[cfg(test)]
pub(crate) mod random_requests;

/// A run of entries in one of a request's arenas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Run {
    start: u32,
    end: u32,
}

impl Run {
    fn of<T>(self, arena: &[T]) -> &[T] {
        arena
            .get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }
}

/// Why a body was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Malformed(WireError),
    /// The decode budget refused the memory its arenas needed.
    OverBudget,
}

impl From<WireError> for DecodeError {
    fn from(e: WireError) -> DecodeError {
        DecodeError::Malformed(e)
    }
}

/// Asks the decode budget for every allocation of a request's arenas: given the bytes of an arena's next
/// allocation, whether it may be made. Arenas grow by doubling, so what is asked for in all is under twice what
/// they end up holding.
pub type Budget<'b> = &'b mut dyn FnMut(usize) -> bool;

fn unbudgeted(e: DecodeError) -> WireError {
    match e {
        DecodeError::Malformed(e) => e,
        DecodeError::OverBudget => WireError("over the decode budget"),
    }
}

/// A budget that allows everything (decoding with no budget to answer to: replay, tests).
fn unbounded(_: usize) -> bool {
    true
}

/// Appends to an arena, asking `budget` first when it must grow.
#[inline(always)]
pub(crate) fn push<T>(
    arena: &mut Vec<T>,
    entry: T,
    budget: &mut Budget<'_>,
) -> Result<(), DecodeError> {
    if arena.len() == arena.capacity() {
        grow(arena, budget)?;
    }
    arena.push(entry);
    Ok(())
}

#[cold]
fn grow<T>(arena: &mut Vec<T>, budget: &mut Budget<'_>) -> Result<(), DecodeError> {
    let capacity = (arena.capacity() * 2).max(4);
    if !budget(capacity * std::mem::size_of::<T>()) {
        return Err(DecodeError::OverBudget);
    }
    arena.reserve_exact(capacity - arena.len());
    Ok(())
}

#[inline(always)]
fn push_some<T>(
    arena: &mut Vec<T>,
    entry: Option<T>,
    budget: &mut Budget<'_>,
) -> Result<(), DecodeError> {
    match entry {
        Some(entry) => push(arena, entry, budget),
        None => Ok(()),
    }
}

/// Appends `entries` to `arena` and returns their run. For the builders (readers of other encodings, tests),
/// whose input is bounded by the request size; decoding checks its indices with [`mark`].
fn append<T>(arena: &mut Vec<T>, entries: impl IntoIterator<Item = T>) -> Run {
    let start = arena.len() as u32;
    arena.extend(entries);
    Run {
        start,
        end: arena.len() as u32,
    }
}

/// The arena index of the next entry.
fn mark<T>(arena: &[T]) -> Result<u32, WireError> {
    u32::try_from(arena.len()).map_err(|_| WireError("more entries than one request may hold"))
}

fn held<T>(arena: &Vec<T>) -> usize {
    arena.capacity() * std::mem::size_of::<T>()
}

/// An attribute value of a kind extraction reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A proto `string`, kept as bytes until used as a label.
    String(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// `AnyValue`: `None` inside when it holds a kind not read (array, map, bytes) or nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnyValue<'a> {
    pub value: Option<Value<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyValue<'a> {
    /// A proto `string`, kept as bytes: keys are only compared with known ASCII names.
    pub key: &'a [u8],
    pub value: Option<AnyValue<'a>>,
}

impl<'a> KeyValue<'a> {
    pub fn new(key: &'a str, value: Value<'a>) -> KeyValue<'a> {
        KeyValue {
            key: key.as_bytes(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    /// Decodes an attribute whose key `keep` accepts; `None` for one it does not, whose value is skipped
    /// unread (as prost skips a field it does not know).
    fn decode(
        buf: &'a [u8],
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<KeyValue<'a>>, WireError> {
        let mut key: &[u8] = b"";
        for field in fields(buf) {
            if let (1, w) = field? {
                key = w.bytes()?;
            }
        }
        if !keep(key) {
            return Ok(None);
        }
        let mut value = None;
        for field in fields(buf) {
            if let (2, w) = field? {
                // A repeated message field merges: within the oneof, the last value read wins.
                let mut any = value.unwrap_or(AnyValue { value: None });
                for f in fields(w.bytes()?) {
                    match f? {
                        (1, w) => any.value = Some(Value::String(w.bytes()?)),
                        (2, w) => any.value = Some(Value::Bool(w.varint()? != 0)),
                        (3, w) => any.value = Some(Value::Int(w.varint()? as i64)),
                        (4, w) => any.value = Some(Value::Double(f64::from_bits(w.fixed64()?))),
                        _ => {}
                    }
                }
                value = Some(any);
            }
        }
        Ok(Some(KeyValue { key, value }))
    }
}

/// Which attributes a decoding keeps, by key; the others are skipped where they lie, their values unread.
/// Extraction's configuration keeps what extraction reads ([`super::ExtractConfig`]); [`AllKeys`] keeps all.
pub trait KeepKeys {
    /// An attribute of a resource.
    fn resource(&self, key: &[u8]) -> bool;
    /// An attribute of a span or a metric point.
    fn item(&self, key: &[u8]) -> bool;
}

/// Keeps every attribute.
pub struct AllKeys;

impl KeepKeys for AllKeys {
    fn resource(&self, _: &[u8]) -> bool {
        true
    }
    fn item(&self, _: &[u8]) -> bool {
        true
    }
}

/// Decodes every `Resource` (field 1) of a `ResourceSpans` or `ResourceMetrics` message into `attributes`. A
/// repeated resource merges, so all of their attributes count, wherever they lie in the message.
fn decode_resource<'a>(
    buf: &'a [u8],
    attributes: &mut Vec<KeyValue<'a>>,
    keep: &impl KeepKeys,
    budget: &mut Budget<'_>,
) -> Result<Run, DecodeError> {
    let start = mark(attributes)?;
    for field in fields(buf) {
        if let (1, w) = field? {
            for f in fields(w.bytes()?) {
                if let (1, w) = f? {
                    push_some(
                        attributes,
                        KeyValue::decode(w.bytes()?, |k| keep.resource(k))?,
                        budget,
                    )?;
                }
            }
        }
    }
    Ok(Run {
        start,
        end: mark(attributes)?,
    })
}

/// The messages in field `number` of `buf`, each handed to `each`.
fn each_message<'a>(
    buf: &'a [u8],
    number: u32,
    mut each: impl FnMut(&'a [u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    for field in fields(buf) {
        let (n, w) = field?;
        if n == number {
            each(w.bytes()?)?;
        }
    }
    Ok(())
}

impl ResourceRuns {
    /// A resource whose items begin at `items` (none yet).
    fn new(resource: Run, items: usize) -> ResourceRuns {
        let at = items as u32;
        ResourceRuns {
            resource,
            items: Run { start: at, end: at },
        }
    }
}

/// The bytes of one resource's entry in a request's arena, for the decode budget.
pub const RESOURCE_ENTRY_BYTES: usize = std::mem::size_of::<ResourceRuns>();

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    attributes: Run,
}

impl<'a> Span<'a> {
    /// A span with no attributes yet (see [`TraceRequest::push_span`]).
    pub fn new(trace_id: &'a [u8], span_id: &'a [u8], start: u64, end: u64) -> Span<'a> {
        Span {
            trace_id,
            span_id,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes: Run::default(),
        }
    }
}

/// One `ResourceSpans` or `ResourceMetrics`: its resource's attributes and its spans or metrics (of every
/// scope).
#[derive(Clone, Copy, Debug, PartialEq)]
struct ResourceRuns {
    resource: Run,
    items: Run,
}

/// `ExportTraceServiceRequest`, and the Collector file exporter's `TracesData` (same field 1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceRequest<'a> {
    resources: Vec<ResourceRuns>,
    spans: Vec<Span<'a>>,
    attributes: Vec<KeyValue<'a>>,
}

impl<'a> TraceRequest<'a> {
    /// Decodes every field read, every attribute included.
    pub fn decode(body: &'a [u8]) -> Result<TraceRequest<'a>, WireError> {
        TraceRequest::decode_keeping(body, &AllKeys)
    }

    /// Decodes every field read, and the attributes `keep` accepts.
    pub fn decode_keeping(
        body: &'a [u8],
        keep: &impl KeepKeys,
    ) -> Result<TraceRequest<'a>, WireError> {
        TraceRequest::decode_within(body, keep, &mut unbounded).map_err(unbudgeted)
    }

    /// Decodes every field read and the attributes `keep` accepts, asking `budget` for each allocation.
    pub fn decode_within(
        body: &'a [u8],
        keep: &impl KeepKeys,
        mut budget: Budget<'_>,
    ) -> Result<TraceRequest<'a>, DecodeError> {
        let budget = &mut budget;
        let mut req = TraceRequest::default();
        each_message(body, 1, |rs| {
            let resource = decode_resource(rs, &mut req.attributes, keep, budget)?;
            let start = mark(&req.spans)?;
            each_message(rs, 2, |scope| {
                each_message(scope, 2, |span| req.decode_span(span, keep, budget))
            })?;
            let runs = ResourceRuns {
                resource,
                items: Run {
                    start,
                    end: mark(&req.spans)?,
                },
            };
            push(&mut req.resources, runs, budget)
        })?;
        Ok(req)
    }

    fn decode_span(
        &mut self,
        buf: &'a [u8],
        keep: &impl KeepKeys,
        budget: &mut Budget<'_>,
    ) -> Result<(), DecodeError> {
        let mut span = Span::new(b"", b"", 0, 0);
        span.attributes.start = mark(&self.attributes)?;
        for field in fields(buf) {
            match field? {
                (1, w) => span.trace_id = w.bytes()?,
                (2, w) => span.span_id = w.bytes()?,
                (7, w) => span.start_time_unix_nano = w.fixed64()?,
                (8, w) => span.end_time_unix_nano = w.fixed64()?,
                (9, w) => push_some(
                    &mut self.attributes,
                    KeyValue::decode(w.bytes()?, |k| keep.item(k))?,
                    budget,
                )?,
                _ => {}
            }
        }
        span.attributes.end = mark(&self.attributes)?;
        push(&mut self.spans, span, budget)
    }

    /// Each `ResourceSpans` as (its resource's attributes, its spans).
    pub fn resource_spans(&self) -> impl Iterator<Item = (&[KeyValue<'a>], &[Span<'a>])> {
        self.resources
            .iter()
            .map(|r| (r.resource.of(&self.attributes), r.items.of(&self.spans)))
    }

    pub fn attributes(&self, span: &Span<'a>) -> &[KeyValue<'a>] {
        span.attributes.of(&self.attributes)
    }

    pub fn spans(&self) -> &[Span<'a>] {
        &self.spans
    }

    /// The bytes its arenas hold (what the decode budget must have weighed).
    pub fn heap_bytes(&self) -> usize {
        held(&self.resources) + held(&self.spans) + held(&self.attributes)
    }

    /// An empty request whose arenas hold what a reader of another encoding will add without growing.
    pub fn with_capacity(resources: usize, spans: usize, attributes: usize) -> TraceRequest<'a> {
        TraceRequest {
            resources: Vec::with_capacity(resources),
            spans: Vec::with_capacity(spans),
            attributes: Vec::with_capacity(attributes),
        }
    }

    /// The bytes [`TraceRequest::with_capacity`] allocates.
    pub fn bytes_for(resources: usize, spans: usize, attributes: usize) -> usize {
        [
            resources.saturating_mul(RESOURCE_ENTRY_BYTES),
            spans.saturating_mul(std::mem::size_of::<Span<'static>>()),
            attributes.saturating_mul(std::mem::size_of::<KeyValue<'static>>()),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// Begins a `ResourceSpans` (for readers of other encodings, and tests).
    pub fn begin_resource(&mut self, attributes: impl IntoIterator<Item = KeyValue<'a>>) {
        let resource = append(&mut self.attributes, attributes);
        self.resources
            .push(ResourceRuns::new(resource, self.spans.len()));
    }

    /// Adds a span with its attributes to the last resource begun (one with no attributes when none was).
    pub fn push_span(
        &mut self,
        mut span: Span<'a>,
        attributes: impl IntoIterator<Item = KeyValue<'a>>,
    ) {
        if self.resources.is_empty() {
            self.begin_resource([]);
        }
        span.attributes = append(&mut self.attributes, attributes);
        self.spans.push(span);
        if let Some(last) = self.resources.last_mut() {
            last.items.end = self.spans.len() as u32;
        }
    }
}

/// Which number-point metric a `Metric` holds (others are not read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Gauge,
    Sum,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PointValue {
    AsDouble(f64),
    AsInt(i64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NumberDataPoint {
    pub time_unix_nano: u64,
    pub value: Option<PointValue>,
    attributes: Run,
}

impl NumberDataPoint {
    pub fn new(time_unix_nano: u64, value: Option<PointValue>) -> NumberDataPoint {
        NumberDataPoint {
            time_unix_nano,
            value,
            attributes: Run::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric<'a> {
    /// A proto `string`, kept as bytes: looked up in the metric table, where only UTF-8 names are.
    pub name: &'a [u8],
    /// `None` for a histogram, summary or a metric with no data.
    pub kind: Option<MetricKind>,
    points: Run,
}

/// `ExportMetricsServiceRequest`, and the Collector file exporter's `MetricsData`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsRequest<'a> {
    resources: Vec<ResourceRuns>,
    metrics: Vec<Metric<'a>>,
    points: Vec<NumberDataPoint>,
    attributes: Vec<KeyValue<'a>>,
}

impl<'a> MetricsRequest<'a> {
    /// Decodes every field read, every attribute included.
    pub fn decode(body: &'a [u8]) -> Result<MetricsRequest<'a>, WireError> {
        MetricsRequest::decode_keeping(body, &AllKeys)
    }

    /// Decodes every field read, and the attributes `keep` accepts.
    pub fn decode_keeping(
        body: &'a [u8],
        keep: &impl KeepKeys,
    ) -> Result<MetricsRequest<'a>, WireError> {
        MetricsRequest::decode_within(body, keep, &mut unbounded).map_err(unbudgeted)
    }

    /// Decodes every field read and the attributes `keep` accepts, asking `budget` for each allocation.
    pub fn decode_within(
        body: &'a [u8],
        keep: &impl KeepKeys,
        mut budget: Budget<'_>,
    ) -> Result<MetricsRequest<'a>, DecodeError> {
        let budget = &mut budget;
        let mut req = MetricsRequest::default();
        each_message(body, 1, |rm| {
            let resource = decode_resource(rm, &mut req.attributes, keep, budget)?;
            let start = mark(&req.metrics)?;
            each_message(rm, 2, |scope| {
                each_message(scope, 2, |m| req.decode_metric(m, keep, budget))
            })?;
            let runs = ResourceRuns {
                resource,
                items: Run {
                    start,
                    end: mark(&req.metrics)?,
                },
            };
            push(&mut req.resources, runs, budget)
        })?;
        Ok(req)
    }

    fn decode_metric(
        &mut self,
        buf: &'a [u8],
        keep: &impl KeepKeys,
        budget: &mut Budget<'_>,
    ) -> Result<(), DecodeError> {
        let (points, attributes) = (mark(&self.points)?, mark(&self.attributes)?);
        let mut metric = Metric {
            name: b"",
            kind: None,
            points: Run {
                start: points,
                end: points,
            },
        };
        for field in fields(buf) {
            let (kind, w) = match field? {
                (1, w) => {
                    metric.name = w.bytes()?;
                    continue;
                }
                (5, w) => (MetricKind::Gauge, w),
                (7, w) => (MetricKind::Sum, w),
                _ => continue,
            };
            // The data oneof: another kind replaces what was read; the same kind again merges (points added).
            if metric.kind.is_some_and(|k| k != kind) {
                self.points.truncate(points as usize);
                self.attributes.truncate(attributes as usize);
            }
            metric.kind = Some(kind);
            each_message(w.bytes()?, 1, |p| self.decode_point(p, keep, budget))?;
        }
        metric.points.end = mark(&self.points)?;
        push(&mut self.metrics, metric, budget)
    }

    fn decode_point(
        &mut self,
        buf: &'a [u8],
        keep: &impl KeepKeys,
        budget: &mut Budget<'_>,
    ) -> Result<(), DecodeError> {
        let mut point = NumberDataPoint::new(0, None);
        point.attributes.start = mark(&self.attributes)?;
        for field in fields(buf) {
            match field? {
                (3, w) => point.time_unix_nano = w.fixed64()?,
                (4, w) => point.value = Some(PointValue::AsDouble(f64::from_bits(w.fixed64()?))),
                (6, w) => point.value = Some(PointValue::AsInt(w.fixed64()? as i64)),
                (7, w) => push_some(
                    &mut self.attributes,
                    KeyValue::decode(w.bytes()?, |k| keep.item(k))?,
                    budget,
                )?,
                _ => {}
            }
        }
        point.attributes.end = mark(&self.attributes)?;
        push(&mut self.points, point, budget)
    }

    /// Each `ResourceMetrics` as (its resource's attributes, its metrics).
    pub fn resource_metrics(&self) -> impl Iterator<Item = (&[KeyValue<'a>], &[Metric<'a>])> {
        self.resources
            .iter()
            .map(|r| (r.resource.of(&self.attributes), r.items.of(&self.metrics)))
    }

    pub fn points(&self, metric: &Metric<'a>) -> &[NumberDataPoint] {
        metric.points.of(&self.points)
    }

    pub fn attributes(&self, point: &NumberDataPoint) -> &[KeyValue<'a>] {
        point.attributes.of(&self.attributes)
    }

    /// The bytes its arenas hold (what the decode budget must have weighed).
    pub fn heap_bytes(&self) -> usize {
        held(&self.resources) + held(&self.metrics) + held(&self.points) + held(&self.attributes)
    }

    /// An empty request whose arenas hold what a reader of another encoding will add without growing.
    pub fn with_capacity(
        resources: usize,
        metrics: usize,
        points: usize,
        attributes: usize,
    ) -> MetricsRequest<'a> {
        MetricsRequest {
            resources: Vec::with_capacity(resources),
            metrics: Vec::with_capacity(metrics),
            points: Vec::with_capacity(points),
            attributes: Vec::with_capacity(attributes),
        }
    }

    /// The bytes [`MetricsRequest::with_capacity`] allocates.
    pub fn bytes_for(resources: usize, metrics: usize, points: usize, attributes: usize) -> usize {
        [
            resources.saturating_mul(RESOURCE_ENTRY_BYTES),
            metrics.saturating_mul(std::mem::size_of::<Metric<'static>>()),
            points.saturating_mul(std::mem::size_of::<NumberDataPoint>()),
            attributes.saturating_mul(std::mem::size_of::<KeyValue<'static>>()),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// Begins a `ResourceMetrics` (for readers of other encodings, and tests).
    pub fn begin_resource(&mut self, attributes: impl IntoIterator<Item = KeyValue<'a>>) {
        let resource = append(&mut self.attributes, attributes);
        self.resources
            .push(ResourceRuns::new(resource, self.metrics.len()));
    }

    /// Adds a metric with no points yet to the last resource begun (one with no attributes when none was).
    pub fn begin_metric(&mut self, name: &'a [u8], kind: Option<MetricKind>) {
        if self.resources.is_empty() {
            self.begin_resource([]);
        }
        let points = self.points.len() as u32;
        self.metrics.push(Metric {
            name,
            kind,
            points: Run {
                start: points,
                end: points,
            },
        });
        if let Some(last) = self.resources.last_mut() {
            last.items.end = self.metrics.len() as u32;
        }
    }

    /// Adds a point with its attributes to the last metric begun.
    pub fn push_point(
        &mut self,
        mut point: NumberDataPoint,
        attributes: impl IntoIterator<Item = KeyValue<'a>>,
    ) {
        if self.metrics.is_empty() {
            self.begin_metric(b"", None);
        }
        point.attributes = append(&mut self.attributes, attributes);
        self.points.push(point);
        if let Some(last) = self.metrics.last_mut() {
            last.points.end = self.points.len() as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::random_requests;
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1 as pc;
    use opentelemetry_proto::tonic::metrics::v1 as pm;
    use opentelemetry_proto::tonic::trace::v1 as pt;
    use prost::Message;
    use rand::{Rng, SeedableRng};

    fn pkv(key: &str, v: pc::any_value::Value) -> pc::KeyValue {
        pc::KeyValue {
            key: key.into(),
            value: Some(pc::AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    /// What this model should read from a generated attribute.
    fn expected<'a>(kv: &'a pc::KeyValue) -> KeyValue<'a> {
        use pc::any_value::Value as V;
        KeyValue {
            key: kv.key.as_bytes(),
            value: kv.value.as_ref().map(|a| AnyValue {
                value: match &a.value {
                    Some(V::StringValue(s)) => Some(Value::String(s.as_bytes())),
                    Some(V::BoolValue(b)) => Some(Value::Bool(*b)),
                    Some(V::IntValue(i)) => Some(Value::Int(*i)),
                    Some(V::DoubleValue(d)) => Some(Value::Double(*d)),
                    _ => None,
                },
            }),
        }
    }

    /// Random generated requests, encoded by prost, read back field by field.
    #[test]
    fn reads_what_prost_writes_for_random_trace_requests() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let shape = random_requests::Shape {
            attribute: random_requests::attribute,
            trace_id_len: |rng| rng.random_range(0..17),
        };
        for _ in 0..300 {
            let full = random_requests::trace_request(&mut rng, shape);
            let body = full.encode_to_vec();
            let lean = TraceRequest::decode(&body).expect("valid");
            let got: Vec<_> = lean.resource_spans().collect();
            assert_eq!(got.len(), full.resource_spans.len());
            for ((attrs, spans), rs) in got.into_iter().zip(&full.resource_spans) {
                let want: Vec<_> = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter().map(expected))
                    .collect();
                assert_eq!(attrs, want.as_slice());
                let all: Vec<_> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
                assert_eq!(spans.len(), all.len());
                for (span, s) in spans.iter().zip(all) {
                    assert_eq!(
                        (span.trace_id, span.span_id),
                        (s.trace_id.as_slice(), s.span_id.as_slice())
                    );
                    assert_eq!(
                        (span.start_time_unix_nano, span.end_time_unix_nano),
                        (s.start_time_unix_nano, s.end_time_unix_nano)
                    );
                    let want: Vec<_> = s.attributes.iter().map(expected).collect();
                    assert_eq!(lean.attributes(span), want.as_slice());
                }
            }
        }
    }

    #[test]
    fn reads_what_prost_writes_for_random_metrics_requests() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let shape = random_requests::Shape {
            attribute: random_requests::attribute,
            trace_id_len: |_| 16,
        };
        for _ in 0..300 {
            let full = random_requests::metrics_request(&mut rng, shape);
            let body = full.encode_to_vec();
            let lean = MetricsRequest::decode(&body).expect("valid");
            let got: Vec<_> = lean.resource_metrics().collect();
            assert_eq!(got.len(), full.resource_metrics.len());
            for ((attrs, metrics), rm) in got.into_iter().zip(&full.resource_metrics) {
                let want: Vec<_> = rm
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter().map(expected))
                    .collect();
                assert_eq!(attrs, want.as_slice());
                let all: Vec<_> = rm.scope_metrics.iter().flat_map(|s| &s.metrics).collect();
                assert_eq!(metrics.len(), all.len());
                for (metric, m) in metrics.iter().zip(all) {
                    assert_eq!(metric.name, m.name.as_bytes());
                    let (kind, points) = match &m.data {
                        Some(pm::metric::Data::Gauge(g)) => {
                            (Some(MetricKind::Gauge), &g.data_points[..])
                        }
                        Some(pm::metric::Data::Sum(s)) => {
                            (Some(MetricKind::Sum), &s.data_points[..])
                        }
                        _ => (None, &[][..]),
                    };
                    assert_eq!(metric.kind, kind);
                    let read = lean.points(metric);
                    assert_eq!(read.len(), points.len());
                    for (p, q) in read.iter().zip(points) {
                        assert_eq!(p.time_unix_nano, q.time_unix_nano);
                        assert_eq!(
                            p.value,
                            q.value.map(|v| match v {
                                pm::number_data_point::Value::AsInt(i) => PointValue::AsInt(i),
                                pm::number_data_point::Value::AsDouble(d) =>
                                    PointValue::AsDouble(d),
                            })
                        );
                        let want: Vec<_> = q.attributes.iter().map(expected).collect();
                        assert_eq!(lean.attributes(p), want.as_slice());
                    }
                }
            }
        }
    }

    /// Protobuf's rules where a field repeats, written out by hand: a resource after the spans and a second
    /// resource both count, the last trace id wins, a repeated value merges with the last kind winning.
    #[test]
    fn repeated_fields_follow_protobuf_s_merge_rules() {
        fn len(field: u8, payload: &[u8]) -> Vec<u8> {
            let mut out = vec![(field << 3) | 2, payload.len() as u8];
            out.extend_from_slice(payload);
            out
        }
        let kv = |key: &str, value: Vec<u8>| [len(1, key.as_bytes()), len(2, &value)].concat();
        let int = |i: u8| vec![0x18, i];
        let string = |s: &str| len(1, s.as_bytes());
        let span = [
            len(1, &[1; 16]),
            len(1, &[2; 16]),
            len(
                9,
                &[
                    len(1, b"memspan.rss.end"),
                    len(2, &string("x")),
                    len(2, &int(7)),
                ]
                .concat(),
            ),
        ]
        .concat();
        let rs = [
            len(2, &len(2, &span)),
            len(1, &len(1, &kv("service.name", string("a")))),
            len(1, &len(1, &kv("service.instance.id", string("i")))),
        ]
        .concat();
        let body = len(1, &rs);
        let req = TraceRequest::decode(&body).expect("valid");
        let (resource, spans) = req.resource_spans().next().expect("one");
        assert_eq!(
            resource,
            &[
                KeyValue::new("service.name", Value::String(b"a")),
                KeyValue::new("service.instance.id", Value::String(b"i")),
            ]
        );
        assert_eq!(spans[0].trace_id, &[2; 16]);
        assert_eq!(
            req.attributes(&spans[0]),
            &[KeyValue::new("memspan.rss.end", Value::Int(7))]
        );
        // And prost agrees, through the generated types.
        let full = ExportTraceServiceRequest::decode(&body[..]).expect("prost decodes it");
        let rs = &full.resource_spans[0];
        assert_eq!(rs.resource.as_ref().map(|r| r.attributes.len()), Some(2));
        assert_eq!(rs.scope_spans[0].spans[0].trace_id, vec![2; 16]);
        assert_eq!(
            rs.scope_spans[0].spans[0].attributes[0].value,
            Some(pc::AnyValue {
                value: Some(pc::any_value::Value::IntValue(7))
            })
        );
    }

    #[test]
    fn a_metric_s_last_data_kind_wins_and_the_same_kind_merges() {
        fn len(field: u8, payload: &[u8]) -> Vec<u8> {
            let mut out = vec![(field << 3) | 2, payload.len() as u8];
            out.extend_from_slice(payload);
            out
        }
        let point = |t: u8| {
            let mut p = vec![0x19, t, 0, 0, 0, 0, 0, 0, 0];
            p.extend(len(7, &[len(1, b"k"), len(2, &[0x18, t])].concat()));
            len(1, &p)
        };
        let metric = [
            len(1, b"container.memory.usage"),
            len(5, &point(1)),
            len(7, &point(2)),
            len(7, &point(3)),
        ]
        .concat();
        let body = len(1, &len(2, &len(2, &metric)));
        let req = MetricsRequest::decode(&body).expect("valid");
        let (_, metrics) = req.resource_metrics().next().expect("one");
        assert_eq!(metrics[0].kind, Some(MetricKind::Sum));
        let points = req.points(&metrics[0]);
        assert_eq!(
            points.iter().map(|p| p.time_unix_nano).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(
            req.attributes(&points[1]),
            &[KeyValue::new("k", Value::Int(3))]
        );
        let full = ExportMetricsServiceRequest::decode(&body[..]).expect("prost decodes it");
        match &full.resource_metrics[0].scope_metrics[0].metrics[0].data {
            Some(pm::metric::Data::Sum(s)) => assert_eq!(s.data_points.len(), 2),
            other => panic!("prost read {other:?}"),
        }
    }

    #[test]
    fn a_body_prost_refuses_is_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let good = ExportTraceServiceRequest {
            resource_spans: vec![pt::ResourceSpans {
                scope_spans: vec![pt::ScopeSpans {
                    spans: vec![pt::Span {
                        attributes: vec![pkv("memspan.rss.end", pc::any_value::Value::IntValue(1))],
                        end_time_unix_nano: 5,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let mut disagreements = 0;
        for _ in 0..2000 {
            let mut body = good.clone();
            let i = rng.random_range(0..body.len());
            body[i] = rng.random();
            if rng.random_bool(0.3) {
                body.truncate(rng.random_range(0..body.len()));
            }
            let ours = TraceRequest::decode(&body).is_ok();
            let theirs = ExportTraceServiceRequest::decode(&body[..]).is_ok();
            // prost also checks UTF-8 in string fields this model reads as bytes, and the types of fields it
            // skips; so prost may refuse what this reads, never the other way round.
            if ours != theirs {
                assert!(ours, "refused a body prost decodes: {body:?}");
                disagreements += 1;
            }
        }
        assert!(disagreements < 400, "{disagreements} disagreements");
    }
}
