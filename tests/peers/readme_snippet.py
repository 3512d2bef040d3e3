"""Runs the Python snippet of README.md ("Services in other languages") as a service would.

The snippet is read from between the README's `memspan-python` markers and executed as it stands, so the test
checks what a reader copies, not a second copy of it. With --protocol http the exporter import is switched to
the HTTP/protobuf exporter, the one-line change the README names. Endpoint, service name, resource and cohort
come from the standard environment (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
MEMSPAN_COHORT), exactly as in a service. Prints "ran N requests" after a clean shutdown.
"""

import argparse
import re
import sys
import tracemalloc
from pathlib import Path

GRPC_IMPORT = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
HTTP_IMPORT = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def snippet(readme: Path, protocol: str) -> str:
    text = readme.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- memspan-python:start -->\s*```python\n(.*?)```\s*<!-- memspan-python:end -->", text, re.S
    )
    if found is None:
        sys.exit(f"{readme}: no ```python block between the memspan-python markers")
    code = found.group(1)
    if protocol == "http":
        if GRPC_IMPORT not in code:
            sys.exit(f"{readme}: the snippet no longer imports {GRPC_IMPORT}")
        code = code.replace(GRPC_IMPORT, HTTP_IMPORT)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readme", type=Path, required=True)
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    tracemalloc.start()
    scope: dict = {}
    exec(compile(snippet(args.readme, args.protocol), "README.md (memspan-python)", "exec"), scope)
    memory_span = scope["memory_span"]
    kept = []
    for i in range(args.requests):
        with memory_span("chat", "tiny-model"):
            # Request work whose size varies, some of it kept (the heap grows a little).
            scratch = bytearray(4096 * (1 + i % 9))
            kept.append(scratch[:64])
    provider = scope["provider"]
    if not provider.force_flush(10_000):
        sys.exit("the span processor did not flush within 10 s")
    provider.shutdown()
    print(f"ran {args.requests} requests")


if __name__ == "__main__":
    main()
