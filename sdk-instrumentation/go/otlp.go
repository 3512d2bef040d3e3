package memspan

import "math"

func float64bits(f float64) uint64     { return math.Float64bits(f) }
func float64frombits(b uint64) float64 { return math.Float64frombits(b) }

// TraceID and SpanID are the W3C trace context identifiers.
type (
	TraceID [16]byte
	SpanID  [8]byte
)

// OTLP enum values used here (opentelemetry/proto/trace/v1 and metrics/v1).
const (
	spanKindInternal = 1

	statusCodeUnset = 0
	statusCodeError = 2

	temporalityCumulative = 2
)

// The integer attributes memspan sets on a request span, kept as plain fields (no per-attribute allocation on
// the request path) and turned into KeyValues when the span is encoded.
const (
	maRSSStart = iota
	maRSSEnd
	maHeapAllocated
	maHeapResident
	maHeapRetained
	maRequestAllocated
	maLimit
	maInputTokens
	maOutputTokens
	numMemAttrs
)

var memAttrKeys = [numMemAttrs]string{
	AttrRSSStart, AttrRSSEnd, AttrHeapAllocated, AttrHeapResident, AttrHeapRetained, AttrRequestAllocated,
	AttrLimit, AttrGenAIUsageInputTokens, AttrGenAIUsageOutputTokens,
}

// spanData is one finished span as it is exported. Its attributes, in order: the gen_ai names and the cohort
// (when set), the integer attributes present, then attrs.
type spanData struct {
	traceID      TraceID
	spanID       SpanID
	parentSpanID SpanID // zero for a root span
	name         string
	kind         int32
	startNano    uint64
	endNano      uint64
	operation    string // gen_ai.operation.name, with model, when genAI is set
	model        string
	genAI        bool
	cohort       string // memspan.cohort; empty when none
	ints         [numMemAttrs]int64
	present      uint16 // bit i set: ints[i] is present
	attrs        []KeyValue
	statusCode   int32
	statusMsg    string
}

func (s *spanData) setInt(i int, v int64) {
	s.ints[i] = v
	s.present |= 1 << i
}

// setIfKnown sets a byte count unless it is -1 ("cannot measure"), which leaves the attribute out.
func (s *spanData) setIfKnown(i int, v int64) {
	if v >= 0 {
		s.setInt(i, v)
	}
}

// attributes yields all the span's attributes, in order (use: for kv := range s.attributes { ... }).
func (s *spanData) attributes(yield func(KeyValue) bool) {
	if s.genAI {
		if !yield(String(AttrGenAIOperationName, s.operation)) || !yield(String(AttrGenAIRequestModel, s.model)) {
			return
		}
	}
	if s.cohort != "" && !yield(String(AttrCohort, s.cohort)) {
		return
	}
	for i := range numMemAttrs {
		if s.present&(1<<i) != 0 && !yield(Int64(memAttrKeys[i], s.ints[i])) {
			return
		}
	}
	for _, kv := range s.attrs {
		if !yield(kv) {
			return
		}
	}
}

// metricKind is the OTLP data type of a metric.
type metricKind uint8

const (
	metricGauge metricKind = iota + 1
	metricSum
)

// metricData is one metric of a collection, with its points.
type metricData struct {
	name        string
	description string
	unit        string
	kind        metricKind
	// monotonic applies to sums (a counter is monotonic, an up-down counter is not); sums are cumulative.
	monotonic bool
	points    []numberPoint
}

// numberPoint is a NumberDataPoint holding an integer (all that memspan records).
type numberPoint struct {
	attrs     []KeyValue
	startNano uint64
	timeNano  uint64
	value     int64
}

// scope is the instrumentation scope every span and metric is exported under.
type scope struct {
	name    string
	version string
}
