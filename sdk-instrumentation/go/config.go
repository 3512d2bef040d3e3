package memspan

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Protocol is the OTLP encoding over HTTP.
type Protocol string

const (
	// ProtocolProtobuf is OTLP/HTTP with binary protobuf bodies (application/x-protobuf), the default.
	ProtocolProtobuf Protocol = "http/protobuf"
	// ProtocolJSON is OTLP/HTTP with OTLP/JSON bodies (application/json).
	ProtocolJSON Protocol = "http/json"
)

// SignalConfig is where and how one signal (traces or metrics) is exported.
type SignalConfig struct {
	// URL is the full URL posted to, e.g. http://localhost:4318/v1/traces.
	URL      string
	Protocol Protocol
	// Headers are added to every export request (OTEL_EXPORTER_OTLP_HEADERS).
	Headers map[string]string
	// Timeout bounds one HTTP attempt.
	Timeout time.Duration
	// Gzip compresses request bodies (OTEL_EXPORTER_OTLP_COMPRESSION=gzip).
	Gzip bool
}

// RetryConfig is the backoff for retryable failures (429, 502, 503, 504 and network errors). A Retry-After
// header takes the place of the computed backoff.
type RetryConfig struct {
	// Initial is the first backoff; each next one doubles, up to Max, with up to 20% jitter.
	Initial time.Duration
	Max     time.Duration
	// MaxElapsed bounds the time spent on one batch, retries included; the batch is dropped after it.
	MaxElapsed time.Duration
}

// Config is the export configuration, normally read from the OTEL_* variables by ConfigFromEnv.
type Config struct {
	// Disabled (OTEL_SDK_DISABLED=true) records nothing and exports nothing.
	Disabled bool
	Traces   SignalConfig
	Metrics  SignalConfig
	// ServiceName is OTEL_SERVICE_NAME; empty when unset.
	ServiceName string
	// ResourceAttributes are from OTEL_RESOURCE_ATTRIBUTES, in order.
	ResourceAttributes []KeyValue
	// MetricInterval is how often runtime metrics are collected and exported (OTEL_METRIC_EXPORT_INTERVAL).
	MetricInterval time.Duration
	// BatchDelay is the longest a finished span waits before export (OTEL_BSP_SCHEDULE_DELAY).
	BatchDelay time.Duration
	// MaxQueueSize bounds the spans waiting for export; more are dropped and counted (OTEL_BSP_MAX_QUEUE_SIZE).
	MaxQueueSize int
	// MaxBatchSize is the most spans in one export (OTEL_BSP_MAX_EXPORT_BATCH_SIZE).
	MaxBatchSize int
	Retry        RetryConfig
}

// Defaults of the OpenTelemetry SDK environment specification, where it gives one.
const (
	defaultEndpoint       = "http://localhost:4318"
	defaultTimeout        = 10 * time.Second
	defaultMetricInterval = 60 * time.Second
	defaultBatchDelay     = 5 * time.Second
	defaultMaxQueueSize   = 2048
	defaultMaxBatchSize   = 512
)

// DefaultRetry is the backoff used unless Config.Retry says otherwise.
var DefaultRetry = RetryConfig{Initial: time.Second, Max: 10 * time.Second, MaxElapsed: 30 * time.Second}

// ConfigFromEnv reads the standard OTEL_* variables through lookup (os.LookupEnv when nil). An invalid value
// is an error that names the variable.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	get := func(name string) string {
		v, _ := lookup(name)
		return strings.TrimSpace(v)
	}
	cfg := Config{ServiceName: get("OTEL_SERVICE_NAME"), Retry: DefaultRetry}
	var err error
	if v := get("OTEL_SDK_DISABLED"); v != "" {
		if cfg.Disabled, err = strconv.ParseBool(v); err != nil {
			return Config{}, fmt.Errorf("memspan: OTEL_SDK_DISABLED=%q: want true or false", v)
		}
	}
	if cfg.Traces, err = signalFromEnv(get, "TRACES", "/v1/traces"); err != nil {
		return Config{}, err
	}
	if cfg.Metrics, err = signalFromEnv(get, "METRICS", "/v1/metrics"); err != nil {
		return Config{}, err
	}
	if cfg.ResourceAttributes, err = parseResourceAttributes(get("OTEL_RESOURCE_ATTRIBUTES")); err != nil {
		return Config{}, err
	}
	durations := []struct {
		name string
		dst  *time.Duration
		def  time.Duration
	}{
		{"OTEL_METRIC_EXPORT_INTERVAL", &cfg.MetricInterval, defaultMetricInterval},
		{"OTEL_BSP_SCHEDULE_DELAY", &cfg.BatchDelay, defaultBatchDelay},
	}
	for _, d := range durations {
		if *d.dst, err = millisFromEnv(get, d.name, d.def); err != nil {
			return Config{}, err
		}
	}
	sizes := []struct {
		name string
		dst  *int
		def  int
	}{
		{"OTEL_BSP_MAX_QUEUE_SIZE", &cfg.MaxQueueSize, defaultMaxQueueSize},
		{"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &cfg.MaxBatchSize, defaultMaxBatchSize},
	}
	for _, s := range sizes {
		*s.dst = s.def
		if v := get(s.name); v != "" {
			n, perr := strconv.Atoi(v)
			if perr != nil || n <= 0 {
				return Config{}, fmt.Errorf("memspan: %s=%q: want a positive integer", s.name, v)
			}
			*s.dst = n
		}
	}
	if cfg.MaxBatchSize > cfg.MaxQueueSize {
		cfg.MaxBatchSize = cfg.MaxQueueSize
	}
	return cfg, nil
}

// signalFromEnv reads one signal's settings: OTEL_EXPORTER_OTLP_<SIGNAL>_X first, then OTEL_EXPORTER_OTLP_X.
func signalFromEnv(get func(string) string, signal, path string) (SignalConfig, error) {
	pick := func(suffix string) (string, string) {
		specific := "OTEL_EXPORTER_OTLP_" + signal + "_" + suffix
		if v := get(specific); v != "" {
			return specific, v
		}
		general := "OTEL_EXPORTER_OTLP_" + suffix
		return general, get(general)
	}
	var sc SignalConfig
	// The signal-specific endpoint is used as given; the general one is a base the signal's path is added to.
	if name, v := pick("ENDPOINT"); v != "" {
		if name == "OTEL_EXPORTER_OTLP_ENDPOINT" {
			v = strings.TrimRight(v, "/") + path
		}
		if err := checkURL(name, v); err != nil {
			return SignalConfig{}, err
		}
		sc.URL = v
	} else {
		sc.URL = defaultEndpoint + path
	}
	switch name, v := pick("PROTOCOL"); v {
	case "", string(ProtocolProtobuf):
		sc.Protocol = ProtocolProtobuf
	case string(ProtocolJSON):
		sc.Protocol = ProtocolJSON
	case "grpc":
		return SignalConfig{}, fmt.Errorf("memspan: %s=grpc is not supported (OTLP over HTTP only): "+
			"use http/protobuf or http/json and the collector's HTTP port (4318)", name)
	default:
		return SignalConfig{}, fmt.Errorf("memspan: %s=%q: want http/protobuf or http/json", name, v)
	}
	name, v := pick("HEADERS")
	headers, err := parseHeaders(name, v)
	if err != nil {
		return SignalConfig{}, err
	}
	sc.Headers = headers
	if sc.Timeout, err = millisFromEnv(func(string) string { _, t := pick("TIMEOUT"); return t },
		"OTEL_EXPORTER_OTLP_"+signal+"_TIMEOUT or OTEL_EXPORTER_OTLP_TIMEOUT", defaultTimeout); err != nil {
		return SignalConfig{}, err
	}
	switch name, v := pick("COMPRESSION"); v {
	case "", "none":
	case "gzip":
		sc.Gzip = true
	default:
		return SignalConfig{}, fmt.Errorf("memspan: %s=%q: want gzip or none", name, v)
	}
	return sc, nil
}

func checkURL(name, v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("memspan: %s=%q is not a URL: %v", name, v, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("memspan: %s=%q: want an http:// or https:// URL with a host, e.g. "+
			"http://localhost:4318", name, v)
	}
	return nil
}

// millisFromEnv reads a duration given in integer milliseconds, as the OTEL_* variables give them.
func millisFromEnv(get func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := get(name)
	if v == "" {
		return def, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 {
		return 0, fmt.Errorf("memspan: %s=%q: want a positive number of milliseconds", name, v)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// parseHeaders reads "key1=value1,key2=value2" with percent-encoded values (W3C baggage style).
func parseHeaders(name, v string) (map[string]string, error) {
	pairs, err := parsePairs(name, v)
	if err != nil || len(pairs) == 0 {
		return nil, err
	}
	out := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		out[kv[0]] = kv[1]
	}
	return out, nil
}

// parseResourceAttributes reads OTEL_RESOURCE_ATTRIBUTES: "key=value,..." with percent-encoded values; all
// values are strings.
func parseResourceAttributes(v string) ([]KeyValue, error) {
	pairs, err := parsePairs("OTEL_RESOURCE_ATTRIBUTES", v)
	if err != nil {
		return nil, err
	}
	out := make([]KeyValue, 0, len(pairs))
	for _, kv := range pairs {
		out = append(out, String(kv[0], kv[1]))
	}
	return out, nil
}

func parsePairs(name, v string) ([][2]string, error) {
	var out [][2]string
	for item := range strings.SplitSeq(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		key, value, ok := strings.Cut(item, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			return nil, fmt.Errorf("memspan: %s: %q is not key=value", name, item)
		}
		decoded, err := url.PathUnescape(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("memspan: %s: the value of %q is not valid percent-encoding: %v", name, key,
				err)
		}
		out = append(out, [2]string{key, decoded})
	}
	return out, nil
}
