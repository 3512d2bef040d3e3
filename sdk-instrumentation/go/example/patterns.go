package main

import (
	"bytes"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
)

// The memory failures the switches turn on: each is the ordinary-looking Go code that causes one kind of
// trouble memdrift is built to catch, beside the correct variant the service runs by default.

// poolKeepCapacity is the largest buffer the correct pool takes back: bigger ones are left to the collector.
const poolKeepCapacity = 64 << 10

// bufferPool hands out scratch buffers through a sync.Pool.
//
// Correct (the default): a buffer is Reset before it goes back, and one that grew past poolKeepCapacity is not
// put back at all, so one huge request cannot pin a huge backing array in the pool.
//
// -pool-no-reset: buffers go back as they are. The next request appends after the previous contents, so the
// backing arrays grow to megabytes, and each time one outgrows its capacity the request that grows it copies
// the whole array. sync.Pool drops what it holds when a collection finds it idle for a cycle, so the arrays
// do not grow without bound: what the bug does is make some requests allocate megabytes where others allocate
// kilobytes, and RSS swing with the arrays. Measured with this example at 200 requests/s: arrays of 1-8 MiB
// dropped every few seconds, RSS between 35 and 120 MiB against a steady 29 MiB. memdrift sees it as the
// spread of memspan.request.allocated widening in a canary against its baseline (spread_drift), not as a
// leak: the post-GC floor does not rise.
type bufferPool struct {
	pool  sync.Pool
	reset bool
}

func newBufferPool(reset bool) *bufferPool {
	return &bufferPool{pool: sync.Pool{New: func() any { return new(bytes.Buffer) }}, reset: reset}
}

func (p *bufferPool) get() *bytes.Buffer { return p.pool.Get().(*bytes.Buffer) }

func (p *bufferPool) put(b *bytes.Buffer) {
	if p.reset {
		if b.Cap() > poolKeepCapacity {
			return
		}
		b.Reset()
	}
	p.pool.Put(b)
}

// responseCache caches answers by prompt.
//
// Correct: at most cacheMaxEntries, the oldest evicted first. -cache-grow: never evicted, so unique prompts
// make it grow without bound (with each entry holding a copy of its scratch state, as caches of intermediate
// results do).
type responseCache struct {
	mu      sync.Mutex
	entries map[string]cacheEntry
	order   []string // insertion order, for eviction
	bounded bool
}

type cacheEntry struct {
	text  []byte
	state []byte
}

const (
	cacheMaxEntries = 256
	// cacheStateBytes is the scratch state kept with each entry.
	cacheStateBytes = 32 << 10
)

func newResponseCache(bounded bool) *responseCache {
	return &responseCache{entries: map[string]cacheEntry{}, bounded: bounded}
}

func (c *responseCache) get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	return e.text, ok
}

func (c *responseCache) put(key string, text []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; ok {
		return
	}
	state := make([]byte, cacheStateBytes)
	for i := range state {
		state[i] = byte(i)
	}
	c.entries[key] = cacheEntry{text: text, state: state}
	c.order = append(c.order, key)
	if c.bounded && len(c.order) > cacheMaxEntries {
		delete(c.entries, c.order[0])
		c.order = c.order[1:]
	}
}

func (c *responseCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// leakedGoroutineBytes is what each leaked goroutine keeps alive besides its stack.
const leakedGoroutineBytes = 16 << 10

// goroutineLeaks counts goroutines started by -goroutine-leak.
var goroutineLeaks atomic.Int64

// never is a channel nothing ever sends on or closes.
var never = make(chan struct{})

// leakGoroutine starts the classic leak: a goroutine that waits for a result nobody will send (the request
// returned early, or timed out, and forgot to cancel it). It keeps its stack and the buffer it captured.
// memdrift: go.goroutine.count climbs, a leak classified goroutines.
func leakGoroutine(request []byte) {
	// Every page written: a fresh allocation may be zero pages the kernel has not backed yet, which would not
	// show in RSS, where a real request's buffer holds data.
	held := make([]byte, leakedGoroutineBytes)
	for i := 0; i < len(held); i += 4096 {
		held[i] = 1
	}
	copy(held, request)
	goroutineLeaks.Add(1)
	go func() {
		<-never
		runtime.KeepAlive(held) // the buffer lives as long as the goroutine
	}()
}

// draftMaxBytes bounds the draft buffer of -draft-scratch.
const draftMaxBytes = 256 << 10

// draftSink keeps the compiler from dropping the draft buffer.
var draftSink atomic.Int64

// draft is -draft-scratch: a speculative-decoding pass whose scratch buffer has a random size, as a version
// that drafts a variable number of tokens ahead may allocate. Nothing is kept, so memory does not grow; what
// changes is the spread of the bytes each request allocates (memspan.request.allocated), which memdrift
// compares between a canary and its baseline.
func draft(text []byte) {
	buf := make([]byte, rand.IntN(draftMaxBytes))
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = byte(len(text))
	}
	draftSink.Add(int64(len(buf)))
}
