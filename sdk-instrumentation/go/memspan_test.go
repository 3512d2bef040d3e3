package memspan

import (
	"context"
	"errors"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"
)

// sink keeps allocations alive so the compiler cannot drop them.
var sink [][]byte

func TestARequestSpanCarriesTheMemorySpanAttributes(t *testing.T) {
	rec := newReceiver(t, nil)
	cfg := testConfig(rec.URL)
	m, err := New(Options{Config: cfg, Cohort: "canary", Getenv: envMap(nil), OnError: func(error) {}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, req := m.Start(context.Background(), "text_completion", "tiny-go-lm")
	sink = append(sink, make([]byte, 4<<20)) // 4 MiB allocated by this request
	_, child := m.Start(ctx, "embed", "tiny-go-lm")
	child.SetError(errors.New("no GPU"))
	child.End()
	req.SetTokens(12, 34)
	req.End()
	req.End() // a second End does nothing
	sink = nil
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.SpansExported != 2 {
		t.Fatalf("stats %+v", s)
	}
	body, err := decodePB(rec.got()[0].body)
	if err != nil {
		t.Fatal(err)
	}
	rs := body.msg(1)
	if res := rs.msg(1).attrs(1); res[AttrCohort] != "canary" || res["service.instance.id"] == nil {
		t.Errorf("resource %v", res)
	}
	spans := rs.msg(2).msgs(2)
	childSpan, parent := spans[0], spans[1]
	if parent.str(5) != "text_completion tiny-go-lm" || parent.u64(6) != spanKindInternal || parent.has(4) {
		t.Errorf("parent span name %q kind %d", parent.str(5), parent.u64(6))
	}
	if childSpan.str(1) != parent.str(1) || childSpan.str(4) != parent.str(2) {
		t.Error("the child span is not in the request's trace under the request span")
	}
	if st := childSpan.msg(15); st.u64(3) != statusCodeError || st.str(2) != "no GPU" {
		t.Errorf("child status %d %q", st.u64(3), st.str(2))
	}
	a := parent.attrs(9)
	for _, k := range []string{AttrRSSStart, AttrRSSEnd, AttrHeapAllocated, AttrHeapResident, AttrHeapRetained,
		AttrRequestAllocated} {
		v, ok := a[k].(int64)
		if !ok || v < 0 {
			t.Errorf("%s = %v, want a non-negative integer", k, a[k])
		}
	}
	if a[AttrGenAIOperationName] != "text_completion" || a[AttrGenAIRequestModel] != "tiny-go-lm" ||
		a[AttrCohort] != "canary" || a[AttrGenAIUsageInputTokens] != int64(12) ||
		a[AttrGenAIUsageOutputTokens] != int64(34) {
		t.Errorf("attributes %v", a)
	}
	if got := a[AttrRequestAllocated].(int64); got < 4<<20 {
		t.Errorf("request allocated %d bytes, want at least the 4 MiB it allocated", got)
	}
	if rss := a[AttrRSSEnd].(int64); rss < 1<<20 {
		t.Errorf("rss.end %d", rss)
	}
	if heap := a[AttrHeapAllocated].(int64); heap > a[AttrHeapResident].(int64) {
		t.Errorf("heap allocated %d > resident %d", heap, a[AttrHeapResident])
	}
	if _, present := a[AttrRequestFreed]; present {
		t.Error("memspan.request.freed is not measurable in Go and must be absent")
	}
	if parent.u64(8) < parent.u64(7) || parent.u64(7) == 0 {
		t.Errorf("times %d..%d", parent.u64(7), parent.u64(8))
	}
}

func TestTraceparentRoundTrip(t *testing.T) {
	m := newTestMemspan(t, testConfig("http://127.0.0.1:1"), nil)
	_, req := m.Start(context.Background(), "chat", "m")
	defer req.End()
	tid, sid, ok := ParseTraceparent(req.Traceparent())
	if !ok || tid != req.TraceID() || sid != req.SpanID() {
		t.Errorf("traceparent %q read back as %x %x %v", req.Traceparent(), tid, sid, ok)
	}
	ctx := ContextWithParent(context.Background(), tid, sid)
	_, child := m.Start(ctx, "chat", "m")
	if child.TraceID() != tid || child.span.parentSpanID != sid {
		t.Error("a request started under a remote parent is not in its trace")
	}
	child.End()
	for _, bad := range []string{"", "00-00000000000000000000000000000000-0102030405060708-01",
		"00-0102030405060708090a0b0c0d0e0f10-zz02030405060708-01", "ff-0102030405060708090a0b0c0d0e0f10-0102030405060708-01"} {
		if _, _, ok := ParseTraceparent(bad); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRuntimeMetricsFollowTheSemanticConventions(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(1 << 40))
	noLimit := new(atomic.Int64)
	noLimit.Store(-1)
	c := newRuntimeCollector(time.Now(), nil, nil, noLimit)
	ms := c.collect(time.Now())
	type shape struct {
		unit      string
		kind      metricKind
		monotonic bool
	}
	want := map[string]shape{
		MetricGoMemoryUsed:        {"By", metricSum, false},
		MetricGoMemoryLimit:       {"By", metricSum, false},
		MetricGoMemoryAllocated:   {"By", metricSum, true},
		MetricGoMemoryAllocations: {"{allocation}", metricSum, true},
		MetricGoMemoryGCGoal:      {"By", metricSum, false},
		MetricGoGoroutineCount:    {"{goroutine}", metricSum, false},
		MetricGoProcessorLimit:    {"{thread}", metricSum, false},
		MetricGoConfigGOGC:        {"%", metricSum, false},
	}
	got := map[string]metricData{}
	for _, md := range ms {
		got[md.name] = md
	}
	for name, w := range want {
		md, ok := got[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if md.unit != w.unit || md.kind != w.kind || md.monotonic != w.monotonic {
			t.Errorf("%s: unit %q kind %d monotonic %v; want %+v", name, md.unit, md.kind, md.monotonic, w)
		}
		for _, p := range md.points {
			if p.value < 0 || p.startNano == 0 || p.timeNano < p.startNano {
				t.Errorf("%s point %+v", name, p)
			}
		}
	}
	used := got[MetricGoMemoryUsed].points
	if len(used) != 2 || used[0].attrs[0].Key != AttrGoMemoryType {
		t.Fatalf("go.memory.used points %+v", used)
	}
	if s, _ := used[0].attrs[0].Value.AsString(); s != "stack" || used[0].value <= 0 {
		t.Errorf("stack point %+v", used[0])
	}
	if s, _ := used[1].attrs[0].Value.AsString(); s != "other" || used[1].value < 1<<20 {
		t.Errorf("other point %+v", used[1])
	}
	if got[MetricGoMemoryLimit].points[0].value != 1<<40 {
		t.Errorf("go.memory.limit %d, want the limit set", got[MetricGoMemoryLimit].points[0].value)
	}
	if got[MetricGoGoroutineCount].points[0].value < 2 {
		t.Error("go.goroutine.count below the goroutines of a running test")
	}

	debug.SetMemoryLimit(1<<63 - 1)
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	for _, md := range c.collect(time.Now()) {
		if md.name == MetricGoMemoryLimit || md.name == MetricGoConfigGOGC {
			t.Errorf("%s exported without a memory limit / with GOGC=off", md.name)
		}
	}
}
