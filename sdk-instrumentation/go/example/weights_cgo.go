//go:build cgo

package main

/*
#include <stdlib.h>
#include <string.h>
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// cgoAvailable tells whether -cgo-weights can work in this build.
const cgoAvailable = true

// nativeWeights is a block of adapter weights in C memory, freed by a finalizer when the Go object holding it
// becomes unreachable: the common way Go wrappers of C libraries (inference runtimes, tokenizers) manage
// native buffers.
type nativeWeights struct {
	ptr  unsafe.Pointer
	size int
}

func loadNativeWeights(size int, fill byte) *nativeWeights {
	ptr := C.malloc(C.size_t(size))
	if ptr == nil {
		panic(fmt.Sprintf("malloc(%d) failed", size))
	}
	// Written through so the pages become resident: RSS, not only virtual memory.
	C.memset(ptr, C.int(fill), C.size_t(size))
	w := &nativeWeights{ptr: ptr, size: size}
	runtime.SetFinalizer(w, func(w *nativeWeights) { C.free(w.ptr) })
	return w
}

// loadedAdapters holds every adapter loaded, for "reuse" that never happens: the finalizers never run, and the
// C memory is never freed. The Go heap holds only a few bytes per adapter, so the Go heap and go.memory.used
// stay flat while process.memory.usage (RSS) climbs: memdrift classifies the leak off_heap.
var loadedAdapters struct {
	sync.Mutex
	all []*nativeWeights
}

// nativeBytes is the C memory held by loadedAdapters.
func nativeBytes() int64 {
	loadedAdapters.Lock()
	defer loadedAdapters.Unlock()
	var n int64
	for _, w := range loadedAdapters.all {
		n += int64(w.size)
	}
	return n
}

// loadAdapter loads the weights a request's adapter needs into C memory and registers them globally.
func loadAdapter(size int, fill byte) {
	w := loadNativeWeights(size, fill)
	loadedAdapters.Lock()
	loadedAdapters.all = append(loadedAdapters.all, w)
	loadedAdapters.Unlock()
}
