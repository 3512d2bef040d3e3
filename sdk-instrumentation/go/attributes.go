package memspan

// MemorySpan span attribute names. The byte counts are integers; each is optional, and a probe that cannot
// measure leaves its attribute out rather than writing zero.
const (
	// AttrRSSStart is the process resident set size at request start.
	AttrRSSStart = "memspan.rss.start"
	// AttrRSSEnd is the process resident set size at request end.
	AttrRSSEnd = "memspan.rss.end"
	// AttrHeapAllocated is the Go heap's live bytes at request end: /memory/classes/heap/objects:bytes
	// (live objects, and dead ones the collector has not swept yet).
	AttrHeapAllocated = "memspan.heap.allocated"
	// AttrHeapResident is the Go heap's memory backed by physical memory at request end: objects, plus free
	// and unused space in heap spans that has not been returned to the operating system.
	AttrHeapResident = "memspan.heap.resident"
	// AttrHeapRetained is heap memory mapped but returned to the operating system at request end:
	// /memory/classes/heap/released:bytes.
	AttrHeapRetained = "memspan.heap.retained"
	// AttrRequestAllocated is the bytes allocated on the Go heap while the request ran. Go cannot attribute
	// allocations to a goroutine, so this is the process-wide /gc/heap/allocs:bytes delta: exact for a request
	// that runs alone, an upper bound when requests overlap (it includes their allocations too).
	AttrRequestAllocated = "memspan.request.allocated"
	// AttrRequestFreed is the bytes freed by the request. The Go runtime frees in the collector, not in the
	// request, so memspan never sets it; it is listed for completeness of the convention.
	AttrRequestFreed = "memspan.request.freed"
	// AttrLimit is the container (cgroup) memory limit; absent when unlimited.
	AttrLimit = "memspan.limit"
	// AttrGPUUsed is device memory used by the process; memspan for Go does not measure it (set it with
	// Request.SetAttributes where the service knows it).
	AttrGPUUsed = "memspan.gpu.used"
	// AttrCohort is the A/B cohort label (e.g. "baseline", "canary").
	AttrCohort = "memspan.cohort"
)

// GenAI semantic-convention attribute names set on each request span.
const (
	AttrGenAIOperationName    = "gen_ai.operation.name"
	AttrGenAIRequestModel     = "gen_ai.request.model"
	AttrGenAIUsageInputTokens = "gen_ai.usage.input_tokens"
	// AttrGenAIUsageOutputTokens is the number of tokens the model produced.
	AttrGenAIUsageOutputTokens = "gen_ai.usage.output_tokens"
)

// KeyValue is one attribute: a key and a typed value.
type KeyValue struct {
	Key   string
	Value Value
}

// valueKind tells which field of a Value is set.
type valueKind uint8

const (
	kindString valueKind = iota + 1
	kindInt64
	kindFloat64
	kindBool
)

// Value is an attribute value: a string, a 64-bit integer, a float or a bool. Build one with String, Int64,
// Float64 or Bool.
type Value struct {
	kind valueKind
	str  string
	// num holds the integer, the float's bits, or 1/0 for a bool.
	num uint64
}

// String makes a string attribute.
func String(key, value string) KeyValue {
	return KeyValue{Key: key, Value: Value{kind: kindString, str: value}}
}

// Int64 makes an integer attribute.
func Int64(key string, value int64) KeyValue {
	return KeyValue{Key: key, Value: Value{kind: kindInt64, num: uint64(value)}}
}

// Float64 makes a floating-point attribute.
func Float64(key string, value float64) KeyValue {
	return KeyValue{Key: key, Value: Value{kind: kindFloat64, num: float64bits(value)}}
}

// Bool makes a boolean attribute.
func Bool(key string, value bool) KeyValue {
	var n uint64
	if value {
		n = 1
	}
	return KeyValue{Key: key, Value: Value{kind: kindBool, num: n}}
}

// AsString returns the value if it is a string.
func (v Value) AsString() (string, bool) { return v.str, v.kind == kindString }

// AsInt64 returns the value if it is an integer.
func (v Value) AsInt64() (int64, bool) { return int64(v.num), v.kind == kindInt64 }

// AsFloat64 returns the value if it is a float.
func (v Value) AsFloat64() (float64, bool) { return float64frombits(v.num), v.kind == kindFloat64 }

// AsBool returns the value if it is a bool.
func (v Value) AsBool() (bool, bool) { return v.num == 1, v.kind == kindBool }
