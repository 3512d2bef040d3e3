package memspan

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// spanBatcher queues finished spans and exports them in batches from one goroutine: when MaxBatchSize are
// waiting, when the oldest has waited BatchDelay, and on flush. The queue is bounded; a span that does not fit
// is dropped and counted, so a request never waits for the network.
type spanBatcher struct {
	queue    chan *spanData
	flushReq chan flushRequest
	done     chan struct{}
	closing  sync.Once
	maxBatch int
	delay    time.Duration
	exporter *httpExporter
	encode   func(buf []byte, spans []*spanData) ([]byte, error)
	// buf is the encoding buffer, reused from batch to batch (only the run goroutine uses it).
	buf     []byte
	stats   *counters
	onError func(error)
	// ctx is the context of exports outside a flush; cancelled by close.
	ctx    context.Context
	cancel context.CancelFunc
}

type flushRequest struct {
	ctx  context.Context
	done chan error
}

func newSpanBatcher(cfg Config, exporter *httpExporter, encode func([]byte, []*spanData) ([]byte, error),
	stats *counters, onError func(error)) *spanBatcher {
	ctx, cancel := context.WithCancel(context.Background())
	b := &spanBatcher{
		queue:    make(chan *spanData, cfg.MaxQueueSize),
		flushReq: make(chan flushRequest),
		done:     make(chan struct{}),
		maxBatch: cfg.MaxBatchSize,
		delay:    cfg.BatchDelay,
		exporter: exporter,
		encode:   encode,
		stats:    stats,
		onError:  onError,
		ctx:      ctx,
		cancel:   cancel,
	}
	go b.run()
	return b
}

// enqueue queues a finished span without blocking; false (and counted) when the queue is full.
func (b *spanBatcher) enqueue(s *spanData) bool {
	select {
	case b.queue <- s:
		return true
	default:
		b.stats.spansDropped.Add(1)
		return false
	}
}

func (b *spanBatcher) run() {
	defer close(b.done)
	batch := make([]*spanData, 0, b.maxBatch)
	timer := time.NewTimer(b.delay)
	defer timer.Stop()
	for {
		select {
		case s := <-b.queue:
			batch = append(batch, s)
			if len(batch) >= b.maxBatch {
				batch = b.export(b.ctx, batch)
			}
		case <-timer.C:
			batch = b.export(b.ctx, batch)
			timer.Reset(b.delay)
		case req := <-b.flushReq:
			batch = b.drain(req.ctx, batch)
			req.done <- req.ctx.Err()
		case <-b.ctx.Done():
			// close: what is still queued is counted as dropped.
			b.stats.spansDropped.Add(uint64(len(batch) + len(b.queue)))
			return
		}
	}
}

// drain exports everything queued now, in batches, under ctx.
func (b *spanBatcher) drain(ctx context.Context, batch []*spanData) []*spanData {
	for {
		select {
		case s := <-b.queue:
			batch = append(batch, s)
			if len(batch) >= b.maxBatch {
				batch = b.export(ctx, batch)
			}
		default:
			return b.export(ctx, batch)
		}
	}
}

// export sends one batch and returns the emptied slice to reuse.
func (b *spanBatcher) export(ctx context.Context, batch []*spanData) []*spanData {
	if len(batch) == 0 {
		return batch
	}
	n := uint64(len(batch))
	body, err := b.encode(b.buf[:0], batch)
	b.buf = body
	clear(batch) // the spans are garbage once encoded
	batch = batch[:0]
	if err != nil {
		b.stats.spansFailed.Add(n)
		b.onError(fmt.Errorf("memspan: encoding %d spans: %w", n, err))
		return batch
	}
	res, err := b.exporter.send(ctx, body)
	if err != nil {
		b.stats.spansFailed.Add(n)
		b.onError(fmt.Errorf("%w (%d spans lost)", err, n))
		return batch
	}
	b.stats.spansExported.Add(n)
	if res.rejected > 0 || res.message != "" {
		b.stats.spansRejected.Add(uint64(max(res.rejected, 0)))
		b.onError(fmt.Errorf("memspan: the receiver rejected %d spans: %s", res.rejected, res.message))
	}
	return batch
}

// flush exports everything queued so far and waits for it, at most until ctx ends.
func (b *spanBatcher) flush(ctx context.Context) error {
	req := flushRequest{ctx: ctx, done: make(chan error, 1)}
	select {
	case b.flushReq <- req:
	case <-ctx.Done():
		return fmt.Errorf("memspan: flushing spans: %w", ctx.Err())
	case <-b.done:
		return nil
	}
	select {
	case err := <-req.done:
		if err != nil {
			return fmt.Errorf("memspan: flushing spans: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("memspan: flushing spans: %w", ctx.Err())
	}
}

// close stops the export goroutine, abandoning an export in progress.
func (b *spanBatcher) close() {
	b.closing.Do(b.cancel)
	<-b.done
}
