package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests run the service as a child process (this test binary, re-executed with runAsMain set), so each
// run's goroutines, C memory and GC settings are its own.
const runAsMain = "MEMSPAN_EXAMPLE_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runAsMain) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// otlpJSON collects OTLP/JSON exports: span names with their attributes, and metric points by name.
type otlpJSON struct {
	mu      sync.Mutex
	spans   []map[string]any // attributes by key, plus "name"
	metrics map[string][]point
}

type point struct {
	value int64
	attrs map[string]string
	time  int64
}

type jsonAnyValue struct {
	StringValue *string `json:"stringValue"`
	IntValue    *string `json:"intValue"`
}

type jsonKV struct {
	Key   string       `json:"key"`
	Value jsonAnyValue `json:"value"`
}

type jsonPoint struct {
	Attributes   []jsonKV `json:"attributes"`
	TimeUnixNano string   `json:"timeUnixNano"`
	AsInt        string   `json:"asInt"`
}

func (o *otlpJSON) handler(t *testing.T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("content type %q", ct)
		}
		o.mu.Lock()
		defer o.mu.Unlock()
		switch r.URL.Path {
		case "/v1/traces":
			var req struct {
				ResourceSpans []struct {
					ScopeSpans []struct {
						Spans []struct {
							Name       string   `json:"name"`
							Attributes []jsonKV `json:"attributes"`
						} `json:"spans"`
					} `json:"scopeSpans"`
				} `json:"resourceSpans"`
			}
			if err := json.Unmarshal(body, &req); err != nil {
				t.Errorf("traces body: %v", err)
			}
			for _, rs := range req.ResourceSpans {
				for _, ss := range rs.ScopeSpans {
					for _, s := range ss.Spans {
						span := map[string]any{"name": s.Name}
						for _, kv := range s.Attributes {
							span[kv.Key] = value(kv.Value)
						}
						o.spans = append(o.spans, span)
					}
				}
			}
		case "/v1/metrics":
			var req struct {
				ResourceMetrics []struct {
					ScopeMetrics []struct {
						Metrics []struct {
							Name  string                            `json:"name"`
							Sum   *struct{ DataPoints []jsonPoint } `json:"sum"`
							Gauge *struct{ DataPoints []jsonPoint } `json:"gauge"`
						} `json:"metrics"`
					} `json:"scopeMetrics"`
				} `json:"resourceMetrics"`
			}
			if err := json.Unmarshal(body, &req); err != nil {
				t.Errorf("metrics body: %v", err)
			}
			for _, rm := range req.ResourceMetrics {
				for _, sm := range rm.ScopeMetrics {
					for _, m := range sm.Metrics {
						var pts []jsonPoint
						if m.Sum != nil {
							pts = m.Sum.DataPoints
						} else if m.Gauge != nil {
							pts = m.Gauge.DataPoints
						}
						for _, p := range pts {
							v, _ := strconv.ParseInt(p.AsInt, 10, 64)
							ts, _ := strconv.ParseInt(p.TimeUnixNano, 10, 64)
							attrs := map[string]string{}
							for _, kv := range p.Attributes {
								if s, ok := value(kv.Value).(string); ok {
									attrs[kv.Key] = s
								}
							}
							o.metrics[m.Name] = append(o.metrics[m.Name], point{value: v, attrs: attrs, time: ts})
						}
					}
				}
			}
		default:
			t.Errorf("export to %s", r.URL.Path)
		}
	}
}

func value(v jsonAnyValue) any {
	switch {
	case v.StringValue != nil:
		return *v.StringValue
	case v.IntValue != nil:
		n, _ := strconv.ParseInt(*v.IntValue, 10, 64)
		return n
	}
	return nil
}

// last is the latest value of a metric among points whose attributes include want.
func (o *otlpJSON) last(name string, want map[string]string) (int64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var best point
	found := false
outer:
	for _, p := range o.metrics[name] {
		for k, v := range want {
			if p.attrs[k] != v {
				continue outer
			}
		}
		if !found || p.time >= best.time {
			best, found = p, true
		}
	}
	return best.value, found
}

// goMemoryUsed is the latest go.memory.used, both types together.
func (o *otlpJSON) goMemoryUsed(t *testing.T) int64 {
	stack, ok1 := o.last("go.memory.used", map[string]string{"go.memory.type": "stack"})
	other, ok2 := o.last("go.memory.used", map[string]string{"go.memory.type": "other"})
	if !ok1 || !ok2 {
		t.Fatal("go.memory.used with go.memory.type stack and other not received")
	}
	return stack + other
}

// runExample runs the service with args against a fresh receiver and returns what it exported.
func runExample(t *testing.T, args ...string) *otlpJSON {
	t.Helper()
	o := &otlpJSON{metrics: map[string][]point{}}
	srv := httptest.NewServer(o.handler(t))
	defer srv.Close()
	cmd := exec.Command(os.Args[0], append([]string{"-listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), runAsMain+"=1",
		"OTEL_EXPORTER_OTLP_ENDPOINT="+srv.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/json",
		"OTEL_SERVICE_NAME=example-test",
		"OTEL_METRIC_EXPORT_INTERVAL=200",
		"OTEL_BSP_SCHEDULE_DELAY=100",
		"MEMSPAN_COHORT=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%v did not finish in 30 s\nstdout:\n%s\nstderr:\n%s", args, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "selftest: 50 of 50 requests ok") {
		t.Errorf("%v: stdout %q", args, stdout.String())
	}
	if strings.Contains(stderr.String(), "dropped") || strings.Contains(stderr.String(), "not fully flushed") {
		t.Errorf("%v: stderr %q", args, stderr.String())
	}
	return o
}

func TestSelftestExportsSpansAndRuntimeMetrics(t *testing.T) {
	t.Parallel()
	o := runExample(t, "-selftest-requests", "50", "-cohort", "canary")
	if len(o.spans) != 50 {
		t.Fatalf("%d spans, want 50", len(o.spans))
	}
	for _, s := range o.spans[:3] {
		if s["name"] != "text_completion tiny-go-lm" || s["gen_ai.operation.name"] != "text_completion" ||
			s["gen_ai.request.model"] != "tiny-go-lm" || s["memspan.cohort"] != "canary" {
			t.Errorf("span %v", s)
		}
		for _, k := range []string{"memspan.rss.start", "memspan.rss.end", "memspan.heap.allocated",
			"memspan.heap.resident", "memspan.heap.retained", "gen_ai.usage.output_tokens"} {
			if v, ok := s[k].(int64); !ok || v <= 0 {
				t.Errorf("%s = %v", k, s[k])
			}
		}
		// 16 tokens of 64 KiB workspace: the request's own allocation, at least.
		if v, _ := s["memspan.request.allocated"].(int64); v < 16*workspacePerToken {
			t.Errorf("memspan.request.allocated = %v, want >= %d", s["memspan.request.allocated"], 16*workspacePerToken)
		}
	}
	for _, name := range []string{"go.memory.allocated", "go.memory.allocations", "go.memory.gc.goal",
		"go.goroutine.count", "go.processor.limit", "go.config.gogc", "process.memory.usage"} {
		if v, ok := o.last(name, nil); !ok || v <= 0 {
			t.Errorf("metric %s = %d (received %v)", name, v, ok)
		}
	}
	if used := o.goMemoryUsed(t); used < 1<<20 {
		t.Errorf("go.memory.used %d", used)
	}
}

func TestGoroutineLeakRaisesTheGoroutineCount(t *testing.T) {
	t.Parallel()
	base := runExample(t, "-selftest-requests", "50")
	leak := runExample(t, "-selftest-requests", "50", "-goroutine-leak")
	b, _ := base.last("go.goroutine.count", nil)
	l, _ := leak.last("go.goroutine.count", nil)
	t.Logf("go.goroutine.count: %d without -goroutine-leak, %d with", b, l)
	if l < b+50 {
		t.Errorf("go.goroutine.count: %d with -goroutine-leak, %d without; want at least 50 more", l, b)
	}
}

func TestCgoWeightsRaiseRSSButNotTheGoHeap(t *testing.T) {
	if !cgoAvailable {
		t.Skip("built without cgo")
	}
	t.Parallel()
	base := runExample(t, "-selftest-requests", "50")
	cgo := runExample(t, "-selftest-requests", "50", "-cgo-weights") // 50 x 1 MiB of C memory
	baseRSS, _ := base.last("process.memory.usage", nil)
	cgoRSS, _ := cgo.last("process.memory.usage", nil)
	rssGrowth := cgoRSS - baseRSS
	heapGrowth := cgo.goMemoryUsed(t) - base.goMemoryUsed(t)
	t.Logf("-cgo-weights: process.memory.usage +%d MiB, go.memory.used %+d MiB", rssGrowth>>20, heapGrowth>>20)
	if rssGrowth < 40<<20 || rssGrowth < heapGrowth+30<<20 {
		t.Errorf("-cgo-weights: RSS %d MiB more than without, go.memory.used %d MiB more; want RSS to grow by "+
			"about 50 MiB and the Go runtime's memory far less", rssGrowth>>20, heapGrowth>>20)
	}
}

func TestOtherSwitchesRun(t *testing.T) {
	t.Parallel()
	o := runExample(t, "-selftest-requests", "50", "-pool-no-reset", "-cache-grow", "-warmup-burst",
		"-gogc", "50", "-gomemlimit", "256MiB", "-rate", "500")
	if limit, ok := o.last("go.memory.limit", nil); !ok || limit != 256<<20 {
		t.Errorf("go.memory.limit = %d (received %v), want 256 MiB", limit, ok)
	}
	if gogc, _ := o.last("go.config.gogc", nil); gogc != 50 {
		t.Errorf("go.config.gogc = %d, want 50", gogc)
	}
	if len(o.spans) < 50 {
		t.Errorf("%d spans", len(o.spans))
	}
}

func TestFlagChecks(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "512MiB": 512 << 20, "2 GiB": 2 << 30, "1KB": 1000,
		"10B": 10} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "lots", "-5MiB", "1.5GiB", "9999999999GiB"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) accepted", bad)
		}
	}
	var stderr bytes.Buffer
	for _, args := range [][]string{{"-max-tokens", "0"}, {"-rate", "-1"}, {"extra"}, {"-gogc", "x"}} {
		o, err := parseFlags(args, &stderr)
		if err == nil {
			err = applyGCSettings(o)
		}
		if err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
