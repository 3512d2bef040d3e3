//go:build !cgo

package main

// cgoAvailable tells whether -cgo-weights can work in this build: not without cgo (CGO_ENABLED=0).
const cgoAvailable = false

func nativeBytes() int64 { return 0 }

func loadAdapter(int, byte) { panic("-cgo-weights needs a build with cgo") }
