package memspan

import (
	"fmt"
	"os"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// defaultMaxAge is how long a shared RSS or heap reading is reused by other requests; see sharedReading.
const defaultMaxAge = time.Millisecond

// sharedReading lets requests share a recent reading of a source that costs about a microsecond to read
// (statm, runtime/metrics), which twice per request would be most of the per-request budget. A reading at most
// maxAge old is reused; when it is older, the one request that wins the lock reads again while the others keep
// the previous value. Under load a request pays a clock read and an atomic load; at low rates every request
// reads, which costs nothing that matters when the process is idle.
//
// Times are monotonic nanoseconds from an anchor the caller keeps (Memspan reads the clock once per request
// start or end and hands the offset to each probe).
type sharedReading struct {
	maxAge int64 // nanoseconds
	mu     sync.Mutex
	// readAt is the reading's time; -1 before the first.
	readAt atomic.Int64
}

func (s *sharedReading) init(maxAge time.Duration) {
	s.maxAge = int64(maxAge)
	s.readAt.Store(-1)
}

// refresh calls read when the shared reading, as of now, is stale and no other goroutine is reading.
func (s *sharedReading) refresh(now int64, read func()) {
	at := s.readAt.Load()
	if at >= 0 && now-at < s.maxAge {
		return
	}
	if !s.mu.TryLock() {
		if at >= 0 {
			return // another goroutine is reading; the previous value will do
		}
		s.mu.Lock() // the very first reading: wait for it
		defer s.mu.Unlock()
		if s.readAt.Load() >= 0 {
			return
		}
	} else {
		defer s.mu.Unlock()
	}
	read()
	s.readAt.Store(now)
}

// rssProbe reads the resident set size from /proc/self/statm through a file kept open: one pread per reading.
type rssProbe struct {
	statm    *os.File
	pageSize int64
	shared   sharedReading
	// last is the latest reading in bytes; -1 when it failed.
	last atomic.Int64
}

// newRSSProbe opens /proc/self/statm; an error where it cannot be opened or read (not Linux, no procfs).
func newRSSProbe(path string, maxAge time.Duration) (*rssProbe, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("memspan: RSS unavailable: %w", err)
	}
	p := &rssProbe{statm: f, pageSize: int64(os.Getpagesize())}
	p.shared.init(maxAge)
	p.last.Store(-1)
	if _, _, err := p.statmBytes(); err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// statmBytes reads statm now: virtual size and resident set size in bytes.
func (p *rssProbe) statmBytes() (virtual, resident int64, err error) {
	var buf [128]byte
	n, err := p.statm.ReadAt(buf[:], 0)
	if n == 0 && err != nil {
		return 0, 0, fmt.Errorf("memspan: reading %s: %w", p.statm.Name(), err)
	}
	size, res, ok := parseStatm(buf[:n])
	if !ok {
		return 0, 0, fmt.Errorf("memspan: %s: cannot parse %q", p.statm.Name(), buf[:n])
	}
	return size * p.pageSize, res * p.pageSize, nil
}

// rssNow reads statm now; -1 on failure.
func (p *rssProbe) rssNow() int64 {
	_, rss, err := p.statmBytes()
	if err != nil {
		return -1
	}
	return rss
}

// rss is the RSS as of at most maxAge before now (monotonic nanoseconds); -1 when it cannot be read.
func (p *rssProbe) rss(now int64) int64 {
	p.shared.refresh(now, func() { p.last.Store(p.rssNow()) })
	return p.last.Load()
}

func (p *rssProbe) close() error { return p.statm.Close() }

// parseStatm reads the first two fields of /proc/self/statm (size and resident, in pages).
func parseStatm(b []byte) (size, resident int64, ok bool) {
	size, rest, ok := parseDecimal(b)
	if !ok || len(rest) == 0 || rest[0] != ' ' {
		return 0, 0, false
	}
	resident, rest, ok = parseDecimal(rest[1:])
	if !ok || len(rest) > 0 && rest[0] != ' ' && rest[0] != '\n' {
		return 0, 0, false
	}
	return size, resident, true
}

// parseDecimal reads a non-negative decimal int64 at the start of b, without allocating.
func parseDecimal(b []byte) (int64, []byte, bool) {
	var v int64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		d := int64(b[i] - '0')
		if v > (1<<63-1-d)/10 {
			return 0, nil, false
		}
		v = v*10 + d
	}
	return v, b[i:], i > 0
}

// Runtime metric keys memspan reads (runtime/metrics; none of them stops the world).
const (
	rmHeapObjects  = "/memory/classes/heap/objects:bytes"
	rmHeapUnused   = "/memory/classes/heap/unused:bytes"
	rmHeapFree     = "/memory/classes/heap/free:bytes"
	rmHeapReleased = "/memory/classes/heap/released:bytes"
	rmHeapStacks   = "/memory/classes/heap/stacks:bytes"
	rmTotal        = "/memory/classes/total:bytes"
	rmAllocBytes   = "/gc/heap/allocs:bytes"
	rmAllocObjects = "/gc/heap/allocs:objects"
	rmGCGoal       = "/gc/heap/goal:bytes"
	rmMemLimit     = "/gc/gomemlimit:bytes"
	rmGoroutines   = "/sched/goroutines:goroutines"
	rmMaxProcs     = "/sched/gomaxprocs:threads"
	rmGOGC         = "/gc/gogc:percent"
)

// heapFigures are the Go heap's sizes at one instant, in bytes.
type heapFigures struct {
	allocated, resident, retained int64
}

// heapProbe serves the Go heap figures of memspan.heap.*, shared between requests like the RSS. The three
// figures of one reading are published together, so a request never sees a mix of two readings.
type heapProbe struct {
	shared  sharedReading
	samples [4]metrics.Sample // guarded by shared.mu
	last    atomic.Pointer[heapFigures]
}

// noHeapFigures is the reading before the first one.
var noHeapFigures = &heapFigures{allocated: -1, resident: -1, retained: -1}

func newHeapProbe(maxAge time.Duration) *heapProbe {
	p := &heapProbe{}
	p.shared.init(maxAge)
	for i, name := range []string{rmHeapObjects, rmHeapUnused, rmHeapFree, rmHeapReleased} {
		p.samples[i].Name = name
	}
	p.last.Store(noHeapFigures)
	return p
}

// read returns the heap figures as of at most maxAge before now (monotonic nanoseconds); -1 for each figure
// the runtime does not have.
func (p *heapProbe) read(now int64) heapFigures {
	p.shared.refresh(now, func() {
		metrics.Read(p.samples[:])
		objects, unused, free := sampleInt(p.samples[0]), sampleInt(p.samples[1]), sampleInt(p.samples[2])
		h := &heapFigures{allocated: objects, resident: -1, retained: sampleInt(p.samples[3])}
		if objects >= 0 && unused >= 0 && free >= 0 {
			h.resident = objects + unused + free
		}
		p.last.Store(h)
	})
	return *p.last.Load()
}

// sampleInt is a uint64 sample as int64 (capped), or -1 when the runtime does not have the key.
func sampleInt(s metrics.Sample) int64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return -1
	}
	v := s.Value.Uint64()
	if v > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(v)
}

// allocMaxAge is how long a reading of the cumulative allocation counter is shared between requests. It is
// far shorter than the RSS's: the counter is read at both ends of a request and the difference is the
// request's figure, so a reading may be at most this much older than the request's start or end.
const allocMaxAge = 50 * time.Microsecond

// allocProbe serves the process's cumulative heap allocation (/gc/heap/allocs:bytes), shared between requests
// like the RSS. A reading costs about 0.4 us (the runtime sums per-processor statistics); at high request
// rates requests reuse one that is at most allocMaxAge old. The shared value never goes back in time, so a
// request's end reading is never below its start reading.
type allocProbe struct {
	shared  sharedReading
	samples [1]metrics.Sample // guarded by shared.mu
	last    atomic.Int64
}

func newAllocProbe(maxAge time.Duration) *allocProbe {
	p := &allocProbe{}
	p.shared.init(maxAge)
	p.samples[0].Name = rmAllocBytes
	p.last.Store(-1)
	return p
}

// allocated is the bytes allocated on the heap since the process started, as of at most maxAge before now
// (monotonic nanoseconds); -1 where the runtime lacks the metric.
func (p *allocProbe) allocated(now int64) int64 {
	p.shared.refresh(now, func() {
		metrics.Read(p.samples[:])
		p.last.Store(sampleInt(p.samples[0]))
	})
	return p.last.Load()
}
