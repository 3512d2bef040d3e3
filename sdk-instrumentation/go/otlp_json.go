package memspan

import (
	"encoding/hex"
	"encoding/json"
	"math"
	"strconv"
)

// OTLP/JSON (the protobuf JSON mapping with OTLP's exceptions): field names in lowerCamelCase, trace and span
// ids as hex strings (not base64), enums as integers, 64-bit integers as decimal strings.

type jsonKeyValue struct {
	Key   string    `json:"key"`
	Value jsonValue `json:"value"`
}

// jsonValue is AnyValue: exactly one field is set.
type jsonValue struct {
	StringValue *string      `json:"stringValue,omitempty"`
	BoolValue   *bool        `json:"boolValue,omitempty"`
	IntValue    *string      `json:"intValue,omitempty"`
	DoubleValue *jsonFloat64 `json:"doubleValue,omitempty"`
}

// jsonFloat64 writes NaN and the infinities as the strings the protobuf JSON mapping uses.
type jsonFloat64 float64

func (f jsonFloat64) MarshalJSON() ([]byte, error) {
	v := float64(f)
	switch {
	case math.IsNaN(v):
		return []byte(`"NaN"`), nil
	case math.IsInf(v, 1):
		return []byte(`"Infinity"`), nil
	case math.IsInf(v, -1):
		return []byte(`"-Infinity"`), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

type jsonResource struct {
	Attributes []jsonKeyValue `json:"attributes"`
}

type jsonScope struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
}

type jsonStatus struct {
	Message string `json:"message,omitempty"`
	Code    int32  `json:"code,omitempty"`
}

type jsonSpan struct {
	TraceID           string         `json:"traceId"`
	SpanID            string         `json:"spanId"`
	ParentSpanID      string         `json:"parentSpanId,omitempty"`
	Name              string         `json:"name"`
	Kind              int32          `json:"kind,omitempty"`
	StartTimeUnixNano string         `json:"startTimeUnixNano"`
	EndTimeUnixNano   string         `json:"endTimeUnixNano"`
	Attributes        []jsonKeyValue `json:"attributes,omitempty"`
	Status            *jsonStatus    `json:"status,omitempty"`
}

type jsonScopeSpans struct {
	Scope jsonScope  `json:"scope"`
	Spans []jsonSpan `json:"spans"`
}

type jsonResourceSpans struct {
	Resource   jsonResource     `json:"resource"`
	ScopeSpans []jsonScopeSpans `json:"scopeSpans"`
}

type jsonTracesRequest struct {
	ResourceSpans []jsonResourceSpans `json:"resourceSpans"`
}

type jsonNumberPoint struct {
	Attributes        []jsonKeyValue `json:"attributes,omitempty"`
	StartTimeUnixNano string         `json:"startTimeUnixNano,omitempty"`
	TimeUnixNano      string         `json:"timeUnixNano"`
	AsInt             string         `json:"asInt"`
}

type jsonGauge struct {
	DataPoints []jsonNumberPoint `json:"dataPoints"`
}

type jsonSum struct {
	DataPoints             []jsonNumberPoint `json:"dataPoints"`
	AggregationTemporality int32             `json:"aggregationTemporality"`
	IsMonotonic            bool              `json:"isMonotonic,omitempty"`
}

type jsonMetric struct {
	Name        string     `json:"name"`
	Description string     `json:"description,omitempty"`
	Unit        string     `json:"unit,omitempty"`
	Gauge       *jsonGauge `json:"gauge,omitempty"`
	Sum         *jsonSum   `json:"sum,omitempty"`
}

type jsonScopeMetrics struct {
	Scope   jsonScope    `json:"scope"`
	Metrics []jsonMetric `json:"metrics"`
}

type jsonResourceMetrics struct {
	Resource     jsonResource       `json:"resource"`
	ScopeMetrics []jsonScopeMetrics `json:"scopeMetrics"`
}

type jsonMetricsRequest struct {
	ResourceMetrics []jsonResourceMetrics `json:"resourceMetrics"`
}

func toJSONAttribute(kv KeyValue) jsonKeyValue {
	out := jsonKeyValue{Key: kv.Key}
	v := kv.Value
	switch v.kind {
	case kindString:
		s := v.str
		out.Value.StringValue = &s
	case kindBool:
		b := v.num == 1
		out.Value.BoolValue = &b
	case kindInt64:
		s := strconv.FormatInt(int64(v.num), 10)
		out.Value.IntValue = &s
	case kindFloat64:
		f := jsonFloat64(float64frombits(v.num))
		out.Value.DoubleValue = &f
	}
	return out
}

func toJSONAttributes(kvs []KeyValue) []jsonKeyValue {
	if len(kvs) == 0 {
		return nil
	}
	out := make([]jsonKeyValue, len(kvs))
	for i, kv := range kvs {
		out[i] = toJSONAttribute(kv)
	}
	return out
}

func spanJSONAttributes(s *spanData) []jsonKeyValue {
	var out []jsonKeyValue
	for kv := range s.attributes {
		out = append(out, toJSONAttribute(kv))
	}
	return out
}

func nanoString(n uint64) string { return strconv.FormatUint(n, 10) }

// marshalTracesJSON encodes an ExportTraceServiceRequest in OTLP/JSON.
func marshalTracesJSON(resource []KeyValue, sc scope, spans []*spanData) ([]byte, error) {
	out := make([]jsonSpan, len(spans))
	for i, s := range spans {
		js := jsonSpan{
			TraceID:           hex.EncodeToString(s.traceID[:]),
			SpanID:            hex.EncodeToString(s.spanID[:]),
			Name:              s.name,
			Kind:              s.kind,
			StartTimeUnixNano: nanoString(s.startNano),
			EndTimeUnixNano:   nanoString(s.endNano),
			Attributes:        spanJSONAttributes(s),
		}
		if s.parentSpanID != (SpanID{}) {
			js.ParentSpanID = hex.EncodeToString(s.parentSpanID[:])
		}
		if s.statusCode != statusCodeUnset || s.statusMsg != "" {
			js.Status = &jsonStatus{Message: s.statusMsg, Code: s.statusCode}
		}
		out[i] = js
	}
	return json.Marshal(jsonTracesRequest{ResourceSpans: []jsonResourceSpans{{
		Resource:   jsonResource{Attributes: toJSONAttributes(resource)},
		ScopeSpans: []jsonScopeSpans{{Scope: jsonScope{Name: sc.name, Version: sc.version}, Spans: out}},
	}}})
}

// marshalMetricsJSON encodes an ExportMetricsServiceRequest in OTLP/JSON.
func marshalMetricsJSON(resource []KeyValue, sc scope, metrics []metricData) ([]byte, error) {
	out := make([]jsonMetric, len(metrics))
	for i, md := range metrics {
		points := make([]jsonNumberPoint, len(md.points))
		for j, p := range md.points {
			points[j] = jsonNumberPoint{
				Attributes:   toJSONAttributes(p.attrs),
				TimeUnixNano: nanoString(p.timeNano),
				AsInt:        strconv.FormatInt(p.value, 10),
			}
			if p.startNano != 0 {
				points[j].StartTimeUnixNano = nanoString(p.startNano)
			}
		}
		jm := jsonMetric{Name: md.name, Description: md.description, Unit: md.unit}
		if md.kind == metricSum {
			jm.Sum = &jsonSum{DataPoints: points, AggregationTemporality: temporalityCumulative,
				IsMonotonic: md.monotonic}
		} else {
			jm.Gauge = &jsonGauge{DataPoints: points}
		}
		out[i] = jm
	}
	return json.Marshal(jsonMetricsRequest{ResourceMetrics: []jsonResourceMetrics{{
		Resource: jsonResource{Attributes: toJSONAttributes(resource)},
		ScopeMetrics: []jsonScopeMetrics{{Scope: jsonScope{Name: sc.name, Version: sc.version},
			Metrics: out}},
	}}})
}
