"""OTLP trace client built on the real Python OpenTelemetry SDK.

The end-to-end tests use it as an independent, real-world sender: whatever
memdrift receives from it is exactly what the official SDK and its OTLP
exporters (gRPC or HTTP/protobuf, optionally gzip-compressed) put on the wire,
not what our own Rust encoder believes the protocol to be.

Every span looks like a GenAI chat call carrying memspan.* memory attributes
(integers, bytes) whose values are deterministic for a given --seed. The
script exits non-zero unless the exporter reported success for every span, and
prints "sent N spans via PROTOCOL" as its last line on success.

Example:
    .venv/bin/python tests/peers/otlp_client.py --protocol grpc \\
        --endpoint http://127.0.0.1:4317 --spans 100 --gzip
"""

import argparse
import logging
import random
import sys
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlparse

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

# Per export call, retries included: a dead endpoint fails in bounded time.
EXPORT_TIMEOUT_S = 10.0
KIB = 1 << 10
MIB = 1 << 20
MEMORY_LIMIT_BYTES = 4 * (1 << 30)
SPAN_NAME = "chat small-model"
MODEL = "small-model"


class RecordingExporter(SpanExporter):
    """Delegates to the real OTLP exporter and records what it reported.

    The batch processor discards export results, so this is where the script
    learns whether the spans were delivered. After the first failed batch it
    fails the remaining ones at once instead of waiting out the timeout for
    each of them against an endpoint that is evidently not accepting spans.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.exported_spans = 0
        self.failed_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self.failed_batches:
                self.failed_batches += 1
                return SpanExportResult.FAILURE
            result = self._inner.export(spans)
            if result is SpanExportResult.SUCCESS:
                self.exported_spans += len(spans)
            else:
                self.failed_batches += 1
            return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def endpoint_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
        raise argparse.ArgumentTypeError(f"expected a URL like http://127.0.0.1:4317, got {value!r}")
    return value.rstrip("/")


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", required=True, choices=("grpc", "http"))
    parser.add_argument(
        "--endpoint",
        required=True,
        type=endpoint_url,
        help="gRPC: http://HOST:PORT; HTTP: the base URL, /v1/traces is appended",
    )
    parser.add_argument("--spans", type=positive_int, default=100, help="number of spans to send (default 100)")
    parser.add_argument("--service", default="py-infer", help="service.name (default py-infer)")
    parser.add_argument("--instance", default="py-1", help="service.instance.id (default py-1)")
    parser.add_argument("--version", default="1.0.0", help="service.version (default 1.0.0)")
    parser.add_argument("--cohort", help="when set, sent as span attribute memspan.cohort")
    parser.add_argument("--gzip", action="store_true", help="gzip-compress export requests")
    parser.add_argument("--seed", type=int, default=1, help="seed of the memory values (default 1)")
    return parser.parse_args()


def make_exporter(protocol: str, endpoint: str, use_gzip: bool) -> SpanExporter:
    if protocol == "grpc":
        return GrpcSpanExporter(
            endpoint=endpoint,
            timeout=EXPORT_TIMEOUT_S,
            compression=grpc.Compression.Gzip if use_gzip else grpc.Compression.NoCompression,
        )
    return HttpSpanExporter(
        endpoint=f"{endpoint}/v1/traces",
        timeout=EXPORT_TIMEOUT_S,
        compression=HttpCompression.Gzip if use_gzip else HttpCompression.NoCompression,
    )


def memory_attributes(rng: random.Random) -> dict[str, int]:
    """Plausible per-request memory figures, in bytes, for a ~500 MB process."""
    rss_start = 500 * MIB + rng.randint(-32 * MIB, 32 * MIB)
    allocated = rng.randint(1 * MIB, 8 * MIB)
    retained = rng.randint(0, 256 * KIB)
    return {
        "memspan.rss.start": rss_start,
        "memspan.rss.end": rss_start + retained,
        "memspan.heap.allocated": rng.randint(280 * MIB, 340 * MIB),
        "memspan.request.allocated": allocated,
        "memspan.request.freed": allocated - retained,
        "memspan.limit": MEMORY_LIMIT_BYTES,
    }


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="otlp_client: %(levelname)s %(name)s: %(message)s")

    exporter = RecordingExporter(make_exporter(args.protocol, args.endpoint, args.gzip))
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": args.service,
                "service.version": args.version,
                "service.instance.id": args.instance,
            }
        )
    )
    # The queue holds every span, so none is dropped for lack of room.
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=max(args.spans, 2048)))
    tracer = provider.get_tracer("memdrift.tests.otlp_client")

    rng = random.Random(args.seed)
    for _ in range(args.spans):
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": MODEL,
            **memory_attributes(rng),
        }
        if args.cohort is not None:
            attributes["memspan.cohort"] = args.cohort
        end_ns = time.time_ns()
        start_ns = end_ns - rng.randint(2, 20) * 1_000_000
        span = tracer.start_span(SPAN_NAME, kind=SpanKind.CLIENT, attributes=attributes, start_time=start_ns)
        span.end(end_time=end_ns)

    provider.force_flush()
    provider.shutdown()

    if exporter.failed_batches or exporter.exported_spans != args.spans:
        print(
            f"otlp_client: export to {args.endpoint} via {args.protocol} failed: "
            f"{exporter.exported_spans} of {args.spans} spans accepted, "
            f"{exporter.failed_batches} batch(es) failed",
            file=sys.stderr,
        )
        return 1
    print(f"sent {args.spans} spans via {args.protocol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
