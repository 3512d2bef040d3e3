// Command example is a small inference service instrumented with memspan, for trying memdrift with Go. It
// serves a tiny in-code language model over HTTP (POST /v1/completions), records each request's memory on a
// span ("text_completion tiny-go-lm") and exports spans and Go runtime metrics over OTLP/HTTP, configured by
// the standard OTEL_* variables. Switches reproduce the classic Go memory failures, so a baseline and a canary
// can run side by side and memdrift can tell them apart:
//
//	-pool-no-reset     sync.Pool buffers put back without Reset: backing arrays of megabytes, regrown and copied
//	                   on some requests (per-request allocation spread widens, RSS swings)
//	-cgo-weights       C.malloc'd weights held by a global, finalizers never run (RSS grows, Go heap flat)
//	-goroutine-leak    a goroutine per request that never exits (go.goroutine.count climbs)
//	-cache-grow        a response cache that is never evicted (heap leak)
//	-gogc N            debug.SetGCPercent(N)
//	-gomemlimit BYTES  debug.SetMemoryLimit (e.g. 512MiB)
//	-warmup-burst      a burst of concurrent requests at start: a one-time step, not a leak
//	-draft-scratch     speculative-decoding drafts of random length: per-request allocation spread widens
//
// -rate R sends R requests a second to the service itself; -selftest-requests N sends N, flushes the telemetry
// and exits (non-zero if any request failed).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"memspan"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command line.
type options struct {
	listen           string
	cohort           string
	poolNoReset      bool
	cgoWeights       bool
	cgoWeightBytes   int
	goroutineLeak    bool
	cacheGrow        bool
	gogc             string
	gomemlimit       string
	warmupBurst      bool
	draftScratch     bool
	rate             float64
	selftestRequests int
	maxTokens        int
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on; port 0 picks a free one "+
		"(printed as `listening on ADDR`)")
	fs.StringVar(&o.cohort, "cohort", os.Getenv("MEMSPAN_COHORT"), "A/B cohort on every span and the resource "+
		"(memspan.cohort); default $MEMSPAN_COHORT")
	fs.BoolVar(&o.poolNoReset, "pool-no-reset", false, "put sync.Pool buffers back without Reset "+
		"(pooled arrays grow to megabytes: per-request allocation spread widens)")
	fs.BoolVar(&o.cgoWeights, "cgo-weights", false, "load per-request adapter weights with C.malloc, held by "+
		"a global so their finalizers never run (RSS grows, Go heap flat)")
	fs.IntVar(&o.cgoWeightBytes, "cgo-weight-bytes", 1<<20, "bytes of C memory per request with -cgo-weights")
	fs.BoolVar(&o.goroutineLeak, "goroutine-leak", false, "start a goroutine per request that never exits")
	fs.BoolVar(&o.cacheGrow, "cache-grow", false, "cache responses by prompt without eviction (heap leak)")
	fs.StringVar(&o.gogc, "gogc", "", "GC target percentage (debug.SetGCPercent); \"off\" disables the GC")
	fs.StringVar(&o.gomemlimit, "gomemlimit", "", "soft memory limit (debug.SetMemoryLimit): bytes, or with "+
		"a KiB, MiB or GiB suffix")
	fs.BoolVar(&o.warmupBurst, "warmup-burst", false, "send a burst of 32 concurrent long requests at start "+
		"(a one-time step in memory)")
	fs.BoolVar(&o.draftScratch, "draft-scratch", false, "allocate a draft buffer of random size (0 to 256 KiB) "+
		"per request: the per-request allocation's spread widens, as a canary's may")
	fs.Float64Var(&o.rate, "rate", 0, "requests per second the service sends to itself (0: none)")
	fs.IntVar(&o.selftestRequests, "selftest-requests", 0, "send N requests to itself, flush the telemetry "+
		"and exit")
	fs.IntVar(&o.maxTokens, "max-tokens", 16, "max_tokens of the requests the service sends itself")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.cgoWeights && !cgoAvailable {
		return o, errors.New("-cgo-weights needs a build with cgo (CGO_ENABLED=1 and a C compiler)")
	}
	if o.rate < 0 || o.selftestRequests < 0 || o.cgoWeightBytes <= 0 || o.maxTokens < 1 || o.maxTokens > 128 {
		return o, errors.New("-rate and -selftest-requests must be >= 0, -cgo-weight-bytes > 0, " +
			"-max-tokens within 1..128")
	}
	return o, nil
}

// parseBytes reads a byte count: a plain integer or one with a KiB, MiB or GiB suffix (also KB, MB, GB as
// powers of 1000).
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<63-1)/mult {
		return 0, fmt.Errorf("%q is not a byte count (e.g. 536870912 or 512MiB)", s)
	}
	return n * mult, nil
}

// applyGCSettings applies -gogc and -gomemlimit.
func applyGCSettings(o options) error {
	if o.gogc != "" {
		pct := -1
		if o.gogc != "off" {
			n, err := strconv.Atoi(o.gogc)
			if err != nil || n < 0 {
				return fmt.Errorf("-gogc %q: want a non-negative percentage or off", o.gogc)
			}
			pct = n
		}
		debug.SetGCPercent(pct)
	}
	if o.gomemlimit != "" {
		n, err := parseBytes(o.gomemlimit)
		if err != nil {
			return fmt.Errorf("-gomemlimit: %w", err)
		}
		debug.SetMemoryLimit(n)
	}
	return nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "example:", err)
		return 2
	}
	if err := applyGCSettings(o); err != nil {
		fmt.Fprintln(stderr, "example:", err)
		return 2
	}
	ms, err := memspan.New(memspan.Options{ServiceName: "memspan-go-example", ServiceVersion: "0.1.0",
		Cohort: o.cohort})
	if err != nil {
		fmt.Fprintln(stderr, "example:", err)
		return 2
	}
	app := newApp(ms, o)
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		fmt.Fprintln(stderr, "example:", err)
		return 1
	}
	addr := ln.Addr().String()
	fmt.Fprintf(stdout, "listening on %s\n", addr)
	srv := &http.Server{Handler: app.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	client := &client{url: "http://" + addr + "/v1/completions", maxTokens: o.maxTokens, cohort: o.cohort}
	if o.warmupBurst {
		go client.burst(ctx, 32, 128)
	}
	code := 0
	switch {
	case o.selftestRequests > 0:
		ok := client.send(ctx, o.selftestRequests, o.rate)
		fmt.Fprintf(stdout, "selftest: %d of %d requests ok, %d goroutines, %d MiB of C memory held, "+
			"%d cache entries\n", ok, o.selftestRequests, runtime.NumGoroutine(), nativeBytes()>>20,
			app.cache.len())
		if ok != o.selftestRequests {
			code = 1
		}
	case o.rate > 0:
		client.send(ctx, -1, o.rate)
	default:
		<-ctx.Done()
	}
	// The HTTP server and the telemetry each get their own deadline: a slow server shutdown must not leave the
	// last batches no time, and a loaded machine can take seconds to take them.
	srvCtx, cancelSrv := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelSrv()
	_ = srv.Shutdown(srvCtx)
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelFlush()
	if err := ms.Shutdown(flushCtx); err != nil {
		fmt.Fprintln(stderr, "example: telemetry not fully flushed:", err)
	}
	if s := ms.Stats(); s.SpansDropped > 0 || s.SpansFailed > 0 {
		fmt.Fprintf(stderr, "example: %d spans dropped, %d failed to export\n", s.SpansDropped, s.SpansFailed)
	}
	return code
}

// app is the HTTP service.
type app struct {
	ms    *memspan.Memspan
	model *tinyLM
	opts  options
	pool  *bufferPool
	cache *responseCache
}

func newApp(ms *memspan.Memspan, o options) *app {
	return &app{ms: ms, model: newTinyLM(), opts: o, pool: newBufferPool(!o.poolNoReset),
		cache: newResponseCache(!o.cacheGrow)}
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", a.completions)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "cohort": a.opts.cohort,
			"goroutines": runtime.NumGoroutine(), "leaked_goroutines": goroutineLeaks.Load(),
			"native_bytes": nativeBytes(), "cache_entries": a.cache.len()})
	})
	return mux
}

type completionRequest struct {
	Prompt    string `json:"prompt"`
	MaxTokens int    `json:"max_tokens"`
}

type completionResponse struct {
	Model string `json:"model"`
	Text  string `json:"text"`
	Usage struct {
		InputTokens  int `json:"input_tokens"`
		OutputTokens int `json:"output_tokens"`
	} `json:"usage"`
	Cached bool `json:"cached"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (a *app) completions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: " + err.Error()})
		return
	}
	if req.MaxTokens == 0 {
		req.MaxTokens = 16
	}
	if req.MaxTokens < 1 || req.MaxTokens > 128 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "max_tokens must be within 1..128"})
		return
	}
	ctx := r.Context()
	if tid, sid, ok := memspan.ParseTraceparent(r.Header.Get("traceparent")); ok {
		ctx = memspan.ContextWithParent(ctx, tid, sid)
	}
	_, span := a.ms.Start(ctx, "text_completion", modelName)
	resp := a.complete(req)
	span.SetTokens(int64(resp.Usage.InputTokens), int64(resp.Usage.OutputTokens))
	span.End()
	writeJSON(w, http.StatusOK, resp)
}

// tokenLogits stands for one decoding step's logits as the request keeps them (vocab float32s).
var tokenLogits [vocab * 4]byte

// complete runs one request through the model and the switched-on failure patterns.
func (a *app) complete(req completionRequest) completionResponse {
	prompt := []byte(req.Prompt)
	if limit := 256 - req.MaxTokens; len(prompt) > limit {
		prompt = prompt[len(prompt)-limit:]
	}
	var resp completionResponse
	resp.Model = modelName
	resp.Usage.InputTokens = len(prompt)
	key := string(prompt) + "\x00" + strconv.Itoa(req.MaxTokens)
	if text, ok := a.cache.get(key); ok {
		resp.Text, resp.Cached = string(text), true
		return resp
	}

	// The token buffer comes from the pool; the code assumes it is empty.
	buf := a.pool.get()
	for range req.MaxTokens {
		buf.Write(tokenLogits[:]) // each token's logits (vocab float32s) kept in the pooled buffer
	}
	text := a.model.generate(prompt, req.MaxTokens)
	buf.Write(text)
	a.pool.put(buf)

	if a.opts.draftScratch {
		draft(text)
	}
	if a.opts.goroutineLeak {
		leakGoroutine(prompt)
	}
	if a.opts.cgoWeights {
		loadAdapter(a.opts.cgoWeightBytes, byte(len(prompt)))
	}
	a.cache.put(key, text)
	resp.Text = string(text)
	resp.Usage.OutputTokens = len(text)
	return resp
}

// client sends requests to the service itself.
type client struct {
	url       string
	maxTokens int
	cohort    string
	mu        sync.Mutex
	seq       int
}

// prompt makes a varied, unique prompt.
func (c *client) prompt() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	topics := []string{"memory", "the canary", "garbage collection", "a goroutine", "the heap", "RSS"}
	return fmt.Sprintf("Request %d from %s: tell me about %s because", c.seq, c.cohort, topics[c.seq%len(topics)])
}

func (c *client) one(ctx context.Context, maxTokens int) error {
	body, _ := json.Marshal(completionRequest{Prompt: c.prompt(), MaxTokens: maxTokens})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// send sends n requests (n < 0: until ctx ends), rate a second (0: back to back), and returns how many
// succeeded.
func (c *client) send(ctx context.Context, n int, rate float64) int {
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer t.Stop()
		tick = t.C
	}
	ok := 0
	for i := 0; n < 0 || i < n; i++ {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				return ok
			}
		}
		if ctx.Err() != nil {
			return ok
		}
		if err := c.one(ctx, c.maxTokens); err == nil {
			ok++
		} else if ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "example: request failed:", err)
		}
	}
	return ok
}

// burst sends n long requests at once: the warm-up traffic a service sees when it joins a load balancer.
func (c *client) burst(ctx context.Context, n, maxTokens int) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.one(ctx, maxTokens)
		}()
	}
	wg.Wait()
}
