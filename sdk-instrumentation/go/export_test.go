package memspan

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// received is one export request as the test receiver saw it.
type received struct {
	path, contentType, encoding string
	header                      http.Header
	body                        []byte // decompressed
	at                          time.Time
}

// receiver is an OTLP/HTTP endpoint for the tests. respond, when set, answers each request (by 1-based
// number); otherwise every request gets 200 with an empty body.
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	requests []received
	respond  func(n int, w http.ResponseWriter) bool
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter) bool) *receiver {
	r := &receiver{respond: respond}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if req.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				http.Error(w, "bad gzip", http.StatusBadRequest)
				return
			}
			body, _ = io.ReadAll(zr)
		}
		r.mu.Lock()
		r.requests = append(r.requests, received{path: req.URL.Path, contentType: req.Header.Get("Content-Type"),
			encoding: req.Header.Get("Content-Encoding"), header: req.Header.Clone(), body: body, at: time.Now()})
		n := len(r.requests)
		r.mu.Unlock()
		if r.respond != nil && r.respond(n, w) {
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.requests...)
}

// spanCounts is the number of spans in each protobuf traces request received.
func (r *receiver) spanCounts(t *testing.T) []int {
	t.Helper()
	var out []int
	for _, req := range r.got() {
		if req.path != "/v1/traces" {
			continue
		}
		m, err := decodePB(req.body)
		if err != nil {
			t.Fatalf("traces body: %v", err)
		}
		out = append(out, len(m.msg(1).msg(2).msgs(2)))
	}
	return out
}

// testConfig exports to url with fast retries and no timer-driven batches or metric exports.
func testConfig(url string) *Config {
	return &Config{
		Traces:         SignalConfig{URL: url + "/v1/traces", Protocol: ProtocolProtobuf, Timeout: 2 * time.Second},
		Metrics:        SignalConfig{URL: url + "/v1/metrics", Protocol: ProtocolProtobuf, Timeout: 2 * time.Second},
		MetricInterval: time.Hour,
		BatchDelay:     time.Hour,
		MaxQueueSize:   100,
		MaxBatchSize:   10,
		Retry:          RetryConfig{Initial: 10 * time.Millisecond, Max: 40 * time.Millisecond, MaxElapsed: 5 * time.Second},
	}
}

func newTestMemspan(t *testing.T, cfg *Config, errs *[]error) *Memspan {
	t.Helper()
	var mu sync.Mutex
	m, err := New(Options{ServiceName: "test", Config: cfg, Getenv: func(string) (string, bool) { return "", false },
		OnError: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if errs != nil {
				*errs = append(*errs, err)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = m.Shutdown(ctx)
	})
	return m
}

func runRequests(m *Memspan, n int) {
	for range n {
		_, r := m.Start(context.Background(), "chat", "m")
		r.End()
	}
}

func TestSpansGoOutInBatchesOfMaxBatchSize(t *testing.T) {
	rec := newReceiver(t, nil)
	m := newTestMemspan(t, testConfig(rec.URL), nil)
	runRequests(m, 25)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	counts := rec.spanCounts(t)
	if len(counts) != 3 || counts[0] != 10 || counts[1] != 10 || counts[2] != 5 {
		t.Errorf("batches %v, want [10 10 5]", counts)
	}
	if s := m.Stats(); s.SpansExported != 25 || s.SpansDropped != 0 || s.MetricExports != 1 {
		t.Errorf("stats %+v", s)
	}
	if got := rec.got()[0]; got.contentType != "application/x-protobuf" || got.encoding != "" {
		t.Errorf("content type %q encoding %q", got.contentType, got.encoding)
	}
}

func TestABatchIsSentAfterBatchDelay(t *testing.T) {
	rec := newReceiver(t, nil)
	cfg := testConfig(rec.URL)
	cfg.BatchDelay = 50 * time.Millisecond
	m := newTestMemspan(t, cfg, nil)
	runRequests(m, 3)
	deadline := time.Now().Add(3 * time.Second)
	for m.Stats().SpansExported < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if counts := rec.spanCounts(t); len(counts) != 1 || counts[0] != 3 {
		t.Errorf("batches %v, want [3] without a flush", counts)
	}
}

func TestRetriesOn503HonouringRetryAfter(t *testing.T) {
	rec := newReceiver(t, func(n int, w http.ResponseWriter) bool {
		if n == 1 {
			w.Header().Set("Retry-After", "7")
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	x := newHTTPExporter(SignalConfig{URL: rec.URL + "/v1/traces", Timeout: time.Second},
		RetryConfig{Initial: 10 * time.Millisecond, Max: time.Second, MaxElapsed: time.Minute})
	var waits []time.Duration
	x.sleep = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
	if _, err := x.send(context.Background(), []byte("body")); err != nil {
		t.Fatal(err)
	}
	if len(rec.got()) != 2 || len(waits) != 1 || waits[0] != 7*time.Second {
		t.Errorf("%d requests, waits %v; want 2 requests and one wait of 7s", len(rec.got()), waits)
	}
	if !bytes.Equal(rec.got()[1].body, []byte("body")) {
		t.Error("the retry did not resend the body")
	}
}

func TestRetryBackoffDoublesAndPermanentErrorsAreNotRetried(t *testing.T) {
	status := http.StatusTooManyRequests
	rec := newReceiver(t, func(n int, w http.ResponseWriter) bool {
		if n <= 3 {
			http.Error(w, "slow down", status)
			return true
		}
		return false
	})
	x := newHTTPExporter(SignalConfig{URL: rec.URL, Timeout: time.Second},
		RetryConfig{Initial: 100 * time.Millisecond, Max: 250 * time.Millisecond, MaxElapsed: time.Minute})
	var waits []time.Duration
	x.sleep = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
	if _, err := x.send(context.Background(), []byte("b")); err != nil {
		t.Fatal(err)
	}
	bounds := [][2]time.Duration{{100, 120}, {200, 240}, {250, 300}} // doubling with <= 20% jitter, capped
	if len(waits) != 3 {
		t.Fatalf("waits %v", waits)
	}
	for i, w := range waits {
		if w < bounds[i][0]*time.Millisecond || w > bounds[i][1]*time.Millisecond {
			t.Errorf("wait %d = %v, want within %v ms", i, w, bounds[i])
		}
	}

	status = http.StatusBadRequest
	rec.mu.Lock()
	rec.requests = nil
	rec.mu.Unlock()
	_, err := x.send(context.Background(), []byte("b"))
	if err == nil || !strings.Contains(err.Error(), "400") || len(rec.got()) != 1 {
		t.Errorf("400: err %v after %d requests; want one request and an error naming the status", err,
			len(rec.got()))
	}
}

func TestRetryGivesUpAtTheDeadline(t *testing.T) {
	rec := newReceiver(t, func(int, http.ResponseWriter) bool { return false })
	rec.respond = func(_ int, w http.ResponseWriter) bool {
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	}
	x := newHTTPExporter(SignalConfig{URL: rec.URL, Timeout: time.Second},
		RetryConfig{Initial: time.Millisecond, Max: time.Millisecond, MaxElapsed: 2 * time.Second})
	start := time.Now()
	_, err := x.send(context.Background(), []byte("b"))
	if err == nil || !strings.Contains(err.Error(), "503") || time.Since(start) > time.Second {
		t.Errorf("err %v after %v; want a prompt 503 error (Retry-After beyond the deadline)", err, time.Since(start))
	}
}

func TestAFullQueueDropsAndCountsWithoutBlocking(t *testing.T) {
	inFlight := make(chan struct{}, 1)
	release := make(chan struct{})
	rec := newReceiver(t, func(n int, w http.ResponseWriter) bool {
		if n == 1 {
			inFlight <- struct{}{}
			<-release
		}
		return false
	})
	cfg := testConfig(rec.URL)
	cfg.MaxQueueSize, cfg.MaxBatchSize = 4, 4
	m := newTestMemspan(t, cfg, nil)
	runRequests(m, 4) // a full batch: its export hangs in the receiver
	select {
	case <-inFlight:
	case <-time.After(3 * time.Second):
		t.Fatal("the first batch was not sent")
	}
	start := time.Now()
	runRequests(m, 10) // 4 fit in the queue, 6 are dropped
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("10 requests took %v with the exporter stuck: requests must not block", d)
	}
	if s := m.Stats(); s.SpansDropped != 6 {
		t.Errorf("dropped %d, want 6", s.SpansDropped)
	}
	close(release)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.SpansExported != 8 {
		t.Errorf("exported %d, want 8", s.SpansExported)
	}
}

func TestShutdownFlushesSpansAndMetricsThenRecordsNothing(t *testing.T) {
	rec := newReceiver(t, nil)
	m := newTestMemspan(t, testConfig(rec.URL), nil)
	runRequests(m, 5)
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if counts := rec.spanCounts(t); len(counts) != 1 || counts[0] != 5 {
		t.Errorf("batches %v, want [5]", counts)
	}
	metricsRequests := 0
	for _, r := range rec.got() {
		if r.path == "/v1/metrics" {
			metricsRequests++
		}
	}
	if metricsRequests != 1 {
		t.Errorf("%d metrics exports at shutdown, want 1", metricsRequests)
	}
	runRequests(m, 3)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.SpansExported != 5 || len(rec.got()) != 2 {
		t.Errorf("after shutdown: %+v, %d requests", s, len(rec.got()))
	}
	if err := m.Shutdown(context.Background()); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
}

func TestShutdownKeepsToItsDeadline(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	rec := newReceiver(t, func(_ int, w http.ResponseWriter) bool {
		<-release
		return false
	})
	m := newTestMemspan(t, testConfig(rec.URL), nil)
	runRequests(m, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := m.Shutdown(ctx)
	if err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("shutdown against a hung receiver: err %v after %v; want a deadline error within 2 s", err,
			time.Since(start))
	}
}

func TestGzipJSONAndHeaders(t *testing.T) {
	rec := newReceiver(t, nil)
	cfg := testConfig(rec.URL)
	for _, sc := range []*SignalConfig{&cfg.Traces, &cfg.Metrics} {
		sc.Gzip, sc.Protocol = true, ProtocolJSON
		sc.Headers = map[string]string{"Authorization": "Bearer t0ken"}
	}
	m := newTestMemspan(t, cfg, nil)
	runRequests(m, 2)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := rec.got()
	if len(got) != 2 {
		t.Fatalf("%d requests", len(got))
	}
	for _, r := range got {
		if r.encoding != "gzip" || r.contentType != "application/json" || r.header.Get("Authorization") != "Bearer t0ken" {
			t.Errorf("%s: encoding %q type %q auth %q", r.path, r.encoding, r.contentType, r.header.Get("Authorization"))
		}
	}
	if !strings.Contains(string(got[0].body), `"name":"chat m"`) ||
		!strings.Contains(string(got[1].body), `"name":"go.goroutine.count"`) {
		t.Errorf("bodies:\n%s\n%s", got[0].body, got[1].body)
	}
}

func TestPartialSuccessIsCountedAndReported(t *testing.T) {
	// ExportTraceServiceResponse{partial_success{rejected_spans: 2, error_message: "late=2"}}
	partial := []byte{0x0a, 0x0a, 0x08, 0x02, 0x12, 0x06, 'l', 'a', 't', 'e', '=', '2'}
	rec := newReceiver(t, func(_ int, w http.ResponseWriter) bool {
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(partial)
		return true
	})
	var errs []error
	m := newTestMemspan(t, testConfig(rec.URL), &errs)
	runRequests(m, 3)
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := m.Stats(); s.SpansRejected != 2 || s.SpansExported != 3 {
		t.Errorf("stats %+v", s)
	}
	if len(errs) == 0 || !strings.Contains(errs[0].Error(), "late=2") {
		t.Errorf("errors %v", errs)
	}
	js := parsePartialSuccess([]byte(`{"partialSuccess":{"rejectedSpans":"4","errorMessage":"x"}}`), "application/json")
	if js.rejected != 4 || js.message != "x" {
		t.Errorf("JSON partial success %+v", js)
	}
}

func TestRetryAfterForms(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := map[string]time.Duration{
		"":                              0,
		"5":                             5 * time.Second,
		"-1":                            0,
		"soon":                          0,
		"Fri, 02 Jan 2026 03:04:15 GMT": 10 * time.Second,
		"Fri, 02 Jan 2026 03:04:00 GMT": 0, // in the past
	}
	for in, want := range cases {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("Retry-After %q = %v, want %v", in, got, want)
		}
	}
}

func TestConcurrentRequestsAreAllAccountedFor(t *testing.T) {
	rec := newReceiver(t, nil)
	cfg := testConfig(rec.URL)
	cfg.MaxQueueSize, cfg.MaxBatchSize = 4096, 100
	m := newTestMemspan(t, cfg, nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				ctx, r := m.Start(context.Background(), "chat", "m")
				_, child := m.Start(ctx, "tool", "m")
				child.End()
				r.SetTokens(1, 2)
				r.End()
			}
		}()
	}
	wg.Wait()
	if err := m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := m.Stats()
	total := 0
	for _, n := range rec.spanCounts(t) {
		total += n
	}
	if s.SpansExported+s.SpansDropped != 3200 || uint64(total) != s.SpansExported || s.SpansExported == 0 {
		t.Errorf("3200 spans ended: %d exported (%d received), %d dropped", s.SpansExported, total, s.SpansDropped)
	}
}
