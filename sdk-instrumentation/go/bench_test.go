package memspan

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// work stands for a request's own code: a little arithmetic, no allocation.
//
//go:noinline
func work(n int) int {
	acc := 0
	for i := range n {
		acc += i * i
	}
	return acc
}

var workSink int

// benchMemspan exports protobuf to a local receiver that discards the bodies.
func benchMemspan(b *testing.B, queue int) *Memspan {
	rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	b.Cleanup(rec.Close)
	cfg := testConfig(rec.URL)
	cfg.MaxQueueSize, cfg.MaxBatchSize, cfg.BatchDelay = queue, 512, 100*time.Millisecond
	m, err := New(Options{Config: cfg, Cohort: "baseline", Getenv: envMap(nil), OnError: func(error) {}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	return m
}

// BenchmarkRequest compares a bare request with the same request under memspan (Start, SetTokens, End).
//
//   - bare: the request's own work alone.
//   - memspan: what memspan adds on the request path, while the exporter encodes and sends in the background.
//     Requests back to back on one goroutine run at about a million a second, faster than any inference
//     service and than the background export on a small machine, so some spans are dropped (dropped/op); the
//     request path costs the same either way.
//   - memspan+export: every span exported: the loop waits for the export every 256 requests, so the time per
//     request includes encoding and sending (and the in-process receiver) as well.
//
// memspan's per-request overhead is the memspan ns/op minus the bare ns/op.
func BenchmarkRequest(b *testing.B) {
	ctx := context.Background()
	request := func(m *Memspan) {
		_, r := m.Start(ctx, "text_completion", "tiny-go-lm")
		workSink += work(64)
		r.SetTokens(16, 16)
		r.End()
	}
	b.Run("bare", func(b *testing.B) {
		for b.Loop() {
			workSink += work(64)
		}
	})
	b.Run("memspan", func(b *testing.B) {
		m := benchMemspan(b, 1<<14)
		before := m.Stats().SpansDropped
		for b.Loop() {
			request(m)
		}
		b.ReportMetric(float64(m.Stats().SpansDropped-before)/float64(b.N), "dropped/op")
	})
	b.Run("memspan+export", func(b *testing.B) {
		m := benchMemspan(b, 1<<14)
		before := m.Stats().SpansDropped
		i := 0
		for b.Loop() {
			request(m)
			if i++; i%256 == 0 {
				_ = m.spans.flush(ctx)
			}
		}
		_ = m.spans.flush(ctx)
		b.ReportMetric(float64(m.Stats().SpansDropped-before)/float64(b.N), "dropped/op")
	})
}
