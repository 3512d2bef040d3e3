package main

import (
	"math"
	"math/rand/v2"
)

// modelName is the gen_ai.request.model of every request.
const modelName = "tiny-go-lm"

// The model's sizes: a byte vocabulary, a small hidden width, and a context window of recent bytes.
const (
	vocab        = 256
	width        = 64
	contextBytes = 32
	// workspacePerToken is the scratch a decoding step allocates (activations, a stand-in for a KV cache): the
	// request-dependent bulk of what a request allocates, freed when the request ends.
	workspacePerToken = 64 << 10
)

// tinyLM is a byte-level language model built in code from a fixed seed (no download): an embedding, two
// dense layers with tanh and a residual connection, and an output projection; greedy decoding.
type tinyLM struct {
	embed  [vocab][width]float32
	w1, w2 [width][width]float32
	out    [width][vocab]float32
	// workspace is the float32s of scratch per decoding step. A variable, not a constant: a constant-size
	// make of up to 64 KiB that does not escape is put on the goroutine stack, and real workspaces are sized
	// at run time.
	workspace int
}

func newTinyLM() *tinyLM {
	rng := rand.New(rand.NewPCG(1, 2))
	m := &tinyLM{workspace: workspacePerToken / 4}
	scale := float32(1 / math.Sqrt(width))
	for i := range m.embed {
		for j := range m.embed[i] {
			m.embed[i][j] = float32(rng.NormFloat64())
		}
	}
	for i := range width {
		for j := range width {
			m.w1[i][j] = float32(rng.NormFloat64()) * scale
			m.w2[i][j] = float32(rng.NormFloat64()) * scale
		}
		for j := range vocab {
			m.out[i][j] = float32(rng.NormFloat64()) * scale
		}
	}
	return m
}

// step predicts the byte after ctx (the last contextBytes bytes are read), using ws as scratch.
func (m *tinyLM) step(ctx []byte, ws []float32) byte {
	if len(ctx) > contextBytes {
		ctx = ctx[len(ctx)-contextBytes:]
	}
	h, h1, h2 := ws[0:width], ws[width:2*width], ws[2*width:3*width]
	clear(h)
	for pos, b := range ctx {
		weight := float32(pos+1) / float32(len(ctx))
		for j := range width {
			h[j] += weight * m.embed[b][j]
		}
	}
	dense(h1, h, &m.w1)
	dense(h2, h1, &m.w2)
	for j := range width {
		h2[j] += h[j]
	}
	best, bestScore := 0, float32(math.Inf(-1))
	for v := 32; v < 127; v++ { // printable ASCII only, so answers read as text
		var s float32
		for j := range width {
			s += h2[j] * m.out[j][v]
		}
		if s > bestScore {
			best, bestScore = v, s
		}
	}
	return byte(best)
}

func dense(dst, src []float32, w *[width][width]float32) {
	for i := range width {
		var s float32
		for j := range width {
			s += w[i][j] * src[j]
		}
		dst[i] = float32(math.Tanh(float64(s)))
	}
}

// generate decodes maxTokens bytes after prompt. Each step allocates its workspace, as real decoders allocate
// activations per step; the garbage collector frees them after the request.
func (m *tinyLM) generate(prompt []byte, maxTokens int) []byte {
	text := append([]byte(nil), prompt...)
	for range maxTokens {
		ws := make([]float32, m.workspace)
		next := m.step(text, ws)
		ws[len(ws)-1] = float32(next) // the workspace is written through, like a KV cache
		text = append(text, next)
	}
	return text[len(prompt):]
}
