"""Minimal OTLP trace receiver, independent of memdrift.

It exists so the test peers can be checked against something other than the
code under test: tests/peers/otlp_client.py is verified by sending to this sink,
and the sink is meant to grow into the receiving end of the exporter's tests.
It decodes requests with the official protobuf definitions (opentelemetry-proto)
and serves, on loopback only:

  - OTLP/gRPC: TraceService/Export (grpcio handles gzip transparently);
  - OTLP/HTTP: POST /v1/traces with application/x-protobuf bodies, plain or
    Content-Encoding: gzip.

It counts spans, spans carrying integer memspan.* attributes, and service
names. Its first stdout line, {"ready": {"grpc_port": P1, "http_port": P2}},
says it accepts requests (ports 0 pick free ports); its last stdout line is
the summary {"spans": N, "memory_spans": M, "services": [...]}, printed on
SIGTERM/SIGINT, once --exit-after-spans spans have arrived, or after
--timeout-s. Exits 1 if the timeout hits before --exit-after-spans is reached.

Usage:
    .venv/bin/python tests/peers/otlp_sink.py --grpc-port 4317 --http-port 4318 \\
        [--exit-after-spans N] [--timeout-s T]
"""

import argparse
import gzip
import json
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOOPBACK = "127.0.0.1"
MEMORY_ATTRIBUTE_PREFIX = "memspan."
GRPC_STOP_GRACE_S = 2.0


class Tally:
    """What the sink has received so far; shared by both servers' threads."""

    def __init__(self, exit_after_spans: int | None, enough: threading.Event) -> None:
        self._lock = threading.Lock()
        self._exit_after_spans = exit_after_spans
        self._enough = enough
        self.spans = 0
        self.memory_spans = 0
        self.services: set[str] = set()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.services.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans += 1
                        if any(
                            a.key.startswith(MEMORY_ATTRIBUTE_PREFIX) and a.value.HasField("int_value")
                            for a in span.attributes
                        ):
                            self.memory_spans += 1

    def reached_exit_after_spans(self) -> bool:
        with self._lock:
            return self._exit_after_spans is not None and self.spans >= self._exit_after_spans

    def check_enough(self) -> None:
        """Sets the `enough` event once --exit-after-spans spans have arrived.

        Called after the sender has its response, so the exit does not cut it off.
        """
        if self.reached_exit_after_spans():
            self._enough.set()

    def summary(self) -> str:
        with self._lock:
            return json.dumps(
                {"spans": self.spans, "memory_spans": self.memory_spans, "services": sorted(self.services)}
            )


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def Export(self, request, context):  # noqa: N802 (name fixed by the gRPC service)
        self._tally.add(request)
        # The server is stopped with a grace period, so this response still goes out.
        self._tally.check_enough()
        return trace_service_pb2.ExportTraceServiceResponse()


def make_http_handler(tally: Tally) -> type[BaseHTTPRequestHandler]:
    class OtlpHttpHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
            if self.path != "/v1/traces":
                self.send_error(404, f"only /v1/traces is served, not {self.path}")
                return
            content_type = self.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip() != "application/x-protobuf":
                self.send_error(415, f"expected application/x-protobuf, got {content_type!r}")
                return
            encoding = self.headers.get("Content-Encoding", "identity")
            if encoding not in ("identity", "gzip"):
                self.send_error(415, f"unsupported Content-Encoding {encoding!r}")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            except (OSError, EOFError, DecodeError) as error:
                self.send_error(400, f"undecodable request: {error}")
                return
            tally.add(request)
            response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(response)))
            self.end_headers()
            self.wfile.write(response)
            tally.check_enough()

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (signature of http.server)
            """Keeps stdout/stderr for the ready line, the summary and errors."""

    return OtlpHttpHandler


def port_number(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {port}")
    return port


def positive_number(kind):
    def parse(value: str):
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {value}")
        return number

    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc-port", type=port_number, required=True, help="OTLP/gRPC port (0: any free port)")
    parser.add_argument("--http-port", type=port_number, required=True, help="OTLP/HTTP port (0: any free port)")
    parser.add_argument("--exit-after-spans", type=positive_number(int), help="exit once this many spans arrived")
    parser.add_argument(
        "--timeout-s", type=positive_number(float), default=120.0, help="exit after this long (default 120)"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    # Set by a signal, or by the tally once --exit-after-spans spans arrived.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    tally = Tally(args.exit_after_spans, stop)

    # Without so_reuseport=0, a second sink could silently share a busy port.
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(tally), grpc_server)
    try:
        grpc_port = grpc_server.add_insecure_port(f"{LOOPBACK}:{args.grpc_port}")
        http_server = ThreadingHTTPServer((LOOPBACK, args.http_port), make_http_handler(tally))
    except (RuntimeError, OSError) as error:
        print(
            f"otlp_sink: cannot listen on {LOOPBACK} (grpc port {args.grpc_port}, http port {args.http_port}): {error}",
            file=sys.stderr,
        )
        return 1
    grpc_server.start()
    threading.Thread(target=http_server.serve_forever, name="otlp-http", daemon=True).start()
    print(json.dumps({"ready": {"grpc_port": grpc_port, "http_port": http_server.server_port}}), flush=True)

    timed_out = not stop.wait(args.timeout_s)
    grpc_server.stop(GRPC_STOP_GRACE_S).wait(GRPC_STOP_GRACE_S)
    http_server.shutdown()
    http_server.server_close()
    print(tally.summary(), flush=True)
    if timed_out and args.exit_after_spans is not None and not tally.reached_exit_after_spans():
        print(
            f"otlp_sink: timed out after {args.timeout_s:g} s waiting for {args.exit_after_spans} spans",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
