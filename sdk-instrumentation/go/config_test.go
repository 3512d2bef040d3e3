package memspan

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := ConfigFromEnv(envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Traces.URL != "http://localhost:4318/v1/traces" || cfg.Metrics.URL != "http://localhost:4318/v1/metrics" {
		t.Errorf("urls %q %q", cfg.Traces.URL, cfg.Metrics.URL)
	}
	if cfg.Traces.Protocol != ProtocolProtobuf || cfg.Traces.Timeout != 10*time.Second || cfg.Traces.Gzip {
		t.Errorf("traces %+v", cfg.Traces)
	}
	if cfg.MetricInterval != time.Minute || cfg.BatchDelay != 5*time.Second || cfg.MaxQueueSize != 2048 ||
		cfg.MaxBatchSize != 512 || cfg.Disabled {
		t.Errorf("config %+v", cfg)
	}
}

func TestConfigFromTheStandardVariables(t *testing.T) {
	cfg, err := ConfigFromEnv(envMap(map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":         "http://collector:4318/",
		"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://metrics.example:9000/custom/path",
		"OTEL_EXPORTER_OTLP_PROTOCOL":         "http/json",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL":  "http/protobuf",
		"OTEL_EXPORTER_OTLP_HEADERS":          "api-key=abc%3D%3D , x-tenant=team%20a",
		"OTEL_EXPORTER_OTLP_TIMEOUT":          "2500",
		"OTEL_EXPORTER_OTLP_COMPRESSION":      "gzip",
		"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT":  "700",
		"OTEL_SERVICE_NAME":                   "infer",
		"OTEL_RESOURCE_ATTRIBUTES":            "service.version=1.5.0,deployment.environment.name=prod%2Feu",
		"OTEL_METRIC_EXPORT_INTERVAL":         "15000",
		"OTEL_BSP_SCHEDULE_DELAY":             "200",
		"OTEL_BSP_MAX_QUEUE_SIZE":             "100",
		"OTEL_BSP_MAX_EXPORT_BATCH_SIZE":      "1000",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Traces.URL != "http://collector:4318/v1/traces" {
		t.Errorf("traces url %q: the general endpoint gets /v1/traces appended", cfg.Traces.URL)
	}
	if cfg.Metrics.URL != "https://metrics.example:9000/custom/path" {
		t.Errorf("metrics url %q: a signal endpoint is used as given", cfg.Metrics.URL)
	}
	if cfg.Traces.Protocol != ProtocolProtobuf || cfg.Metrics.Protocol != ProtocolJSON {
		t.Errorf("protocols %q %q", cfg.Traces.Protocol, cfg.Metrics.Protocol)
	}
	wantHeaders := map[string]string{"api-key": "abc==", "x-tenant": "team a"}
	if !reflect.DeepEqual(cfg.Traces.Headers, wantHeaders) {
		t.Errorf("headers %v", cfg.Traces.Headers)
	}
	if cfg.Traces.Timeout != 2500*time.Millisecond || cfg.Metrics.Timeout != 700*time.Millisecond {
		t.Errorf("timeouts %v %v", cfg.Traces.Timeout, cfg.Metrics.Timeout)
	}
	if !cfg.Traces.Gzip || !cfg.Metrics.Gzip {
		t.Error("gzip not set")
	}
	wantRes := []KeyValue{String("service.version", "1.5.0"), String("deployment.environment.name", "prod/eu")}
	if cfg.ServiceName != "infer" || !reflect.DeepEqual(cfg.ResourceAttributes, wantRes) {
		t.Errorf("service %q resource %v", cfg.ServiceName, cfg.ResourceAttributes)
	}
	if cfg.MetricInterval != 15*time.Second || cfg.BatchDelay != 200*time.Millisecond || cfg.MaxQueueSize != 100 ||
		cfg.MaxBatchSize != 100 {
		t.Errorf("intervals and sizes %+v", cfg)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	cases := []struct{ name, value, want string }{
		{"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "want an http:// or https:// URL"},
		{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://x/v1/traces", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{"OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "milliseconds"},
		{"OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "want gzip or none"},
		{"OTEL_EXPORTER_OTLP_HEADERS", "novalue", `"novalue" is not key=value`},
		{"OTEL_RESOURCE_ATTRIBUTES", "a=%zz", "percent-encoding"},
		{"OTEL_METRIC_EXPORT_INTERVAL", "-5", "OTEL_METRIC_EXPORT_INTERVAL"},
		{"OTEL_BSP_MAX_QUEUE_SIZE", "0", "positive integer"},
		{"OTEL_SDK_DISABLED", "maybe", "OTEL_SDK_DISABLED"},
	}
	for _, c := range cases {
		_, err := ConfigFromEnv(envMap(map[string]string{c.name: c.value}))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s=%q: error %v, want one containing %q", c.name, c.value, err, c.want)
		}
	}
}

func TestResourceAttributesPrecedence(t *testing.T) {
	cfg, err := ConfigFromEnv(envMap(map[string]string{
		"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,service.instance.id=pod-7,team=ml",
		"OTEL_SERVICE_NAME":        "from-service-name",
	}))
	if err != nil {
		t.Fatal(err)
	}
	res := buildResource(cfg, Options{ServiceName: "default", ServiceVersion: "2.0.0",
		ResourceAttributes: []KeyValue{String("team", "infra")}}, "canary")
	got := map[string]string{}
	for _, kv := range res {
		got[kv.Key], _ = kv.Value.AsString()
	}
	want := map[string]string{"service.name": "from-service-name", "service.instance.id": "pod-7",
		"team": "ml", "service.version": "2.0.0", AttrCohort: "canary", "telemetry.sdk.language": "go"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if got["host.name"] == "" {
		t.Error("host.name missing")
	}

	res = buildResource(Config{}, Options{}, "")
	for _, kv := range res {
		if s, _ := kv.Value.AsString(); kv.Key == "service.name" && !strings.HasPrefix(s, "unknown_service:") {
			t.Errorf("default service.name %q", s)
		}
		if kv.Key == "service.instance.id" {
			if s, _ := kv.Value.AsString(); !strings.Contains(s, "-") {
				t.Errorf("service.instance.id %q: want host-pid", s)
			}
		}
	}
}

func TestDisabledRecordsNothing(t *testing.T) {
	m, err := New(Options{Getenv: envMap(map[string]string{"OTEL_SDK_DISABLED": "true"})})
	if err != nil {
		t.Fatal(err)
	}
	runRequests(m, 3)
	if err := m.Shutdown(t.Context()); err != nil || m.Stats() != (Stats{}) {
		t.Errorf("disabled: %v %+v", err, m.Stats())
	}
}
