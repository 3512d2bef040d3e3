package memspan

// Protobuf wire encoding of ExportTraceServiceRequest and ExportMetricsServiceRequest, written by hand from
// opentelemetry-proto (the field numbers are noted at each call). Proto3 rules: a scalar field with its default
// value is left out, except the members of a oneof (AnyValue's value, NumberDataPoint's value), whose presence
// is the information.

const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

// protoEncoder appends to one buffer. A nested message is written in place and its length prefix inserted
// afterwards (begin/end), so no message is encoded twice.
type protoEncoder struct {
	b []byte
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func varintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func (e *protoEncoder) tag(field int, wire int) {
	e.b = appendVarint(e.b, uint64(field)<<3|uint64(wire))
}

// begin starts a length-delimited field; pass its result to end.
func (e *protoEncoder) begin(field int) int {
	e.tag(field, wireBytes)
	return len(e.b)
}

// end inserts the length prefix of the message written since begin.
func (e *protoEncoder) end(start int) {
	n := len(e.b) - start
	k := varintLen(uint64(n))
	for range k {
		e.b = append(e.b, 0)
	}
	copy(e.b[start+k:], e.b[start:start+n])
	appendVarint(e.b[start:start], uint64(n))
}

func (e *protoEncoder) bytesField(field int, v []byte) {
	if len(v) == 0 {
		return
	}
	e.tag(field, wireBytes)
	e.b = appendVarint(e.b, uint64(len(v)))
	e.b = append(e.b, v...)
}

func (e *protoEncoder) stringField(field int, v string) {
	if v == "" {
		return
	}
	e.stringAlways(field, v)
}

func (e *protoEncoder) stringAlways(field int, v string) {
	e.tag(field, wireBytes)
	e.b = appendVarint(e.b, uint64(len(v)))
	e.b = append(e.b, v...)
}

func (e *protoEncoder) varintField(field int, v uint64) {
	if v == 0 {
		return
	}
	e.tag(field, wireVarint)
	e.b = appendVarint(e.b, v)
}

func (e *protoEncoder) fixed64Always(field int, v uint64) {
	e.tag(field, wireFixed64)
	e.b = append(e.b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48),
		byte(v>>56))
}

func (e *protoEncoder) fixed64Field(field int, v uint64) {
	if v != 0 {
		e.fixed64Always(field, v)
	}
}

// anyValueLen is the encoded size of the AnyValue message holding v.
func anyValueLen(v Value) int {
	switch v.kind {
	case kindString:
		return 1 + varintLen(uint64(len(v.str))) + len(v.str)
	case kindBool, kindInt64:
		return 1 + varintLen(v.num)
	case kindFloat64:
		return 1 + 8
	}
	return 0
}

// keyValue writes a KeyValue message (key = 1, value = 2) as field `field` of its parent. Its size is known
// beforehand, so the length prefix is written first (attributes are most of a span: no shifting here).
func (e *protoEncoder) keyValue(field int, kv KeyValue) {
	anyLen := anyValueLen(kv.Value)
	size := 1 + varintLen(uint64(anyLen)) + anyLen
	if kv.Key != "" {
		size += 1 + varintLen(uint64(len(kv.Key))) + len(kv.Key)
	}
	e.tag(field, wireBytes)
	e.b = appendVarint(e.b, uint64(size))
	e.stringField(1, kv.Key)
	e.tag(2, wireBytes) // AnyValue
	e.b = appendVarint(e.b, uint64(anyLen))
	switch kv.Value.kind {
	case kindString:
		e.stringAlways(1, kv.Value.str)
	case kindBool:
		e.tag(2, wireVarint)
		e.b = appendVarint(e.b, kv.Value.num)
	case kindInt64:
		e.tag(3, wireVarint)
		e.b = appendVarint(e.b, kv.Value.num) // int64: two's complement as a 64-bit varint
	case kindFloat64:
		e.fixed64Always(4, kv.Value.num)
	}
}

func (e *protoEncoder) keyValues(field int, kvs []KeyValue) {
	for _, kv := range kvs {
		e.keyValue(field, kv)
	}
}

// resourceAndScope writes Resource (field 1 of ResourceSpans / ResourceMetrics) and returns with the
// scope-level message (field 2) opened and its InstrumentationScope (field 1) written.
func (e *protoEncoder) resourceAndScope(resource []KeyValue, sc scope) int {
	r := e.begin(1)
	e.keyValues(1, resource) // Resource.attributes = 1
	e.end(r)
	s := e.begin(2) // ScopeSpans / ScopeMetrics
	is := e.begin(1)
	e.stringField(1, sc.name)
	e.stringField(2, sc.version)
	e.end(is)
	return s
}

// appendTracesProto appends an ExportTraceServiceRequest with one ResourceSpans and one ScopeSpans.
func appendTracesProto(b []byte, resource []KeyValue, sc scope, spans []*spanData) []byte {
	e := protoEncoder{b: b}
	rs := e.begin(1) // ExportTraceServiceRequest.resource_spans = 1
	ss := e.resourceAndScope(resource, sc)
	for _, s := range spans {
		m := e.begin(2) // ScopeSpans.spans = 2
		e.bytesField(1, s.traceID[:])
		e.bytesField(2, s.spanID[:])
		if s.parentSpanID != (SpanID{}) {
			e.bytesField(4, s.parentSpanID[:])
		}
		e.stringField(5, s.name)
		e.varintField(6, uint64(s.kind))
		e.fixed64Field(7, s.startNano)
		e.fixed64Field(8, s.endNano)
		for kv := range s.attributes {
			e.keyValue(9, kv)
		}
		if s.statusCode != statusCodeUnset || s.statusMsg != "" {
			st := e.begin(15) // Span.status = 15
			e.stringField(2, s.statusMsg)
			e.varintField(3, uint64(s.statusCode))
			e.end(st)
		}
		e.end(m)
	}
	e.end(ss)
	e.end(rs)
	return e.b
}

// appendMetricsProto appends an ExportMetricsServiceRequest with one ResourceMetrics and one ScopeMetrics.
func appendMetricsProto(b []byte, resource []KeyValue, sc scope, metrics []metricData) []byte {
	e := protoEncoder{b: b}
	rm := e.begin(1) // ExportMetricsServiceRequest.resource_metrics = 1
	sm := e.resourceAndScope(resource, sc)
	for _, md := range metrics {
		m := e.begin(2) // ScopeMetrics.metrics = 2
		e.stringField(1, md.name)
		e.stringField(2, md.description)
		e.stringField(3, md.unit)
		var data int
		if md.kind == metricSum {
			data = e.begin(7) // Metric.sum = 7
		} else {
			data = e.begin(5) // Metric.gauge = 5
		}
		for _, p := range md.points {
			dp := e.begin(1) // data_points = 1
			e.fixed64Field(2, p.startNano)
			e.fixed64Field(3, p.timeNano)
			e.fixed64Always(6, uint64(p.value)) // as_int: sfixed64, in a oneof, so written when zero
			e.keyValues(7, p.attrs)
			e.end(dp)
		}
		if md.kind == metricSum {
			e.varintField(2, temporalityCumulative) // Sum.aggregation_temporality = 2
			if md.monotonic {
				e.varintField(3, 1) // Sum.is_monotonic = 3
			}
		}
		e.end(data)
		e.end(m)
	}
	e.end(sm)
	e.end(rm)
	return e.b
}
