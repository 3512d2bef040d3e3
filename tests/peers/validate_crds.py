"""Validates Kubernetes custom resources against pinned CRD schemas, offline.

Each document of the given files is checked against the OpenAPI v3 schema of
its CRD, chosen by apiVersion and kind from the pinned copies in
tests/fixtures/crds/ (see the README there for where each comes from):

  .venv/bin/python tests/peers/validate_crds.py otel-config/rollouts/*.yaml

The schema is read the way a Kubernetes API server reads a structural schema
when a client asks for strict field validation (kubectl apply
--validate=strict), so that a typo is an error rather than a field silently
dropped:

  - an object schema with `properties` rejects any other field, unless it says
    `x-kubernetes-preserve-unknown-fields: true` or gives
    `additionalProperties`;
  - `x-kubernetes-int-or-string: true` accepts an integer or a string;
  - `nullable: true` also accepts null;
  - `x-kubernetes-embedded-resource: true` objects may carry apiVersion, kind
    and metadata;
  - the top-level `metadata` must have a `name` and only ObjectMeta's fields.

Not evaluated: CEL rules (`x-kubernetes-validations`), `format`, and the
uniqueness of list-map keys; the controllers' own admission checks (an
AnalysisTemplate's argument names, for example) are not either.

Files: YAML (one or more `---` separated documents; reading YAML needs the
PyYAML package), or JSON (`*.json`: one document, or an array of documents).
Documents of a kind without a pinned schema (a plain Service, say) are listed
as skipped.

Output, one line per document and per error:

  ok    FILE#1 argoproj.io/v1alpha1 AnalysisTemplate memdrift-gate
  skip  FILE#2 v1 Service web (no pinned schema)
  error FILE#1 AnalysisTemplate memdrift-gate: spec.metrics[0].successCondtion: unknown field "successCondtion"

Exit status: 0 when every document is valid, 1 when any is not, 2 when a file
or the schemas cannot be read.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import jsonschema

DEFAULT_SCHEMAS = Path(__file__).resolve().parent.parent / "fixtures" / "crds"

# The fields of a top-level ObjectMeta a manifest may set (the rest is written
# by the API server, and accepted in case a manifest was exported from one).
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "selfLink": {"type": "string"},
    },
    "additionalProperties": False,
}

# Keys of a Kubernetes schema that are documentation or server behaviour, not
# validation.
DROPPED = {"description", "default", "example", "format", "nullable", "externalDocs"}


def die(message):
    """Ends with status 2: the input or the schemas could not be read."""
    print(message, file=sys.stderr)
    sys.exit(2)


def structural(node):
    """A Kubernetes structural schema as a JSON Schema with strict fields."""
    if isinstance(node, list):
        return [structural(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: structural(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = structural(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [structural(s) for s in value]
        elif key in DROPPED or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value

    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
        # Often spelled out as well; one type error says it all.
        branches = out.get("anyOf", [])
        if branches and all(b in ({"type": "integer"}, {"type": "string"}) for b in branches):
            del out["anyOf"]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
    return out


def load_schemas(directory):
    """{(apiVersion, kind): validator} from the pinned *.json files."""
    validators = {}
    for path in sorted(Path(directory).glob("*.json")):
        pinned = json.loads(path.read_text())
        schema = structural(pinned["openAPIV3Schema"])
        schema.setdefault("properties", {})["metadata"] = OBJECT_META
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
        jsonschema.Draft4Validator.check_schema(schema)
        validators[(pinned["apiVersion"], pinned["kind"])] = jsonschema.Draft4Validator(schema)
    if not validators:
        die(f"no pinned schemas (*.json) in {directory}")
    return validators


def read_documents(path):
    """The documents of a YAML or JSON file, empty YAML documents left out."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    if path == "-" or path.endswith(".json"):
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    try:
        import yaml
    except ImportError:
        die(f"{path}: reading YAML needs PyYAML (.venv/bin/pip install pyyaml), or give the documents as JSON")
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        die(f"{path}: not YAML: {e}")


def json_path(parts):
    """spec.metrics[0].provider from ["spec", "metrics", 0, "provider"]."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def messages(error):
    """(path, message) pairs for one validation error, unknown fields one by one."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extras = [
            k
            for k in error.instance
            if k not in known and not any(re.search(p, k) for p in patterns)
        ]
        return [(json_path(path + [k]), f'unknown field "{k}"') for k in extras]
    if error.validator == "required":
        missing = re.match(r"'(.*)' is a required property", error.message)
        if missing:
            return [(json_path(path + [missing.group(1)]), "required field is missing")]
    return [(json_path(path), error.message)]


def validate(files, validators):
    errors = 0
    for name in files:
        try:
            documents = read_documents(name)
        except (OSError, ValueError) as e:
            die(f"{name}: {e}")
        for i, doc in enumerate(documents, start=1):
            where = f"{name}#{i}"
            if not isinstance(doc, dict):
                print(f"error {where}: not an object")
                errors += 1
                continue
            api, kind = doc.get("apiVersion"), doc.get("kind")
            meta = doc.get("metadata")
            obj = meta.get("name") if isinstance(meta, dict) and meta.get("name") else "(no name)"
            if not api or not kind:
                print(f"skip  {where} (not a Kubernetes object: no apiVersion and kind)")
                continue
            validator = validators.get((api, kind))
            if validator is None:
                print(f"skip  {where} {api} {kind} {obj} (no pinned schema)")
                continue
            found = sorted(
                (m for e in validator.iter_errors(doc) for m in messages(e)),
                key=lambda pm: pm[0],
            )
            for path, message in found:
                print(f"error {where} {kind} {obj}: {path}: {message}")
            errors += len(found)
            if not found:
                print(f"ok    {where} {api} {kind} {obj}")
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="YAML or JSON files; - reads JSON from stdin")
    parser.add_argument(
        "--schemas",
        default=str(DEFAULT_SCHEMAS),
        help="directory of pinned CRD schemas (default: tests/fixtures/crds)",
    )
    args = parser.parse_args()
    validators = load_schemas(args.schemas)
    errors = validate(args.files, validators)
    if errors:
        print(f"{errors} error(s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
