//! OTLP/JSON reading, lenient where the specification allows and the wire demands.
//!
//! A general JSON deserializer fails a whole request on a single value it cannot read (a `"doubleValue":
//! "NaN"`, proto3 JSON's spelling of NaN that the Collector's `file` exporter writes, an `"intValue": "12MB"`,
//! a number beyond f64's range, a key given twice), and builds a string per key and value. memdrift must
//! reject such a value alone and keep the rest of the batch, and reads JSON at the rate it reads protobuf. So
//! this reader walks the body once ([`cursor`]), reads only the fields extraction uses into flat arenas whose
//! strings are slices of the body, skips every other field where it lies, and converts into extraction's model
//! ([`crate::extract::model`]). Bad values survive the reading as values of the wrong kind, and extraction
//! counts them by reason.
//!
//! What it accepts, per the OTLP/JSON rules: lowerCamelCase keys, unknown keys ignored, `null` for any field
//! (its default), trace and span ids in hex, 64-bit integers as strings or numbers, doubles as numbers or the
//! strings "NaN", "Infinity", "-Infinity". A key given twice in one object: the first wins. A number beyond
//! f64's range: that value is missing. What it refuses, whole: a body that is not JSON (RFC 8259, UTF-8,
//! nesting up to 128), a document that is not an object, an OTLP message where an array or object belongs,
//! and a timestamp that is not a whole non-negative number (nothing in the document could be placed in event
//! time reliably, and writers never produce one). Fields memdrift does not read (events, links, status,
//! histograms, ...) are skipped, so the conversion is not a round trip; it is a faithful reading of every
//! field extraction looks at.

mod cursor;

use crate::extract::model::{self as m, AllKeys, Budget, KeepKeys};
pub use cursor::JsonError;
use cursor::{Cursor, Key, Num, Result, OVER_BUDGET};

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    Malformed(JsonError),
    /// The decode budget refused the memory reading it needed.
    OverBudget,
}

impl From<Box<JsonError>> for ReadError {
    fn from(e: Box<JsonError>) -> ReadError {
        if e.what == OVER_BUDGET {
            ReadError::OverBudget
        } else {
            ReadError::Malformed(*e)
        }
    }
}

/// A budget that allows everything (reading with no budget to answer to: replay, tests).
fn unbounded(_: usize) -> bool {
    true
}

/// For readings with an unbounded budget, which can only fail as malformed.
fn malformed(e: ReadError) -> JsonError {
    match e {
        ReadError::Malformed(e) => e,
        ReadError::OverBudget => JsonError {
            at: 0,
            what: OVER_BUDGET,
            field: "",
            eof: false,
        },
    }
}

/// One OTLP/JSON document read: an export request body, or one line of the Collector's `file` exporter. Either
/// signal may be present; `resourceLogs` is checked as JSON and skipped.
#[derive(Debug, Default)]
pub struct JsonDocument<'a> {
    /// Strings that held escapes, unescaped.
    scratch: Vec<u8>,
    span_resources: Vec<Resource>,
    spans: Vec<Span>,
    metric_resources: Vec<Resource>,
    metrics: Vec<Metric<'a>>,
    points: Vec<Point>,
    attributes: Vec<Attribute<'a>>,
}

/// A run of entries in one of the document's arenas.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
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

/// A `ResourceSpans` or `ResourceMetrics`: its resource's attributes, and its spans or metrics.
#[derive(Debug, Clone, Copy)]
struct Resource {
    attributes: Run,
    items: Run,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    trace_id: Option<[u8; 16]>,
    span_id: Option<[u8; 8]>,
    start: u64,
    end: u64,
    attributes: Run,
}

#[derive(Debug, Clone, Copy)]
struct Metric<'a> {
    name: Key<'a>,
    kind: Option<m::MetricKind>,
    points: Run,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    time: u64,
    value: Option<m::PointValue>,
    attributes: Run,
}

#[derive(Debug, Clone, Copy)]
struct Attribute<'a> {
    key: Key<'a>,
    /// `None`: no `value`; `Some(None)`: a value of a kind not read, or of the wrong JSON type.
    value: Option<Option<Value<'a>>>,
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    String(Key<'a>),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// A number field as found: a value, or text that is not a number of that kind (kept to be counted).
#[derive(Debug, Clone, Copy)]
enum Number<'a> {
    Int(i64),
    Double(f64),
    Text(Key<'a>),
    /// An array or object where a number belongs: skipped as it is read, a value of the wrong type.
    Wrong,
}

/// What a number field should hold.
#[derive(Clone, Copy)]
enum Want {
    Int,
    Double,
}

/// The value of each hex digit, 0xff for other bytes.
static HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// `N` bytes from exactly `2N` hex digits of either case.
fn hex_id<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut id = [0; N];
    let mut bad = 0;
    for (byte, pair) in id.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (HEX[pair[0] as usize], HEX[pair[1] as usize]);
        bad |= hi | lo;
        *byte = hi << 4 | lo;
    }
    // A digit's value is under 16; 0xff marks any other byte.
    (bad < 16).then_some(id)
}

/// An integer written as up to 19 decimal digits with an optional `-` (how int64 values and timestamps are
/// written in OTLP/JSON strings), read without the general parser; `None` for any other text, and for a
/// magnitude beyond i64's.
fn plain_int(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // 19 digits stay under u64::MAX.
    let mut v: u64 = 0;
    for &d in digits {
        let x = d.wrapping_sub(b'0');
        if x > 9 {
            return None;
        }
        v = v * 10 + u64::from(x);
    }
    if negative {
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

/// Starts reading `body`: checks it is UTF-8 and that it is an object, and returns the cursor past its `{`.
fn open<'a, 'b>(body: &'a [u8], budget: Budget<'b>, what: &'static str) -> Result<Cursor<'a, 'b>> {
    let mut c = Cursor::new(body, budget);
    if let Err(e) = std::str::from_utf8(body) {
        return Err(Box::new(JsonError {
            at: e.valid_up_to(),
            what: "not UTF-8",
            field: "",
            eof: false,
        }));
    }
    c.expect(b'{', what)?;
    Ok(c)
}

/// Counts the log records of an OTLP/JSON logs body without building them (each is skipped as it is read;
/// only a string with an escape allocates, once, from `budget`).
pub fn count_log_records(body: &[u8], budget: Budget<'_>) -> std::result::Result<usize, ReadError> {
    Ok(log_records(body, budget)?)
}

fn log_records(body: &[u8], budget: Budget<'_>) -> Result<usize> {
    let mut c = open(
        body,
        budget,
        "expected a JSON object (ExportLogsServiceRequest)",
    )?;
    let mut scratch = Vec::new();
    let mut records = 0usize;
    let mut seen = false;
    let mut first = true;
    while let Some(key) = c.next_key(&mut first, &mut scratch)? {
        let logs = key.bytes(&scratch) == b"resourceLogs";
        forget(&mut scratch, key);
        if logs && !std::mem::replace(&mut seen, true) {
            each(&mut c, "resourceLogs", &mut |c| {
                member(c, &mut scratch, b"scopeLogs", &mut |c, scratch| {
                    each(c, "scopeLogs", &mut |c| {
                        member(c, scratch, b"logRecords", &mut |c, scratch| {
                            each(c, "logRecords", &mut |c| {
                                records = records.saturating_add(1);
                                c.skip(scratch)
                            })
                        })
                    })
                })
            })?;
        } else {
            c.skip(&mut scratch)?;
        }
    }
    c.end()?;
    Ok(records)
}

/// Reads each element of an array (or nothing, for `null`) with `f`.
fn each(
    c: &mut Cursor<'_, '_>,
    what: &'static str,
    f: &mut dyn FnMut(&mut Cursor<'_, '_>) -> Result<()>,
) -> Result<()> {
    if c.eat_null()? {
        return Ok(());
    }
    if !c.eat(b'[') {
        return c.error_in("expected an array", what);
    }
    let mut first = true;
    while c.next_element(&mut first)? {
        f(c)?;
    }
    Ok(())
}

/// Reads an object (or nothing, for `null`), handing the first value of `name` to `f` and skipping the rest.
fn member(
    c: &mut Cursor<'_, '_>,
    scratch: &mut Vec<u8>,
    name: &[u8],
    f: &mut dyn FnMut(&mut Cursor<'_, '_>, &mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    if c.eat_null()? {
        return Ok(());
    }
    if !c.eat(b'{') {
        return c.error("expected an object");
    }
    let mut seen = false;
    let mut first = true;
    while let Some(key) = c.next_key(&mut first, scratch)? {
        let found = key.bytes(scratch) == name;
        forget(scratch, key);
        if found && !std::mem::replace(&mut seen, true) {
            f(c, scratch)?;
        } else {
            c.skip(scratch)?;
        }
    }
    Ok(())
}

/// Frees the scratch a key was unescaped into (keys are compared, never kept).
fn forget(scratch: &mut Vec<u8>, key: Key<'_>) {
    if let Key::Scratch(from, _) = key {
        scratch.truncate(from);
    }
}

/// Reads a document into a [`JsonDocument`], keeping the attributes `keep` accepts.
struct Reader<'a, 'b, 'k, K: KeepKeys> {
    c: Cursor<'a, 'b>,
    doc: JsonDocument<'a>,
    keep: &'k K,
}

/// Reads one object of an array into the document.
type ReadOne<R> = fn(&mut R) -> Result<()>;

/// The signal a `resourceSpans` or `resourceMetrics` entry carries.
#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

/// Bits of the fields an object has had, for "the first wins".
struct Seen(u8);

impl Seen {
    /// Whether field `bit` is new, marking it seen.
    fn first(&mut self, bit: u8) -> bool {
        let new = self.0 & (1 << bit) == 0;
        self.0 |= 1 << bit;
        new
    }
}

impl<'a> JsonDocument<'a> {
    /// Reads a document, every attribute included.
    pub fn parse(body: &'a [u8]) -> std::result::Result<JsonDocument<'a>, JsonError> {
        JsonDocument::parse_keeping(body, &AllKeys)
    }

    /// Reads a document and the attributes `keep` accepts; the others are skipped where they lie.
    pub fn parse_keeping(
        body: &'a [u8],
        keep: &impl KeepKeys,
    ) -> std::result::Result<JsonDocument<'a>, JsonError> {
        JsonDocument::parse_within(body, keep, &mut unbounded).map_err(malformed)
    }

    /// Reads a document and the attributes `keep` accepts, asking `budget` for every allocation: those of
    /// the reading as it goes, and at the end those [`JsonDocument::traces`] and [`JsonDocument::metrics`]
    /// will make.
    pub fn parse_within(
        body: &'a [u8],
        keep: &impl KeepKeys,
        budget: Budget<'_>,
    ) -> std::result::Result<JsonDocument<'a>, ReadError> {
        let c = open(
            body,
            budget,
            "expected a JSON object (TracesData or MetricsData)",
        )?;
        let mut r = Reader {
            c,
            doc: JsonDocument::default(),
            keep,
        };
        r.document()?;
        r.c.end()?;
        let model = r.doc.model_bytes();
        if !(r.c.budget)(model) {
            return Err(ReadError::OverBudget);
        }
        Ok(r.doc)
    }

    /// What its conversions into extraction's model allocate.
    fn model_bytes(&self) -> usize {
        let traces = match self.span_resources.len() {
            0 => 0,
            n => m::TraceRequest::bytes_for(n, self.spans.len(), self.attributes.len()),
        };
        let metrics = match self.metric_resources.len() {
            0 => 0,
            n => m::MetricsRequest::bytes_for(
                n,
                self.metrics.len(),
                self.points.len(),
                self.attributes.len(),
            ),
        };
        traces.saturating_add(metrics)
    }

    fn text(&self, key: Key<'a>) -> &[u8] {
        key.bytes(&self.scratch)
    }

    fn attributes(&self, run: Run) -> impl Iterator<Item = m::KeyValue<'_>> {
        run.of(&self.attributes).iter().map(|a| m::KeyValue {
            key: self.text(a.key),
            value: a.value.map(|v| m::AnyValue {
                value: v.map(|v| match v {
                    Value::String(s) => m::Value::String(self.text(s)),
                    Value::Bool(b) => m::Value::Bool(b),
                    Value::Int(i) => m::Value::Int(i),
                    Value::Double(d) => m::Value::Double(d),
                }),
            }),
        })
    }

    /// Its spans in extraction's model, borrowing from the document.
    pub fn traces(&self) -> m::TraceRequest<'_> {
        let mut req = match self.span_resources.len() {
            0 => m::TraceRequest::default(),
            n => m::TraceRequest::with_capacity(n, self.spans.len(), self.attributes.len()),
        };
        for r in &self.span_resources {
            req.begin_resource(self.attributes(r.attributes));
            for s in r.items.of(&self.spans) {
                let span = m::Span::new(
                    s.trace_id.as_ref().map_or(&[][..], |id| &id[..]),
                    s.span_id.as_ref().map_or(&[][..], |id| &id[..]),
                    s.start,
                    s.end,
                );
                req.push_span(span, self.attributes(s.attributes));
            }
        }
        req
    }

    /// Its metrics in extraction's model, borrowing from the document.
    pub fn metrics(&self) -> m::MetricsRequest<'_> {
        let mut req = match self.metric_resources.len() {
            0 => m::MetricsRequest::default(),
            n => m::MetricsRequest::with_capacity(
                n,
                self.metrics.len(),
                self.points.len(),
                self.attributes.len(),
            ),
        };
        for r in &self.metric_resources {
            req.begin_resource(self.attributes(r.attributes));
            for metric in r.items.of(&self.metrics) {
                req.begin_metric(self.text(metric.name), metric.kind);
                for p in metric.points.of(&self.points) {
                    req.push_point(
                        m::NumberDataPoint::new(p.time, p.value),
                        self.attributes(p.attributes),
                    );
                }
            }
        }
        req
    }
}

/// The arena index of the next entry (arenas hold fewer entries than the body has bytes, and bodies are far
/// under 4 GiB; a longer one is refused rather than wrapped).
fn mark<T>(c: &Cursor<'_, '_>, arena: &[T]) -> Result<u32> {
    match u32::try_from(arena.len()) {
        Ok(i) => Ok(i),
        Err(_) => c.error("more entries than one document may hold"),
    }
}

/// Appends to an arena, asking the budget first when it must grow.
#[inline(always)]
fn push<T>(c: &mut Cursor<'_, '_>, arena: &mut Vec<T>, entry: T) -> Result<()> {
    match m::push(arena, entry, &mut c.budget) {
        Ok(()) => Ok(()),
        Err(_) => c.error(OVER_BUDGET),
    }
}

impl<'a, K: KeepKeys> Reader<'a, '_, '_, K> {
    /// The next key of the object being read, `None` at its end. A key that held escapes is unescaped into the
    /// scratch buffer; the caller compares it and calls [`Reader::done_with`].
    fn key(&mut self, first: &mut bool) -> Result<Option<Key<'a>>> {
        self.c.next_key(first, &mut self.doc.scratch)
    }

    fn done_with(&mut self, key: Key<'a>) {
        forget(&mut self.doc.scratch, key);
    }

    fn skip(&mut self) -> Result<()> {
        self.c.skip(&mut self.doc.scratch)
    }

    /// Opens an object value (`false` for `null`).
    fn object(&mut self, what: &'static str) -> Result<bool> {
        if self.c.eat_null()? {
            return Ok(false);
        }
        if !self.c.eat(b'{') {
            return self.c.error_in("expected an object", what);
        }
        Ok(true)
    }

    /// Opens an array value (`false` for `null`).
    fn array(&mut self, what: &'static str) -> Result<bool> {
        if self.c.eat_null()? {
            return Ok(false);
        }
        if !self.c.eat(b'[') {
            return self.c.error_in("expected an array", what);
        }
        Ok(true)
    }

    /// Reads an array of objects, each with `f`.
    fn objects(
        &mut self,
        what: &'static str,
        mut f: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        if !self.array(what)? {
            return Ok(());
        }
        let mut first = true;
        while self.c.next_element(&mut first)? {
            if self.object(what)? {
                f(self)?;
            }
        }
        Ok(())
    }

    /// The members of the object just opened: `f` gets each key (with the fields seen so far) and reads or
    /// skips its value.
    fn members(
        &mut self,
        mut f: impl FnMut(&mut Self, &[u8], &mut Seen) -> Result<()>,
    ) -> Result<()> {
        let mut first = true;
        let mut seen = Seen(0);
        while let Some(key) = self.key(&mut first)? {
            match key {
                Key::Body(name) => f(self, name, &mut seen)?,
                Key::Scratch(from, to) => {
                    let name = self.doc.scratch[from..to].to_vec();
                    self.done_with(key);
                    f(self, &name, &mut seen)?;
                }
            }
        }
        Ok(())
    }

    fn document(&mut self) -> Result<()> {
        self.members(|r, name, seen| match name {
            b"resourceSpans" if seen.first(0) => r.objects("resourceSpans", Self::resource_spans),
            b"resourceMetrics" if seen.first(1) => {
                r.objects("resourceMetrics", Self::resource_metrics)
            }
            _ => r.skip(),
        })
    }

    /// A `resource`: the run of its attributes.
    fn resource(&mut self) -> Result<Run> {
        let mut run = Run::default();
        if self.object("resource")? {
            self.members(|r, name, seen| match name {
                b"attributes" if seen.first(0) => {
                    run = r.attributes(|k, key| k.resource(key))?;
                    Ok(())
                }
                _ => r.skip(),
            })?;
        }
        Ok(run)
    }

    fn resource_spans(&mut self) -> Result<()> {
        self.resource_items(Signal::Traces)
    }

    fn resource_metrics(&mut self) -> Result<()> {
        self.resource_items(Signal::Metrics)
    }

    /// A `ResourceSpans` or `ResourceMetrics`: its resource, and the spans or metrics of every scope.
    fn resource_items(&mut self, signal: Signal) -> Result<()> {
        let (scopes, items, item): (_, _, ReadOne<Self>) = match signal {
            Signal::Traces => ("scopeSpans", "spans", Self::span),
            Signal::Metrics => ("scopeMetrics", "metrics", Self::metric),
        };
        let start = self.items_read(signal)?;
        let mut attributes = Run::default();
        self.members(|r, name, seen| match name {
            b"resource" if seen.first(0) => {
                attributes = r.resource()?;
                Ok(())
            }
            _ if name == scopes.as_bytes() && seen.first(1) => r.objects(scopes, |r| {
                r.members(|r, name, seen| {
                    if name == items.as_bytes() && seen.first(0) {
                        r.objects(items, item)
                    } else {
                        r.skip()
                    }
                })
            }),
            _ => r.skip(),
        })?;
        let items = Run {
            start,
            end: self.items_read(signal)?,
        };
        let resource = Resource { attributes, items };
        match signal {
            Signal::Traces => push(&mut self.c, &mut self.doc.span_resources, resource),
            Signal::Metrics => push(&mut self.c, &mut self.doc.metric_resources, resource),
        }
    }

    /// How many spans or metrics have been read.
    fn items_read(&self, signal: Signal) -> Result<u32> {
        match signal {
            Signal::Traces => mark(&self.c, &self.doc.spans),
            Signal::Metrics => mark(&self.c, &self.doc.metrics),
        }
    }

    fn span(&mut self) -> Result<()> {
        let mut span = Span {
            trace_id: None,
            span_id: None,
            start: 0,
            end: 0,
            attributes: Run::default(),
        };
        self.members(|r, name, seen| match name {
            b"traceId" if seen.first(0) => {
                span.trace_id = r.id()?;
                Ok(())
            }
            b"spanId" if seen.first(1) => {
                span.span_id = r.id()?;
                Ok(())
            }
            b"startTimeUnixNano" if seen.first(2) => {
                span.start = r.timestamp("startTimeUnixNano")?;
                Ok(())
            }
            b"endTimeUnixNano" if seen.first(3) => {
                span.end = r.timestamp("endTimeUnixNano")?;
                Ok(())
            }
            b"attributes" if seen.first(4) => {
                span.attributes = r.attributes(|k, key| k.item(key))?;
                Ok(())
            }
            _ => r.skip(),
        })?;
        push(&mut self.c, &mut self.doc.spans, span)
    }

    /// A metric: a gauge's points if it has a gauge, else a sum's (histograms and summaries are not read).
    fn metric(&mut self) -> Result<()> {
        let mut name = Key::Body(b"");
        let mut gauge = None;
        let mut sum = None;
        self.members(|r, field, seen| match field {
            b"name" if seen.first(0) => {
                name = r.string()?.unwrap_or(Key::Body(b""));
                Ok(())
            }
            b"gauge" if seen.first(1) => {
                gauge = r.points("gauge")?;
                Ok(())
            }
            b"sum" if seen.first(2) => {
                sum = r.points("sum")?;
                Ok(())
            }
            _ => r.skip(),
        })?;
        let (kind, points) = match (gauge, sum) {
            (Some(g), _) => (Some(m::MetricKind::Gauge), g),
            (None, Some(s)) => (Some(m::MetricKind::Sum), s),
            (None, None) => (None, Run::default()),
        };
        push(
            &mut self.c,
            &mut self.doc.metrics,
            Metric { name, kind, points },
        )
    }

    /// A gauge or sum: the run of its data points (`None` for `null`).
    fn points(&mut self, what: &'static str) -> Result<Option<Run>> {
        if !self.object(what)? {
            return Ok(None);
        }
        let start = mark(&self.c, &self.doc.points)?;
        let mut run = Run { start, end: start };
        self.members(|r, name, seen| match name {
            b"dataPoints" if seen.first(0) => {
                let start = mark(&r.c, &r.doc.points)?;
                r.objects("dataPoints", Self::point)?;
                run = Run {
                    start,
                    end: mark(&r.c, &r.doc.points)?,
                };
                Ok(())
            }
            _ => r.skip(),
        })?;
        Ok(Some(run))
    }

    fn point(&mut self) -> Result<()> {
        let mut point = Point {
            time: 0,
            value: None,
            attributes: Run::default(),
        };
        let mut as_double = None;
        let mut as_int = None;
        self.members(|r, name, seen| match name {
            b"attributes" if seen.first(0) => {
                point.attributes = r.attributes(|k, key| k.item(key))?;
                Ok(())
            }
            b"timeUnixNano" if seen.first(1) => {
                point.time = r.timestamp("timeUnixNano")?;
                Ok(())
            }
            b"asDouble" if seen.first(2) => {
                as_double = r.number(Want::Double)?;
                Ok(())
            }
            b"asInt" if seen.first(3) => {
                as_int = r.number(Want::Int)?;
                Ok(())
            }
            _ => r.skip(),
        })?;
        point.value = match (as_double, as_int) {
            (Some(Number::Double(d)), _) => Some(m::PointValue::AsDouble(d)),
            (_, Some(Number::Int(i))) => Some(m::PointValue::AsInt(i)),
            (_, Some(Number::Double(d))) => Some(m::PointValue::AsDouble(d)),
            // Text that is no number: a point without a value, counted as wrong_type.
            _ => None,
        };
        push(&mut self.c, &mut self.doc.points, point)
    }

    /// An array of attributes: the run of those `keep` accepts (by key, with this reader's filter).
    fn attributes(&mut self, keep: fn(&K, &[u8]) -> bool) -> Result<Run> {
        let start = mark(&self.c, &self.doc.attributes)?;
        if self.array("attributes")? {
            let mut first = true;
            while self.c.next_element(&mut first)? {
                if self.object("attributes")? {
                    self.attribute(keep)?;
                }
            }
        }
        Ok(Run {
            start,
            end: mark(&self.c, &self.doc.attributes)?,
        })
    }

    /// An attribute, kept if its key is. A value that comes after a key not kept is skipped unread.
    fn attribute(&mut self, keep: fn(&K, &[u8]) -> bool) -> Result<()> {
        let mut key: Option<Key<'a>> = None;
        let mut kept = true;
        let mut value = None;
        self.members(|r, name, seen| match name {
            b"key" if seen.first(0) => {
                let k = r.string()?.unwrap_or(Key::Body(b""));
                kept = keep(r.keep, r.doc.text(k));
                key = Some(k);
                Ok(())
            }
            b"value" if seen.first(1) && kept => {
                value = r.any_value()?;
                Ok(())
            }
            _ => r.skip(),
        })?;
        // An attribute without a key has the empty one.
        let (key, kept) = match key {
            Some(key) => (key, kept),
            None => (Key::Body(b""), keep(self.keep, b"")),
        };
        if !kept {
            return Ok(());
        }
        push(
            &mut self.c,
            &mut self.doc.attributes,
            Attribute { key, value },
        )
    }

    /// An `AnyValue` (`None` for `null`): the first of string, int, double, bool present. Arrays, maps and
    /// bytes are not read (see the module); they leave the value empty.
    fn any_value(&mut self) -> Result<Option<Option<Value<'a>>>> {
        if !self.object("value")? {
            return Ok(None);
        }
        let mut string: Option<Option<Key<'a>>> = None;
        let mut int = None;
        let mut double = None;
        let mut boolean: Option<Option<bool>> = None;
        self.members(|r, name, seen| match name {
            b"stringValue" if seen.first(0) => {
                string = r.nullable_string()?;
                Ok(())
            }
            b"intValue" if seen.first(1) => {
                int = r.number(Want::Int)?;
                Ok(())
            }
            b"doubleValue" if seen.first(2) => {
                double = r.number(Want::Double)?;
                Ok(())
            }
            b"boolValue" if seen.first(3) => {
                boolean = r.nullable_bool()?;
                Ok(())
            }
            _ => r.skip(),
        })?;
        fn number(n: Number<'_>) -> Option<Value<'_>> {
            match n {
                Number::Int(i) => Some(Value::Int(i)),
                Number::Double(d) => Some(Value::Double(d)),
                Number::Text(s) => Some(Value::String(s)),
                Number::Wrong => None,
            }
        }
        Ok(Some(if let Some(s) = string {
            s.map(Value::String)
        } else if let Some(n) = int {
            number(n)
        } else if let Some(n) = double {
            number(n)
        } else {
            boolean.flatten().map(Value::Bool)
        }))
    }

    /// A string field: `None` for `null` or a value of another type (skipped).
    fn string(&mut self) -> Result<Option<Key<'a>>> {
        Ok(self.nullable_string()?.flatten())
    }

    /// A string field: `None` for `null`, `Some(None)` for a value of another type (skipped).
    fn nullable_string(&mut self) -> Result<Option<Option<Key<'a>>>> {
        match self.c.peek() {
            Some(b'"') => Ok(Some(Some(self.c.string(&mut self.doc.scratch)?))),
            _ if self.c.eat_null()? => Ok(None),
            _ => self.skip().map(|()| Some(None)),
        }
    }

    /// A bool field: `None` for `null`, `Some(None)` for a value of another type (skipped).
    fn nullable_bool(&mut self) -> Result<Option<Option<bool>>> {
        if let Some((b, _)) = self.c.bool()? {
            return Ok(Some(Some(b)));
        }
        if self.c.eat_null()? {
            return Ok(None);
        }
        self.skip().map(|()| Some(None))
    }

    /// A trace or span id: hex of exactly `N` bytes, else none (a span stays usable without it).
    fn id<const N: usize>(&mut self) -> Result<Option<[u8; N]>> {
        let Some(text) = self.string()? else {
            return Ok(None);
        };
        let id = hex_id::<N>(self.doc.text(text));
        if let Key::Scratch(from, _) = text {
            self.doc.scratch.truncate(from);
        }
        Ok(id)
    }

    /// A number field: `None` for `null` or a number beyond f64's range; any other JSON value is read, as a
    /// number where it is one (in a string too), as text to be counted where it is not.
    fn number(&mut self, want: Want) -> Result<Option<Number<'a>>> {
        let n = match self.c.peek() {
            Some(b'-' | b'0'..=b'9') => match self.c.number()? {
                None => return Ok(None),
                Some(Num::I64(i)) => match want {
                    Want::Int => Number::Int(i),
                    Want::Double => Number::Double(i as f64),
                },
                Some(Num::U64(u)) => match (want, i64::try_from(u)) {
                    (Want::Int, Ok(i)) => Number::Int(i),
                    _ => Number::Double(u as f64),
                },
                // Writers sometimes print integral int64 values as 1.0; anything fractional stays a double so
                // that extraction rejects it as fractional.
                Some(Num::F64(f)) => Number::Double(f),
            },
            Some(b'"') => {
                let text = self.c.string(&mut self.doc.scratch)?;
                if let (Want::Int, Some(i)) = (want, plain_int(self.doc.text(text))) {
                    return Ok(Some(Number::Int(i)));
                }
                let s = std::str::from_utf8(self.doc.text(text)).unwrap_or("");
                let t = s.trim();
                let n = match want {
                    Want::Int => t.parse::<i64>().ok().map(Number::Int),
                    Want::Double => match t {
                        "NaN" => Some(Number::Double(f64::NAN)),
                        "Infinity" => Some(Number::Double(f64::INFINITY)),
                        "-Infinity" => Some(Number::Double(f64::NEG_INFINITY)),
                        _ => t.parse::<f64>().ok().map(Number::Double),
                    },
                };
                n.unwrap_or(Number::Text(text))
            }
            Some(b'{' | b'[') => {
                self.skip()?;
                Number::Wrong
            }
            _ if self.c.eat_null()? => return Ok(None),
            // A bool where a number belongs: kept as text, to be counted as a string value.
            _ => match self.c.bool()? {
                Some((_, word)) => Number::Text(Key::Body(word)),
                None => return self.c.error("expected a JSON value"),
            },
        };
        Ok(Some(n))
    }

    /// Timestamp `field`: a string or a number of nanoseconds; 0 for `null`. Anything that is not a whole
    /// non-negative number fails the document (see the module).
    fn timestamp(&mut self, field: &'static str) -> Result<u64> {
        let at = self.c.offset();
        let fail = |what| {
            Err(Box::new(JsonError {
                at,
                what,
                field,
                eof: false,
            }))
        };
        match self.number(Want::Int)? {
            None => Ok(0),
            Some(Number::Int(i)) => u64::try_from(i).or_else(|_| fail("a negative timestamp")),
            Some(Number::Double(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
                Ok(f as u64)
            }
            Some(Number::Double(_)) => fail("a timestamp that is not a whole number"),
            Some(Number::Text(s)) => std::str::from_utf8(self.doc.text(s))
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .map_or_else(
                    || fail("a timestamp that is not a number of nanoseconds"),
                    Ok,
                ),
            Some(Number::Wrong) => fail("a timestamp that is an array or object"),
        }
    }
}

#[cfg(test)]
mod tests;
