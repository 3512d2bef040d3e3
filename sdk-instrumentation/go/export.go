package memspan

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// httpExporter posts OTLP request bodies for one signal, retrying what the OTLP/HTTP specification says may
// be retried: 429, 502, 503 and 504 (honouring Retry-After), and network errors.
type httpExporter struct {
	cfg    SignalConfig
	retry  RetryConfig
	client *http.Client
	// sleep waits for d or until ctx ends; replaced in tests.
	sleep func(ctx context.Context, d time.Duration) error
}

func newHTTPExporter(cfg SignalConfig, retry RetryConfig) *httpExporter {
	return &httpExporter{cfg: cfg, retry: retry, client: &http.Client{}, sleep: sleepContext}
}

func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (x *httpExporter) contentType() string {
	if x.cfg.Protocol == ProtocolJSON {
		return "application/json"
	}
	return "application/x-protobuf"
}

// exportResult is what the receiver answered to an accepted export: the partial success, if any.
type exportResult struct {
	rejected int64
	message  string
}

// retryableError is a failed attempt that may be retried, after `after` when the server said so.
type retryableError struct {
	err   error
	after time.Duration
}

func (e *retryableError) Error() string { return e.err.Error() }

// send posts body, retrying with backoff until it is accepted, a permanent error comes back, the retry budget
// (RetryConfig.MaxElapsed) is spent or ctx ends.
func (x *httpExporter) send(ctx context.Context, body []byte) (exportResult, error) {
	if x.cfg.Gzip {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		if _, err := zw.Write(body); err != nil {
			return exportResult{}, fmt.Errorf("memspan: gzip: %w", err)
		}
		if err := zw.Close(); err != nil {
			return exportResult{}, fmt.Errorf("memspan: gzip: %w", err)
		}
		body = buf.Bytes()
	}
	if x.retry.MaxElapsed > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.retry.MaxElapsed)
		defer cancel()
	}
	backoff := x.retry.Initial
	for attempt := 1; ; attempt++ {
		res, err := x.attempt(ctx, body)
		var retry *retryableError
		if err == nil || !errors.As(err, &retry) {
			return res, err
		}
		wait := retry.after
		if wait <= 0 {
			// Up to 20% jitter, so clients that failed together do not retry together.
			wait = backoff + time.Duration(rand.Int64N(int64(backoff)/5+1))
			backoff = min(2*backoff, x.retry.Max)
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return exportResult{}, fmt.Errorf("%w (gave up after %d attempts: the next would be after the "+
				"retry deadline)", retry.err, attempt)
		}
		if err := x.sleep(ctx, wait); err != nil {
			return exportResult{}, fmt.Errorf("%w (gave up after %d attempts: %v)", retry.err, attempt, err)
		}
	}
}

// attempt posts once. A retryable failure comes back as *retryableError.
func (x *httpExporter) attempt(ctx context.Context, body []byte) (exportResult, error) {
	if x.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.cfg.Timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, x.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return exportResult{}, fmt.Errorf("memspan: export to %s: %w", x.cfg.URL, err)
	}
	req.Header.Set("Content-Type", x.contentType())
	req.Header.Set("User-Agent", "memspan-go/"+Version)
	if x.cfg.Gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	for k, v := range x.cfg.Headers {
		req.Header.Set(k, v)
	}
	resp, err := x.client.Do(req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return exportResult{}, fmt.Errorf("memspan: export to %s: %w", x.cfg.URL, err)
		}
		return exportResult{}, &retryableError{err: fmt.Errorf("memspan: export to %s: %w", x.cfg.URL, err)}
	}
	defer resp.Body.Close()
	respBody, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return parsePartialSuccess(respBody, resp.Header.Get("Content-Type")), nil
	case code == http.StatusTooManyRequests || code == http.StatusBadGateway ||
		code == http.StatusServiceUnavailable || code == http.StatusGatewayTimeout:
		return exportResult{}, &retryableError{
			err:   fmt.Errorf("memspan: export to %s: %s%s", x.cfg.URL, resp.Status, excerpt(respBody)),
			after: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		}
	default:
		return exportResult{}, fmt.Errorf("memspan: export to %s refused: %s%s", x.cfg.URL, resp.Status,
			excerpt(respBody))
	}
}

// excerpt is the start of a response body for an error message; binary (protobuf Status) bodies are left out.
func excerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\t' }) {
		return ""
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return ": " + s
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date; zero when absent or invalid.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// parsePartialSuccess reads the partial_success of an Export*ServiceResponse (field 1, whose field 1 is the
// rejected count and field 2 the message; the same numbers for traces and metrics). An empty or unreadable
// body is full success.
func parsePartialSuccess(body []byte, contentType string) exportResult {
	if len(body) == 0 {
		return exportResult{}
	}
	if strings.HasPrefix(contentType, "application/json") {
		var r struct {
			PartialSuccess struct {
				RejectedSpans      json.Number `json:"rejectedSpans"`
				RejectedDataPoints json.Number `json:"rejectedDataPoints"`
				ErrorMessage       string      `json:"errorMessage"`
			} `json:"partialSuccess"`
		}
		if json.Unmarshal(body, &r) != nil {
			return exportResult{}
		}
		n, _ := r.PartialSuccess.RejectedSpans.Int64()
		if n == 0 {
			n, _ = r.PartialSuccess.RejectedDataPoints.Int64()
		}
		return exportResult{rejected: n, message: r.PartialSuccess.ErrorMessage}
	}
	var out exportResult
	ps, ok := protoField(body, 1)
	if !ok {
		return out
	}
	if v, ok := protoVarint(ps, 1); ok {
		out.rejected = int64(v)
	}
	if msg, ok := protoField(ps, 2); ok {
		out.message = string(msg)
	}
	return out
}

// protoField returns the last length-delimited field `field` of a message; ok is false when absent or when the
// message is malformed.
func protoField(b []byte, field uint64) (val []byte, ok bool) {
	walkProto(b, func(f uint64, wire int, v uint64, data []byte) {
		if f == field && wire == wireBytes {
			val, ok = data, true
		}
	})
	return val, ok
}

// protoVarint returns the last varint field `field` of a message.
func protoVarint(b []byte, field uint64) (val uint64, ok bool) {
	walkProto(b, func(f uint64, wire int, v uint64, _ []byte) {
		if f == field && wire == wireVarint {
			val, ok = v, true
		}
	})
	return val, ok
}

// walkProto calls fn for each field of a protobuf message, stopping at the first malformed byte.
func walkProto(b []byte, fn func(field uint64, wire int, v uint64, data []byte)) {
	for len(b) > 0 {
		key, n := readVarint(b)
		if n == 0 {
			return
		}
		b = b[n:]
		field, wire := key>>3, int(key&7)
		switch wire {
		case wireVarint:
			v, n := readVarint(b)
			if n == 0 {
				return
			}
			fn(field, wire, v, nil)
			b = b[n:]
		case wireFixed64, wireFixed32:
			size := 8
			if wire == wireFixed32 {
				size = 4
			}
			if len(b) < size {
				return
			}
			var v uint64
			for i := size - 1; i >= 0; i-- {
				v = v<<8 | uint64(b[i])
			}
			fn(field, wire, v, nil)
			b = b[size:]
		case wireBytes:
			l, n := readVarint(b)
			if n == 0 || uint64(len(b)-n) < l {
				return
			}
			fn(field, wire, l, b[n:n+int(l)])
			b = b[n+int(l):]
		default:
			return
		}
	}
}

// readVarint decodes a varint; n is 0 when b does not start with a complete one.
func readVarint(b []byte) (v uint64, n int) {
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}
