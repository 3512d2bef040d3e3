// Package memspan records the memory of each inference request on an OpenTelemetry span and exports it, with
// the Go runtime's memory metrics, over OTLP/HTTP. It is the Go twin of the Rust crate memspan: the span and
// metric names are the MemorySpan convention that the memdrift processor reads.
//
// A service creates one Memspan at start (configured by the standard OTEL_* variables), wraps each request,
// and shuts it down at exit:
//
//	ms, err := memspan.New(memspan.Options{})
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer ms.Shutdown(context.Background())
//
//	ctx, req := ms.Start(ctx, "text_completion", "tiny-go-lm")
//	answer := generate(ctx, prompt)
//	req.SetTokens(int64(len(prompt)), int64(len(answer)))
//	req.End()
//
// Each request becomes a span named "{operation} {model}" with gen_ai.operation.name, gen_ai.request.model,
// memspan.cohort and the memspan.* byte counts (see the attribute constants). The runtime metrics
// (go.memory.used, go.memory.gc.goal, go.goroutine.count, ...) follow the OpenTelemetry semantic conventions
// for Go, the same names, units and instrument kinds as the OpenTelemetry Go runtime instrumentation.
//
// Only the standard library is used: the OTLP protobuf and JSON encodings are written by hand, and exports go
// over HTTP (OTLP/gRPC is not supported). The request path never blocks on export: spans go into a bounded
// queue, and when it is full they are dropped and counted (Stats).
package memspan
