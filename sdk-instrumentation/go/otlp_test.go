package memspan

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var testScope = scope{name: ScopeName, version: Version}

func testSpans() []*spanData {
	a := &spanData{
		traceID: TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		spanID:  SpanID{0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8},
		name:    "text_completion tiny-go-lm", kind: spanKindInternal,
		startNano: 1_700_000_000_000_000_000, endNano: 1_700_000_000_250_000_000,
		attrs: []KeyValue{
			String(AttrGenAIOperationName, "text_completion"),
			Int64(AttrRSSStart, 123_456_789),
			Int64(AttrRequestAllocated, 0), // zero is a value: it must be written
			Int64("negative", -5),
			Float64("ratio", 0.25),
			Bool("flag", false),
			String("empty", ""),
		},
	}
	b := &spanData{
		traceID: a.traceID, spanID: SpanID{9, 9, 9, 9, 9, 9, 9, 9}, parentSpanID: a.spanID,
		name: "child", kind: spanKindInternal, startNano: 1, endNano: 2,
		statusCode: statusCodeError, statusMsg: "model overloaded",
		// A long value makes the span, scope and resource lengths need 2- and 3-byte varints.
		attrs: []KeyValue{String("long", strings.Repeat("x", 20_000))},
	}
	return []*spanData{a, b}
}

var testResource = []KeyValue{String("service.name", "infer"), String("service.instance.id", "host-1")}

func testMetrics() []metricData {
	return []metricData{
		{name: MetricGoMemoryUsed, unit: "By", description: "Memory used by the Go runtime.", kind: metricSum,
			points: []numberPoint{{attrs: memoryTypeStack, startNano: 10, timeNano: 20, value: 0},
				{attrs: memoryTypeOther, startNano: 10, timeNano: 20, value: 7 << 20}}},
		{name: MetricGoMemoryAllocated, unit: "By", kind: metricSum, monotonic: true,
			points: []numberPoint{{startNano: 10, timeNano: 20, value: 1 << 40}}},
		{name: AttrLimit, unit: "By", kind: metricGauge, points: []numberPoint{{timeNano: 20, value: -1}}},
	}
}

func TestTracesProtobufDecodesBackToTheSameSpans(t *testing.T) {
	body := appendTracesProto(nil, testResource, testScope, testSpans())
	req, err := decodePB(body)
	if err != nil {
		t.Fatal(err)
	}
	rs := req.msg(1)
	if got := rs.msg(1).attrs(1); got["service.name"] != "infer" || got["service.instance.id"] != "host-1" {
		t.Errorf("resource attributes = %v", got)
	}
	ss := rs.msg(2)
	if sc := ss.msg(1); sc.str(1) != ScopeName || sc.str(2) != Version {
		t.Errorf("scope = %q %q", sc.str(1), sc.str(2))
	}
	spans := ss.msgs(2)
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	a := spans[0]
	if hex.EncodeToString([]byte(a.str(1))) != "0102030405060708090a0b0c0d0e0f10" ||
		hex.EncodeToString([]byte(a.str(2))) != "a1a2a3a4a5a6a7a8" {
		t.Errorf("ids = %x %x", a.str(1), a.str(2))
	}
	if a.has(4) {
		t.Error("a root span has a parent_span_id")
	}
	if a.str(5) != "text_completion tiny-go-lm" || a.u64(6) != spanKindInternal {
		t.Errorf("name %q kind %d", a.str(5), a.u64(6))
	}
	if a.m(7).wire != wireFixed64 || a.u64(7) != 1_700_000_000_000_000_000 || a.u64(8) != 1_700_000_000_250_000_000 {
		t.Errorf("times %d %d", a.u64(7), a.u64(8))
	}
	want := map[string]any{
		AttrGenAIOperationName: "text_completion", AttrRSSStart: int64(123_456_789),
		AttrRequestAllocated: int64(0), "negative": int64(-5), "ratio": 0.25, "flag": false, "empty": "",
	}
	if got := a.attrs(9); !reflect.DeepEqual(got, want) {
		t.Errorf("attributes\n got %v\nwant %v", got, want)
	}
	if a.has(15) {
		t.Error("an unset status was written")
	}
	b := spans[1]
	if b.str(4) != a.str(2) {
		t.Errorf("parent_span_id = %x, want %x", b.str(4), a.str(2))
	}
	if st := b.msg(15); st.str(2) != "model overloaded" || st.u64(3) != statusCodeError {
		t.Errorf("status = %q %d", st.str(2), st.u64(3))
	}
	if got := b.attrs(9)["long"].(string); len(got) != 20_000 {
		t.Errorf("long attribute: %d bytes", len(got))
	}
}

// m returns the last occurrence of a field (for its wire type).
func (m pbMessage) m(field uint64) pbField {
	if !m.has(field) {
		return pbField{wire: -1}
	}
	return m[field][len(m[field])-1]
}

func TestMetricsProtobufDecodesBackToTheSameMetrics(t *testing.T) {
	body := appendMetricsProto(nil, testResource, testScope, testMetrics())
	req, err := decodePB(body)
	if err != nil {
		t.Fatal(err)
	}
	sm := req.msg(1).msg(2)
	ms := sm.msgs(2)
	if len(ms) != 3 {
		t.Fatalf("%d metrics, want 3", len(ms))
	}
	used := ms[0]
	if used.str(1) != MetricGoMemoryUsed || used.str(3) != "By" || used.has(5) {
		t.Errorf("go.memory.used: name %q unit %q gauge %v", used.str(1), used.str(3), used.has(5))
	}
	sum := used.msg(7)
	if sum.u64(2) != temporalityCumulative || sum.has(3) {
		t.Errorf("up-down counter: temporality %d monotonic %v", sum.u64(2), sum.has(3))
	}
	pts := sum.msgs(1)
	if len(pts) != 2 {
		t.Fatalf("%d points", len(pts))
	}
	// as_int is sfixed64 (field 6) in a oneof: a zero is written.
	if pts[0].m(6).wire != wireFixed64 || pts[0].u64(6) != 0 || pts[0].attrs(7)[AttrGoMemoryType] != "stack" {
		t.Errorf("stack point: %+v", pts[0])
	}
	if pts[1].u64(6) != 7<<20 || pts[1].u64(2) != 10 || pts[1].u64(3) != 20 {
		t.Errorf("other point: value %d start %d time %d", pts[1].u64(6), pts[1].u64(2), pts[1].u64(3))
	}
	if alloc := ms[1].msg(7); alloc.u64(3) != 1 || alloc.msg(1).u64(6) != 1<<40 {
		t.Errorf("counter: monotonic %d value %d", alloc.u64(3), alloc.msg(1).u64(6))
	}
	gauge := ms[2]
	if gauge.has(7) || int64(gauge.msg(5).msg(1).u64(6)) != -1 {
		t.Errorf("gauge: %v", gauge)
	}
}

func TestLengthPrefixesAtVarintBoundaries(t *testing.T) {
	for _, n := range []int{0, 1, 100, 118, 119, 120, 127, 128, 200, 16_370, 16_383, 16_384, 2_097_152} {
		span := &spanData{name: strings.Repeat("n", n)}
		req, err := decodePB(appendTracesProto(nil, nil, scope{}, []*spanData{span}))
		if err != nil {
			t.Fatalf("name of %d bytes: %v", n, err)
		}
		if got := req.msg(1).msg(2).msg(2).str(5); len(got) != n {
			t.Errorf("name of %d bytes decoded as %d bytes", n, len(got))
		}
	}
}

func TestJSONUsesOTLPConventions(t *testing.T) {
	body, err := marshalTracesJSON(testResource, testScope, testSpans())
	if err != nil {
		t.Fatal(err)
	}
	var req struct {
		ResourceSpans []struct {
			Resource   struct{ Attributes []map[string]any }
			ScopeSpans []struct {
				Scope map[string]string
				Spans []map[string]any
			}
		}
	}
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	spans := req.ResourceSpans[0].ScopeSpans[0].Spans
	a, b := spans[0], spans[1]
	if a["traceId"] != "0102030405060708090a0b0c0d0e0f10" || a["spanId"] != "a1a2a3a4a5a6a7a8" {
		t.Errorf("ids must be hex: %v %v", a["traceId"], a["spanId"])
	}
	if a["startTimeUnixNano"] != "1700000000000000000" || a["kind"] != float64(1) {
		t.Errorf("start %v kind %v", a["startTimeUnixNano"], a["kind"])
	}
	if _, ok := a["parentSpanId"]; ok {
		t.Error("root span has parentSpanId")
	}
	if b["parentSpanId"] != "a1a2a3a4a5a6a7a8" || b["status"].(map[string]any)["code"] != float64(2) {
		t.Errorf("child: %v %v", b["parentSpanId"], b["status"])
	}
	attrs := map[string]map[string]any{}
	for _, kv := range a["attributes"].([]any) {
		kv := kv.(map[string]any)
		attrs[kv["key"].(string)] = kv["value"].(map[string]any)
	}
	checks := map[string]map[string]any{
		AttrRSSStart:         {"intValue": "123456789"},
		AttrRequestAllocated: {"intValue": "0"},
		"negative":           {"intValue": "-5"},
		"ratio":              {"doubleValue": 0.25},
		"flag":               {"boolValue": false},
		"empty":              {"stringValue": ""},
	}
	for k, want := range checks {
		if !reflect.DeepEqual(attrs[k], want) {
			t.Errorf("%s = %v, want %v", k, attrs[k], want)
		}
	}

	body, err = marshalMetricsJSON(testResource, testScope, testMetrics())
	if err != nil {
		t.Fatal(err)
	}
	s := string(body)
	for _, want := range []string{`"asInt":"0"`, `"asInt":"1099511627776"`, `"aggregationTemporality":2`,
		`"isMonotonic":true`, `"gauge":{"dataPoints":[{"timeUnixNano":"20","asInt":"-1"}]}`,
		`"startTimeUnixNano":"10"`, `"unit":"By"`} {
		if !strings.Contains(s, want) {
			t.Errorf("metrics JSON lacks %s:\n%s", want, s)
		}
	}
}

// venvPython is the repository's .venv python when it has opentelemetry-proto, else "".
func venvPython(t *testing.T) string {
	t.Helper()
	dir, _ := os.Getwd()
	for ; dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
		py := filepath.Join(dir, ".venv", "bin", "python")
		if _, err := os.Stat(py); err == nil {
			if exec.Command(py, "-c", "import opentelemetry.proto.collector.trace.v1.trace_service_pb2").Run() != nil {
				return ""
			}
			return py
		}
	}
	return ""
}

// parseWithPython has the official opentelemetry-proto classes read a body and print it as protobuf JSON.
func parseWithPython(t *testing.T, py, kind, format string, body []byte) map[string]any {
	t.Helper()
	file := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	script := `
import sys
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
kind, fmt, path = sys.argv[1:4]
msg = ExportTraceServiceRequest() if kind == "traces" else ExportMetricsServiceRequest()
data = open(path, "rb").read()
if fmt == "proto":
    msg.ParseFromString(data)
    if msg.SerializeToString() != data:
        sys.exit("re-serialised bytes differ from the input")
else:
    # Field names and types are checked (no unknown field passes); ids are hex in OTLP/JSON, which
    # json_format would read as base64, so only their presence is meaningful here.
    json_format.Parse(data, msg, ignore_unknown_fields=False)
print(json_format.MessageToJson(msg))
`
	out, err := exec.Command(py, "-c", script, kind, format, file).CombinedOutput()
	if err != nil {
		t.Fatalf("python rejected the %s %s body: %v\n%s", kind, format, err, out)
	}
	var parsed map[string]any
	if err := json.Unmarshal(out, &parsed); err != nil {
		t.Fatalf("python output: %v\n%s", err, out)
	}
	return parsed
}

func TestOfficialProtoClassesReadOurBodies(t *testing.T) {
	py := venvPython(t)
	if py == "" {
		t.Skip("no .venv/bin/python with opentelemetry-proto (scripts/test-env.sh installs it)")
	}
	traces := parseWithPython(t, py, "traces", "proto", appendTracesProto(nil, testResource, testScope, testSpans()))
	span := traces["resourceSpans"].([]any)[0].(map[string]any)["scopeSpans"].([]any)[0].(map[string]any)["spans"].([]any)[0].(map[string]any)
	// Python's JSON writes bytes as base64.
	if span["traceId"] != "AQIDBAUGBwgJCgsMDQ4PEA==" || span["name"] != "text_completion tiny-go-lm" ||
		span["kind"] != "SPAN_KIND_INTERNAL" || span["startTimeUnixNano"] != "1700000000000000000" {
		t.Errorf("span as python reads it: %v", span)
	}
	found := false
	for _, kv := range span["attributes"].([]any) {
		kv := kv.(map[string]any)
		if kv["key"] == AttrRequestAllocated {
			found = reflect.DeepEqual(kv["value"], map[string]any{"intValue": "0"})
		}
	}
	if !found {
		t.Errorf("memspan.request.allocated = 0 not read back: %v", span["attributes"])
	}
	metrics := parseWithPython(t, py, "metrics", "proto",
		appendMetricsProto(nil, testResource, testScope, testMetrics()))
	ms := metrics["resourceMetrics"].([]any)[0].(map[string]any)["scopeMetrics"].([]any)[0].(map[string]any)["metrics"].([]any)
	sum := ms[1].(map[string]any)["sum"].(map[string]any)
	if sum["isMonotonic"] != true || sum["aggregationTemporality"] != "AGGREGATION_TEMPORALITY_CUMULATIVE" ||
		sum["dataPoints"].([]any)[0].(map[string]any)["asInt"] != "1099511627776" {
		t.Errorf("go.memory.allocated as python reads it: %v", sum)
	}

	tj, _ := marshalTracesJSON(testResource, testScope, testSpans())
	parseWithPython(t, py, "traces", "json", tj)
	mj, _ := marshalMetricsJSON(testResource, testScope, testMetrics())
	parseWithPython(t, py, "metrics", "json", mj)
}
