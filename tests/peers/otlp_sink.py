"""Minimal OTLP receiver (traces, logs, metrics), independent of memdrift.

It exists so memdrift's output is checked by something other than the code
under test: the exporter's end-to-end tests send to this sink and read back
what it decoded, and tests/peers/otlp_client.py is checked against it too. It
decodes requests with the official protobuf definitions (opentelemetry-proto)
and serves, on loopback only:

  - OTLP/gRPC: TraceService, LogsService and MetricsService Export (grpcio
    handles gzip transparently);
  - OTLP/HTTP: POST /v1/traces, /v1/logs and /v1/metrics with
    application/x-protobuf bodies, plain or Content-Encoding: gzip.

With --tls-cert and --tls-key both servers speak TLS instead of plain text.

Its first stdout line, {"ready": {"grpc_port": P1, "http_port": P2}}, says it
accepts requests (ports 0 pick free ports); its last stdout line is the summary
{"spans": N, "memory_spans": M, "services": [...], "log_records": L,
"metric_points": P}, printed on SIGTERM/SIGINT, once --exit-after-spans spans
have arrived, or after --timeout-s. Exits 1 if the timeout hits before
--exit-after-spans is reached.

With --control it also reads commands, one JSON object per stdin line, and
answers each with one JSON line on stdout (stdin closing stops the sink):

  {"cmd": "dump"}   -> {"dump": {"requests": [...], "logs": [...],
                        "spans": [...], "metrics": [...]}}
      every request as {"seq", "t" (monotonic seconds), "transport",
      "signal", "headers", "answer", "items"}, and the decoded content of
      the accepted ones (ids in hex, attribute values as JSON values);
  {"cmd": "fault", "signal": "logs", "times": N, ...}  -> {"ok": true}
      answers the next N (default 1, -1 for ever) requests of that signal
      with, by the keys given:
        "http_status": 503, "retry_after": "2"   (HTTP requests only)
        "grpc_code": "UNAVAILABLE", "retry_delay_s": 1.5
                              (gRPC only; the delay as a google.rpc.RetryInfo)
        "partial_rejected": 1, "message": "..."  (both; a partial success)
      and, with "transport": "http" or "grpc", only to requests over that one.
  {"cmd": "clear"}  -> {"ok": true}   forgets requests, content and faults
  {"cmd": "stop"}   -> {"ok": true}   then exits as on SIGTERM

Usage:
    .venv/bin/python tests/peers/otlp_sink.py --grpc-port 4317 --http-port 4318 \\
        [--exit-after-spans N] [--timeout-s T] [--control] [--tls-cert F --tls-key F]
"""

import argparse
import gzip
import json
import signal
import ssl
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOOPBACK = "127.0.0.1"
MEMORY_ATTRIBUTE_PREFIX = "memspan."
GRPC_STOP_GRACE_S = 2.0


def any_value(value):
    """An AnyValue as a JSON value (bytes as hex)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def attributes(key_values) -> dict:
    return {kv.key: any_value(kv.value) for kv in key_values}


def items(request, resources: str, scopes: str, kind: str):
    """(resource attributes, scope name, item) for every item of an export request."""
    for resource_group in getattr(request, resources):
        resource = attributes(resource_group.resource.attributes)
        for scope_group in getattr(resource_group, scopes):
            for item in getattr(scope_group, kind):
                yield resource, scope_group.scope.name, item


def decode_logs(request) -> list[dict]:
    return [
        {
            "resource": resource,
            "scope": scope,
            "time_unix_nano": record.time_unix_nano,
            "observed_time_unix_nano": record.observed_time_unix_nano,
            "severity_number": record.severity_number,
            "severity_text": record.severity_text,
            "event_name": record.event_name,
            "body": any_value(record.body),
            "attributes": attributes(record.attributes),
            "trace_id": record.trace_id.hex(),
            "span_id": record.span_id.hex(),
        }
        for resource, scope, record in items(request, "resource_logs", "scope_logs", "log_records")
    ]


def decode_spans(request) -> list[dict]:
    return [
        {
            "resource": resource,
            "scope": scope,
            "name": span.name,
            "kind": span.kind,
            "trace_id": span.trace_id.hex(),
            "span_id": span.span_id.hex(),
            "parent_span_id": span.parent_span_id.hex(),
            "start_time_unix_nano": span.start_time_unix_nano,
            "end_time_unix_nano": span.end_time_unix_nano,
            "status": {"code": span.status.code, "message": span.status.message},
            "attributes": attributes(span.attributes),
            "links": [
                {
                    "trace_id": link.trace_id.hex(),
                    "span_id": link.span_id.hex(),
                    "attributes": attributes(link.attributes),
                }
                for link in span.links
            ],
        }
        for resource, scope, span in items(request, "resource_spans", "scope_spans", "spans")
    ]


def number(point):
    return point.as_int if point.WhichOneof("value") == "as_int" else point.as_double


def decode_metrics(request) -> list[dict]:
    out = []
    for resource, _, metric in items(request, "resource_metrics", "scope_metrics", "metrics"):
        kind = metric.WhichOneof("data")
        data = getattr(metric, kind) if kind else None
        entry = {
            "resource": resource,
            "name": metric.name,
            "unit": metric.unit,
            "description": metric.description,
            "type": kind,
            "temporality": getattr(data, "aggregation_temporality", None),
            "monotonic": getattr(data, "is_monotonic", None),
            "points": [],
        }
        for point in data.data_points if data is not None else []:
            p = {
                "attributes": attributes(point.attributes),
                "start_time_unix_nano": point.start_time_unix_nano,
                "time_unix_nano": point.time_unix_nano,
            }
            if kind in ("gauge", "sum"):
                p["value"] = number(point)
            else:
                p["count"] = point.count
                p["sum"] = point.sum
            entry["points"].append(p)
        out.append(entry)
    return out


SIGNALS = {
    "traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse,
               trace_service_pb2.ExportTracePartialSuccess, "rejected_spans", decode_spans),
    "logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse,
             logs_service_pb2.ExportLogsPartialSuccess, "rejected_log_records", decode_logs),
    "metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse,
                metrics_service_pb2.ExportMetricsPartialSuccess, "rejected_data_points", decode_metrics),
}


class Store:
    """What the sink has received, and the faults it is told to inject; shared by all threads."""

    def __init__(self, exit_after_spans: int | None, enough: threading.Event) -> None:
        self._lock = threading.Lock()
        self._exit_after_spans = exit_after_spans
        self._enough = enough
        self._clear()

    def _clear(self) -> None:
        self.requests: list[dict] = []
        self.content = {"logs": [], "spans": [], "metrics": []}
        self.faults: dict[str, list[dict]] = {name: [] for name in SIGNALS}
        self.spans = 0
        self.memory_spans = 0
        self.services: set[str] = set()
        self.log_records = 0
        self.metric_points = 0

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def add_fault(self, command: dict) -> None:
        signal_name = command["signal"]
        if signal_name not in SIGNALS:
            raise ValueError(f"unknown signal {signal_name!r}")
        fault = {k: v for k, v in command.items() if k not in ("cmd", "signal")}
        fault.setdefault("times", 1)
        with self._lock:
            self.faults[signal_name].append(fault)

    def take_fault(self, signal_name: str, transport: str) -> dict | None:
        """The first fault for this signal that applies to this transport, used up once."""
        with self._lock:
            for fault in self.faults[signal_name]:
                applies = fault.get("transport", transport) == transport and (
                    "partial_rejected" in fault
                    or (transport == "http" and "http_status" in fault)
                    or (transport == "grpc" and "grpc_code" in fault)
                )
                if not applies:
                    continue
                if fault["times"] > 0:
                    fault["times"] -= 1
                    if fault["times"] == 0:
                        self.faults[signal_name].remove(fault)
                return dict(fault)
        return None

    def record(self, transport: str, signal_name: str, headers: dict, answer: str, request=None) -> None:
        count = 0
        with self._lock:
            if request is not None:
                decoded = SIGNALS[signal_name][4](request)
                count = len(decoded)
                if signal_name == "traces":
                    self._count_spans(request)
                    self.content["spans"].extend(decoded)
                elif signal_name == "logs":
                    self.log_records += count
                    self.content["logs"].extend(decoded)
                else:
                    self.metric_points += sum(len(m["points"]) for m in decoded)
                    self.content["metrics"].extend(decoded)
            self.requests.append(
                {
                    "seq": len(self.requests),
                    "t": time.monotonic(),
                    "transport": transport,
                    "signal": signal_name,
                    "headers": headers,
                    "answer": answer,
                    "items": count,
                }
            )

    def _count_spans(self, request) -> None:
        for resource, _, span in items(request, "resource_spans", "scope_spans", "spans"):
            if isinstance(resource.get("service.name"), str):
                self.services.add(resource["service.name"])
            self.spans += 1
            if any(
                a.key.startswith(MEMORY_ATTRIBUTE_PREFIX) and a.value.HasField("int_value") for a in span.attributes
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

    def dump(self) -> dict:
        with self._lock:
            return {"requests": list(self.requests), **{k: list(v) for k, v in self.content.items()}}

    def summary(self) -> str:
        with self._lock:
            return json.dumps(
                {
                    "spans": self.spans,
                    "memory_spans": self.memory_spans,
                    "services": sorted(self.services),
                    "log_records": self.log_records,
                    "metric_points": self.metric_points,
                }
            )


def partial_response(signal_name: str, fault: dict):
    _, response_type, partial_type, field, _ = SIGNALS[signal_name]
    partial = partial_type(error_message=fault.get("message", "rejected by the sink"))
    setattr(partial, field, int(fault["partial_rejected"]))
    return response_type(partial_success=partial)


class GrpcExport:
    """The Export method of one signal's gRPC service."""

    def __init__(self, store: Store, signal_name: str) -> None:
        self._store = store
        self._signal = signal_name

    def Export(self, request, context):  # noqa: N802 (name fixed by the gRPC service)
        headers = {k: v for k, v in context.invocation_metadata() if not k.endswith("-bin")}
        fault = self._store.take_fault(self._signal, "grpc")
        response_type = SIGNALS[self._signal][1]
        if fault and "grpc_code" in fault:
            code = getattr(grpc.StatusCode, fault["grpc_code"])
            self._store.record("grpc", self._signal, headers, fault["grpc_code"])
            message = fault.get("message", f"injected {fault['grpc_code']}")
            if "retry_delay_s" in fault:
                seconds = float(fault["retry_delay_s"])
                detail = any_pb2.Any()
                detail.Pack(
                    error_details_pb2.RetryInfo(
                        retry_delay=duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))
                    )
                )
                status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
                context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            context.abort(code, message)
        self._store.record("grpc", self._signal, headers, "partial" if fault else "ok", request)
        self._store.check_enough()
        return partial_response(self._signal, fault) if fault else response_type()


class TraceService(GrpcExport, trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: Store) -> None:
        GrpcExport.__init__(self, store, "traces")


class LogsService(GrpcExport, logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, store: Store) -> None:
        GrpcExport.__init__(self, store, "logs")


class MetricsService(GrpcExport, metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, store: Store) -> None:
        GrpcExport.__init__(self, store, "metrics")


def make_http_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    paths = {f"/v1/{name}": name for name in SIGNALS}

    class OtlpHttpHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (name fixed by http.server)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            signal_name = paths.get(self.path)
            if signal_name is None:
                self.send_error(404, f"only {sorted(paths)} are served, not {self.path}")
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            content_type = self.headers.get("Content-Type", "")
            if content_type.split(";")[0].strip() != "application/x-protobuf":
                self.send_error(415, f"expected application/x-protobuf, got {content_type!r}")
                return
            encoding = self.headers.get("Content-Encoding", "identity")
            if encoding not in ("identity", "gzip"):
                self.send_error(415, f"unsupported Content-Encoding {encoding!r}")
                return
            request_type = SIGNALS[signal_name][0]
            try:
                if encoding == "gzip":
                    body = gzip.decompress(body)
                request = request_type.FromString(body)
            except (OSError, EOFError, DecodeError) as error:
                self.send_error(400, f"undecodable request: {error}")
                return
            fault = store.take_fault(signal_name, "http")
            if fault and "http_status" in fault:
                status = int(fault["http_status"])
                store.record("http", signal_name, headers, str(status))
                message = fault.get("message", f"injected {status}")
                self.answer(status, status_pb2.Status(code=2, message=message), fault.get("retry_after"))
                return
            store.record("http", signal_name, headers, "partial" if fault else "ok", request)
            response = partial_response(signal_name, fault) if fault else SIGNALS[signal_name][1]()
            self.answer(200, response)
            store.check_enough()

        def answer(self, status: int, message, retry_after: str | None = None) -> None:
            payload = message.SerializeToString()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (signature of http.server)
            """Keeps stdout/stderr for the ready line, the answers, the summary and errors."""

    return OtlpHttpHandler


def serve_control(store: Store, stop: threading.Event, out_lock: threading.Lock) -> None:
    """Reads commands from stdin until it closes, then stops the sink."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            command = json.loads(line)
            name = command.get("cmd")
            if name == "dump":
                answer = {"dump": store.dump()}
            elif name == "fault":
                store.add_fault(command)
                answer = {"ok": True}
            elif name == "clear":
                store.clear()
                answer = {"ok": True}
            elif name == "stop":
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {name!r}"}
        except (ValueError, KeyError, AttributeError) as error:
            answer = {"error": str(error)}
            name = None
        with out_lock:
            print(json.dumps(answer), flush=True)
        if name == "stop":
            break
    stop.set()


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
    parser.add_argument("--control", action="store_true", help="read commands on stdin (see the module doc)")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve TLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = parser.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def main() -> int:
    args = parse_args()
    # Set by a signal, a stop command, stdin closing, or the store once --exit-after-spans spans arrived.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    store = Store(args.exit_after_spans, stop)

    # Without so_reuseport=0, a second sink could silently share a busy port.
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(store), grpc_server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(LogsService(store), grpc_server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsService(store), grpc_server)
    try:
        address = f"{LOOPBACK}:{args.grpc_port}"
        if args.tls_cert:
            with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            grpc_port = grpc_server.add_secure_port(address, credentials)
        else:
            grpc_port = grpc_server.add_insecure_port(address)
        http_server = ThreadingHTTPServer((LOOPBACK, args.http_port), make_http_handler(store))
        if args.tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(args.tls_cert, args.tls_key)
            http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
    except (RuntimeError, OSError) as error:
        print(
            f"otlp_sink: cannot listen on {LOOPBACK} (grpc port {args.grpc_port}, http port {args.http_port}): {error}",
            file=sys.stderr,
        )
        return 1
    grpc_server.start()
    threading.Thread(target=http_server.serve_forever, name="otlp-http", daemon=True).start()
    out_lock = threading.Lock()
    with out_lock:
        print(json.dumps({"ready": {"grpc_port": grpc_port, "http_port": http_server.server_port}}), flush=True)
    if args.control:
        threading.Thread(target=serve_control, args=(store, stop, out_lock), name="control", daemon=True).start()

    timed_out = not stop.wait(args.timeout_s)
    grpc_server.stop(GRPC_STOP_GRACE_S).wait(GRPC_STOP_GRACE_S)
    http_server.shutdown()
    http_server.server_close()
    with out_lock:
        print(store.summary(), flush=True)
    if timed_out and args.exit_after_spans is not None and not store.reached_exit_after_spans():
        print(
            f"otlp_sink: timed out after {args.timeout_s:g} s waiting for {args.exit_after_spans} spans",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
