package memspan

import (
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// Runtime metrics: the OpenTelemetry semantic conventions for Go (the names, units, instrument kinds and
// runtime/metrics sources of go.opentelemetry.io/contrib/instrumentation/runtime), plus process.memory.usage
// and the cgroup figures. An UpDownCounter is exported as a non-monotonic cumulative sum, a Counter as a
// monotonic cumulative sum, a Gauge as a gauge.
const (
	MetricGoMemoryUsed        = "go.memory.used"        // By; go.memory.type = stack | other
	MetricGoMemoryLimit       = "go.memory.limit"       // By; absent while no GOMEMLIMIT is set
	MetricGoMemoryAllocated   = "go.memory.allocated"   // By, counter
	MetricGoMemoryAllocations = "go.memory.allocations" // {allocation}, counter
	MetricGoMemoryGCGoal      = "go.memory.gc.goal"     // By
	MetricGoGoroutineCount    = "go.goroutine.count"    // {goroutine}
	MetricGoProcessorLimit    = "go.processor.limit"    // {thread}
	MetricGoConfigGOGC        = "go.config.gogc"        // %; absent while GOGC=off
	MetricProcessMemoryUsage  = "process.memory.usage"  // By: the process's RSS
	// MetricContainerMemoryUsage is the cgroup's memory.current (v1 memory.usage_in_bytes), where visible.
	MetricContainerMemoryUsage = "container.memory.usage"
	// AttrGoMemoryType is the attribute of go.memory.used.
	AttrGoMemoryType = "go.memory.type"
)

// runtimeKeys are the runtime/metrics keys the collector reads, in the order of the rk* indexes.
var runtimeKeys = [...]string{
	rmTotal, rmHeapReleased, rmHeapStacks, rmMemLimit, rmAllocBytes, rmAllocObjects, rmGCGoal, rmGoroutines,
	rmMaxProcs, rmGOGC,
}

const (
	rkTotal = iota
	rkReleased
	rkStacks
	rkLimit
	rkAllocBytes
	rkAllocObjects
	rkGoal
	rkGoroutines
	rkMaxProcs
	rkGOGC
)

// Attribute sets of go.memory.used, made once.
var (
	memoryTypeStack = []KeyValue{String(AttrGoMemoryType, "stack")}
	memoryTypeOther = []KeyValue{String(AttrGoMemoryType, "other")}
)

// runtimeCollector reads the runtime and process figures when the metrics are exported (off the request path).
type runtimeCollector struct {
	mu      sync.Mutex
	samples [len(runtimeKeys)]metrics.Sample
	// startNano is the start of the cumulative sums: when memspan started.
	startNano uint64
	rss       *rssProbe       // nil without procfs
	cgroup    *cgroupLocation // nil without a visible memory cgroup
	limit     *atomic.Int64   // the cached cgroup limit, -1 when none
}

func newRuntimeCollector(start time.Time, rss *rssProbe, cg *cgroupLocation, limit *atomic.Int64) *runtimeCollector {
	c := &runtimeCollector{startNano: uint64(start.UnixNano()), rss: rss, cgroup: cg, limit: limit}
	for i, k := range runtimeKeys {
		c.samples[i].Name = k
	}
	return c
}

// collect reads everything now and returns the metrics to export.
func (c *runtimeCollector) collect(now time.Time) []metricData {
	c.mu.Lock()
	defer c.mu.Unlock()
	metrics.Read(c.samples[:])
	get := func(i int) int64 { return sampleInt(c.samples[i]) }
	t := uint64(now.UnixNano())
	pt := func(v int64, attrs []KeyValue) numberPoint {
		return numberPoint{attrs: attrs, startNano: c.startNano, timeNano: t, value: v}
	}
	upDown := func(name, unit, desc string, points ...numberPoint) metricData {
		return metricData{name: name, unit: unit, description: desc, kind: metricSum, points: points}
	}
	counter := func(name, unit, desc string, v int64) metricData {
		return metricData{name: name, unit: unit, description: desc, kind: metricSum, monotonic: true,
			points: []numberPoint{pt(v, nil)}}
	}
	stack := get(rkStacks)
	other := get(rkTotal) - get(rkReleased) - stack
	out := []metricData{
		upDown(MetricGoMemoryUsed, "By", "Memory used by the Go runtime.",
			pt(stack, memoryTypeStack), pt(other, memoryTypeOther)),
	}
	// The runtime reports math.MaxInt64 when no limit is set: the metric is then left out.
	if limit := get(rkLimit); limit >= 0 && limit != 1<<63-1 {
		out = append(out, upDown(MetricGoMemoryLimit, "By",
			"Go runtime memory limit configured by the user, if a limit exists.", pt(limit, nil)))
	}
	out = append(out,
		counter(MetricGoMemoryAllocated, "By", "Memory allocated to the heap by the application.",
			get(rkAllocBytes)),
		counter(MetricGoMemoryAllocations, "{allocation}",
			"Count of allocations to the heap by the application.", get(rkAllocObjects)),
		upDown(MetricGoMemoryGCGoal, "By", "Heap size target for the end of the GC cycle.",
			pt(get(rkGoal), nil)),
		upDown(MetricGoGoroutineCount, "{goroutine}", "Count of live goroutines.", pt(get(rkGoroutines), nil)),
		upDown(MetricGoProcessorLimit, "{thread}",
			"The number of OS threads that can execute user-level Go code simultaneously.",
			pt(get(rkMaxProcs), nil)),
	)
	// GOGC=off reads as -1 (a huge unsigned value): no meaningful percentage, so no point.
	if v := c.samples[rkGOGC].Value; v.Kind() == metrics.KindUint64 && v.Uint64() < 1<<31 {
		out = append(out, upDown(MetricGoConfigGOGC, "%",
			"Heap size target percentage configured by the user, otherwise 100.", pt(int64(v.Uint64()), nil)))
	}
	if c.rss != nil {
		if rss := c.rss.rssNow(); rss >= 0 {
			out = append(out, upDown(MetricProcessMemoryUsage, "By",
				"The amount of physical memory in use.", pt(rss, nil)))
		}
	}
	if c.cgroup != nil {
		if usage := c.cgroup.usage(); usage >= 0 {
			out = append(out, upDown(MetricContainerMemoryUsage, "By",
				"Memory usage of the container's cgroup.", pt(usage, nil)))
		}
	}
	if limit := c.limit.Load(); limit >= 0 {
		out = append(out, metricData{name: AttrLimit, unit: "By", kind: metricGauge,
			description: "The effective cgroup memory limit.", points: []numberPoint{{timeNano: t, value: limit}}})
	}
	return out
}
