package memspan

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Version is this package's version, exported as the instrumentation scope's and telemetry.sdk.version.
const Version = "0.1.0"

// ScopeName is the instrumentation scope of memspan's spans and metrics.
const ScopeName = "memspan"

// cgroupRefresh is how often the cgroup limit is re-read: limits change only when an operator resizes the
// container.
const cgroupRefresh = 10 * time.Second

// Options configure New. The zero value reads everything from the environment.
type Options struct {
	// ServiceName is used when neither OTEL_SERVICE_NAME nor service.name in OTEL_RESOURCE_ATTRIBUTES is set;
	// without any, the name is "unknown_service:<executable>".
	ServiceName string
	// ServiceVersion is service.version unless OTEL_RESOURCE_ATTRIBUTES sets it.
	ServiceVersion string
	// Cohort labels every span and the resource with memspan.cohort; empty means MEMSPAN_COHORT, if set.
	Cohort string
	// ResourceAttributes are added to the resource; OTEL_RESOURCE_ATTRIBUTES overrides the same keys.
	ResourceAttributes []KeyValue
	// Config replaces the OTEL_* variables when set (ConfigFromEnv makes one to adjust).
	Config *Config
	// Getenv looks up environment variables (os.LookupEnv when nil).
	Getenv func(string) (string, bool)
	// OnError receives export failures. By default they are logged to stderr at most once a minute.
	OnError func(error)
}

// Stats counts what happened to the telemetry since New.
type Stats struct {
	SpansExported uint64
	// SpansDropped were not exported because the queue was full or memspan was shut down.
	SpansDropped uint64
	// SpansFailed were in a batch whose export failed for good.
	SpansFailed uint64
	// SpansRejected were reported rejected by the receiver (OTLP partial success).
	SpansRejected uint64
	// MetricExports and MetricExportsFailed count the metric collections sent and lost.
	MetricExports       uint64
	MetricExportsFailed uint64
}

type counters struct {
	spansExported, spansDropped, spansFailed, spansRejected atomic.Uint64
	metricExports, metricExportsFailed                      atomic.Uint64
}

// Memspan records inference requests as spans and exports them with the runtime metrics. Create it with New;
// it is safe for concurrent use.
type Memspan struct {
	disabled bool
	cohort   string
	resource []KeyValue
	scope    scope
	cfg      Config

	rss         *rssProbe // nil without procfs
	heap        *heapProbe
	allocs      *allocProbe
	cgroupLimit atomic.Int64 // -1 when unlimited or unknown
	collector   *runtimeCollector

	spans   *spanBatcher
	metrics *httpExporter
	stats   counters
	onError func(error)

	// anchor is the time of New; probes keep their reading times as monotonic offsets from it.
	anchor time.Time

	closed   atomic.Bool
	stop     chan struct{} // closed by Shutdown: ends the metric and cgroup loops
	loops    sync.WaitGroup
	shutdown sync.Once
}

// New sets up probes and OTLP/HTTP export from opts and the OTEL_* variables, and starts the metric loop.
// An invalid variable is an error that names it.
func New(opts Options) (*Memspan, error) {
	lookup := opts.Getenv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var cfg Config
	if opts.Config != nil {
		cfg = *opts.Config
	} else {
		var err error
		if cfg, err = ConfigFromEnv(lookup); err != nil {
			return nil, err
		}
	}
	fillDefaults(&cfg)
	cohort := opts.Cohort
	if cohort == "" {
		cohort, _ = lookup("MEMSPAN_COHORT")
	}
	m := &Memspan{
		disabled: cfg.Disabled,
		cohort:   cohort,
		resource: buildResource(cfg, opts, cohort),
		scope:    scope{name: ScopeName, version: Version},
		cfg:      cfg,
		heap:     newHeapProbe(defaultMaxAge),
		allocs:   newAllocProbe(allocMaxAge),
		stop:     make(chan struct{}),
		onError:  opts.OnError,
		anchor:   time.Now(),
	}
	if m.onError == nil {
		m.onError = rateLimitedLog(time.Minute)
	}
	m.cgroupLimit.Store(-1)
	if m.disabled {
		return m, nil
	}
	if rss, err := newRSSProbe("/proc/self/statm", defaultMaxAge); err == nil {
		m.rss = rss
	}
	var cg *cgroupLocation
	if loc, ok := discoverCgroup(); ok {
		cg = &loc
		m.cgroupLimit.Store(loc.limit())
		m.loops.Add(1)
		go m.refreshCgroup(loc)
	}
	start := time.Now()
	m.collector = newRuntimeCollector(start, m.rss, cg, &m.cgroupLimit)
	m.spans = newSpanBatcher(cfg, newHTTPExporter(cfg.Traces, cfg.Retry), m.encodeSpans, &m.stats, m.onError)
	m.metrics = newHTTPExporter(cfg.Metrics, cfg.Retry)
	m.loops.Add(1)
	go m.metricLoop()
	return m, nil
}

// fillDefaults completes a Config built by hand.
func fillDefaults(cfg *Config) {
	if cfg.MetricInterval <= 0 {
		cfg.MetricInterval = defaultMetricInterval
	}
	if cfg.BatchDelay <= 0 {
		cfg.BatchDelay = defaultBatchDelay
	}
	if cfg.MaxQueueSize <= 0 {
		cfg.MaxQueueSize = defaultMaxQueueSize
	}
	if cfg.MaxBatchSize <= 0 || cfg.MaxBatchSize > cfg.MaxQueueSize {
		cfg.MaxBatchSize = min(defaultMaxBatchSize, cfg.MaxQueueSize)
	}
	if cfg.Retry.Initial <= 0 {
		cfg.Retry.Initial = DefaultRetry.Initial
	}
	if cfg.Retry.Max < cfg.Retry.Initial {
		cfg.Retry.Max = max(DefaultRetry.Max, cfg.Retry.Initial)
	}
	if cfg.Retry.MaxElapsed <= 0 {
		cfg.Retry.MaxElapsed = DefaultRetry.MaxElapsed
	}
	for _, sc := range []*SignalConfig{&cfg.Traces, &cfg.Metrics} {
		if sc.Protocol == "" {
			sc.Protocol = ProtocolProtobuf
		}
		if sc.Timeout <= 0 {
			sc.Timeout = defaultTimeout
		}
	}
	if cfg.Traces.URL == "" {
		cfg.Traces.URL = defaultEndpoint + "/v1/traces"
	}
	if cfg.Metrics.URL == "" {
		cfg.Metrics.URL = defaultEndpoint + "/v1/metrics"
	}
}

// buildResource assembles the resource attributes, later sources overriding earlier ones: memspan's defaults,
// Options.ResourceAttributes, OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME.
func buildResource(cfg Config, opts Options, cohort string) []KeyValue {
	host, _ := os.Hostname()
	serviceName := opts.ServiceName
	if serviceName == "" {
		exe, _ := os.Executable()
		serviceName = "unknown_service:" + filepath.Base(exe)
	}
	var out []KeyValue
	index := map[string]int{}
	set := func(kv KeyValue) {
		if i, ok := index[kv.Key]; ok {
			out[i] = kv
			return
		}
		index[kv.Key] = len(out)
		out = append(out, kv)
	}
	set(String("service.name", serviceName))
	if opts.ServiceVersion != "" {
		set(String("service.version", opts.ServiceVersion))
	}
	if host != "" {
		set(String("service.instance.id", host+"-"+strconv.Itoa(os.Getpid())))
		set(String("host.name", host))
	} else {
		set(String("service.instance.id", "pid-"+strconv.Itoa(os.Getpid())))
	}
	set(String("telemetry.sdk.name", "memspan"))
	set(String("telemetry.sdk.language", "go"))
	set(String("telemetry.sdk.version", Version))
	if cohort != "" {
		set(String(AttrCohort, cohort))
	}
	for _, kv := range opts.ResourceAttributes {
		set(kv)
	}
	for _, kv := range cfg.ResourceAttributes {
		set(kv)
	}
	if cfg.ServiceName != "" {
		set(String("service.name", cfg.ServiceName))
	}
	return out
}

// Resource returns the resource attributes every export carries.
func (m *Memspan) Resource() []KeyValue { return append([]KeyValue(nil), m.resource...) }

// Stats returns the counters of exported, dropped and failed telemetry.
func (m *Memspan) Stats() Stats {
	return Stats{
		SpansExported:       m.stats.spansExported.Load(),
		SpansDropped:        m.stats.spansDropped.Load(),
		SpansFailed:         m.stats.spansFailed.Load(),
		SpansRejected:       m.stats.spansRejected.Load(),
		MetricExports:       m.stats.metricExports.Load(),
		MetricExportsFailed: m.stats.metricExportsFailed.Load(),
	}
}

// encodeSpans encodes a batch, appending to buf for protobuf.
func (m *Memspan) encodeSpans(buf []byte, spans []*spanData) ([]byte, error) {
	if m.cfg.Traces.Protocol == ProtocolJSON {
		return marshalTracesJSON(m.resource, m.scope, spans)
	}
	return appendTracesProto(buf, m.resource, m.scope, spans), nil
}

func (m *Memspan) encodeMetrics(md []metricData) ([]byte, error) {
	if m.cfg.Metrics.Protocol == ProtocolJSON {
		return marshalMetricsJSON(m.resource, m.scope, md)
	}
	return appendMetricsProto(nil, m.resource, m.scope, md), nil
}

func (m *Memspan) refreshCgroup(loc cgroupLocation) {
	defer m.loops.Done()
	t := time.NewTicker(cgroupRefresh)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			m.cgroupLimit.Store(loc.limit())
		case <-m.stop:
			return
		}
	}
}

func (m *Memspan) metricLoop() {
	defer m.loops.Done()
	t := time.NewTicker(m.cfg.MetricInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-m.stop
		cancel()
	}()
	for {
		select {
		case <-t.C:
			if err := m.exportMetrics(ctx); err != nil && ctx.Err() == nil {
				m.onError(err)
			}
		case <-m.stop:
			return
		}
	}
}

// exportMetrics collects the runtime metrics now and exports them.
func (m *Memspan) exportMetrics(ctx context.Context) error {
	body, err := m.encodeMetrics(m.collector.collect(time.Now()))
	if err != nil {
		m.stats.metricExportsFailed.Add(1)
		return fmt.Errorf("memspan: encoding metrics: %w", err)
	}
	res, err := m.metrics.send(ctx, body)
	if err != nil {
		m.stats.metricExportsFailed.Add(1)
		return err
	}
	m.stats.metricExports.Add(1)
	if res.rejected > 0 || res.message != "" {
		m.onError(fmt.Errorf("memspan: the receiver rejected %d metric points: %s", res.rejected, res.message))
	}
	return nil
}

// Flush exports the spans finished so far and a collection of the runtime metrics, waiting at most until ctx
// ends.
func (m *Memspan) Flush(ctx context.Context) error {
	if m.disabled || m.closed.Load() {
		return nil
	}
	return errors.Join(m.spans.flush(ctx), m.exportMetrics(ctx))
}

// Shutdown flushes (spans, then a last metrics collection) within ctx's deadline and stops memspan: requests
// started afterwards record nothing. Calling it again does nothing.
func (m *Memspan) Shutdown(ctx context.Context) error {
	var err error
	m.shutdown.Do(func() {
		if m.disabled {
			return
		}
		m.closed.Store(true)
		err = errors.Join(m.spans.flush(ctx), m.exportMetrics(ctx))
		close(m.stop)
		m.spans.close()
		m.loops.Wait()
		if m.rss != nil {
			_ = m.rss.close()
		}
	})
	return err
}

// rateLimitedLog logs errors to stderr, at most one per interval, with the count of those left out.
func rateLimitedLog(interval time.Duration) func(error) {
	var mu sync.Mutex
	var last time.Time
	var skipped int
	return func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if !last.IsZero() && time.Since(last) < interval {
			skipped++
			return
		}
		if skipped > 0 {
			log.Printf("%v (and %d more errors in the last %v)", err, skipped, interval)
		} else {
			log.Print(err)
		}
		last, skipped = time.Now(), 0
	}
}

// --- requests ---

type spanContextKey struct{}

// spanContext identifies the span a context carries, as parent of the spans started from it.
type spanContext struct {
	traceID TraceID
	spanID  SpanID
}

// ContextWithParent returns ctx carrying a remote parent span: requests started from it join that trace.
func ContextWithParent(ctx context.Context, traceID TraceID, spanID SpanID) context.Context {
	return context.WithValue(ctx, spanContextKey{}, spanContext{traceID, spanID})
}

// SpanFromContext returns the trace and span ids ctx carries (the request span of Start, or a parent).
func SpanFromContext(ctx context.Context) (TraceID, SpanID, bool) {
	switch v := ctx.Value(spanContextKey{}).(type) {
	case *Request: // a request started here: its ids are fixed at Start
		return v.span.traceID, v.span.spanID, true
	case spanContext: // a remote parent
		return v.traceID, v.spanID, true
	}
	return TraceID{}, SpanID{}, false
}

// ParseTraceparent reads a W3C traceparent header ("00-<trace id>-<span id>-<flags>").
func ParseTraceparent(h string) (TraceID, SpanID, bool) {
	var t TraceID
	var s SpanID
	if len(h) != 55 || h[2] != '-' || h[35] != '-' || h[52] != '-' || h[:2] == "ff" {
		return t, s, false
	}
	if _, err := hex.Decode(t[:], []byte(h[3:35])); err != nil {
		return t, s, false
	}
	if _, err := hex.Decode(s[:], []byte(h[36:52])); err != nil {
		return t, s, false
	}
	return t, s, t != TraceID{} && s != SpanID{}
}

// Request is one inference request in flight: Start begins it, End finishes and queues its span. A Request
// is used by one goroutine at a time and must not be used after End.
type Request struct {
	m          *Memspan
	span       spanData
	allocStart int64
	ended      atomic.Bool
}

func newTraceID() TraceID {
	var t TraceID
	for t == (TraceID{}) {
		a, b := rand.Uint64(), rand.Uint64()
		for i := range 8 {
			t[i], t[8+i] = byte(a>>(8*i)), byte(b>>(8*i))
		}
	}
	return t
}

func newSpanID() SpanID {
	var s SpanID
	for s == (SpanID{}) {
		a := rand.Uint64()
		for i := range 8 {
			s[i] = byte(a >> (8 * i))
		}
	}
	return s
}

// Start begins a request: a span named "{operation} {model}" (kind INTERNAL: the model runs in this process)
// with gen_ai.operation.name, gen_ai.request.model, the cohort and memspan.rss.start. Its parent is the span ctx
// carries, if any; the returned context carries the request's span. End it with End.
func (m *Memspan) Start(ctx context.Context, operation, model string) (context.Context, *Request) {
	r := &Request{m: m}
	if m == nil || m.disabled || m.closed.Load() {
		r.ended.Store(true)
		return ctx, r
	}
	s := &r.span
	if traceID, spanID, ok := SpanFromContext(ctx); ok {
		s.traceID, s.parentSpanID = traceID, spanID
	} else {
		s.traceID = newTraceID()
	}
	s.spanID = newSpanID()
	s.name = operation + " " + model
	s.kind = spanKindInternal
	s.operation, s.model, s.genAI, s.cohort = operation, model, true, m.cohort
	now := time.Now()
	mono := int64(now.Sub(m.anchor))
	if m.rss != nil {
		if rss := m.rss.rss(mono); rss >= 0 {
			s.setInt(maRSSStart, rss)
		}
	}
	r.allocStart = m.allocs.allocated(mono)
	s.startNano = uint64(now.UnixNano())
	// The request itself is the context value: a pointer, so no further allocation.
	return context.WithValue(ctx, spanContextKey{}, r), r
}

// Do runs fn as one request (Start, fn, End), recording fn's error on the span.
func (m *Memspan) Do(ctx context.Context, operation, model string, fn func(context.Context) error) error {
	ctx, r := m.Start(ctx, operation, model)
	defer r.End()
	err := fn(ctx)
	if err != nil {
		r.SetError(err)
	}
	return err
}

// SetTokens records token usage as gen_ai.usage.input_tokens and gen_ai.usage.output_tokens.
func (r *Request) SetTokens(input, output int64) {
	if r.ended.Load() {
		return
	}
	r.span.setInt(maInputTokens, input)
	r.span.setInt(maOutputTokens, output)
}

// SetAttributes adds attributes to the request's span.
func (r *Request) SetAttributes(kvs ...KeyValue) {
	if r.ended.Load() {
		return
	}
	r.span.attrs = append(r.span.attrs, kvs...)
}

// SetError marks the span as failed (status ERROR) with err's message.
func (r *Request) SetError(err error) {
	if err == nil || r.ended.Load() {
		return
	}
	r.span.statusCode = statusCodeError
	r.span.statusMsg = err.Error()
}

// TraceID returns the request span's trace id.
func (r *Request) TraceID() TraceID { return r.span.traceID }

// SpanID returns the request span's id.
func (r *Request) SpanID() SpanID { return r.span.spanID }

// Traceparent is the W3C traceparent header naming the request's span, for calls the request makes.
func (r *Request) Traceparent() string {
	return "00-" + hex.EncodeToString(r.span.traceID[:]) + "-" + hex.EncodeToString(r.span.spanID[:]) + "-01"
}

// End reads the "after" figures, ends the span and queues it for export; it never blocks (a full queue drops
// the span and counts it). Calling End again does nothing.
func (r *Request) End() {
	if !r.ended.CompareAndSwap(false, true) {
		return
	}
	m, s := r.m, &r.span
	now := time.Now()
	mono := int64(now.Sub(m.anchor))
	if allocEnd := m.allocs.allocated(mono); r.allocStart >= 0 && allocEnd >= r.allocStart {
		s.setInt(maRequestAllocated, allocEnd-r.allocStart)
	}
	if m.rss != nil {
		if rss := m.rss.rss(mono); rss >= 0 {
			s.setInt(maRSSEnd, rss)
		}
	}
	h := m.heap.read(mono)
	s.setIfKnown(maHeapAllocated, h.allocated)
	s.setIfKnown(maHeapResident, h.resident)
	s.setIfKnown(maHeapRetained, h.retained)
	if limit := m.cgroupLimit.Load(); limit >= 0 {
		s.setInt(maLimit, limit)
	}
	s.endNano = uint64(now.UnixNano())
	m.spans.enqueue(s)
}
