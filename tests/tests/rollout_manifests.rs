//! The rollout-gate manifests in otel-config/rollouts/ are valid for their controllers and match memdrift's gate
//! API. Argo Rollouts' and Flagger's CRD schemas, pinned in tests/fixtures/crds/, check every custom resource
//! (tests/peers/validate_crds.py, strict about unknown fields as `kubectl apply --validate=strict` is), and
//! broken copies show that the check catches a misspelled field or a wrong type. Then the manifests are read
//! for what memdrift expects: the AnalysisTemplates query `/v1/gate` on the `memdrift` Service's port 8080
//! with the service and both cohorts bound to the Rollout's arguments, read `{$.decision}`, and name only the
//! decisions memdrift gives; the Rollout passes the stable and canary pod-template hashes; the Flagger Canary
//! calls each of the five webhooks at its path with the matching type, and its cohorts are the labels Flagger
//! gives the primary's and the canary's pods.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use memdrift_e2e::repo_root;
use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Value};

const GATE_PORT: u16 = 8080;
const DECISIONS: [&str; 3] = ["continue", "pass", "fail"];
/// The files of otel-config/rollouts/ that hold custom resources.
const CRD_FILES: [&str; 3] = [
    "analysis-template.yaml",
    "rollout.yaml",
    "flagger-canary.yaml",
];

/// Every document of a YAML file, as JSON (what kubectl sends to the API server).
fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let yaml = serde_norway::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
            serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn manifest(file: &str) -> Vec<Value> {
    docs(&repo_root().join("otel-config/rollouts").join(file))
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The string at a JSON pointer.
fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {}", v["metadata"]["name"]))
}

/// An int-or-string field as a number.
fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// A container's environment: name -> the `env` entry.
fn env(container: &Value) -> BTreeMap<&str, &Value> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (s(e, "/name"), e))
        .collect()
}

/// memdrift's gate host in the cluster: the `memdrift` Service of otel-config/k8s/memdrift.yaml, which exposes
/// port 8080 named `gate` to memdrift's pods.
fn gate_host() -> String {
    let docs = docs(&repo_root().join("otel-config/k8s/memdrift.yaml"));
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "memdrift")
        .expect("a Service named memdrift in otel-config/k8s/memdrift.yaml");
    let deployment = by_kind(&docs, "Deployment")[0];
    let pod = &deployment["spec"]["template"];
    let port = svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "gate")
        .expect("a port named gate");
    assert_eq!(port["port"], GATE_PORT);
    let target = match &port["targetPort"] {
        Value::String(name) => pod["spec"]["containers"][0]["ports"]
            .as_array()
            .expect("container ports")
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64()),
        n => n.as_u64(),
    };
    assert_eq!(target, Some(u64::from(GATE_PORT)), "the gate's targetPort");
    for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(pod["metadata"]["labels"].get(k), Some(v), "selector {k}");
    }
    format!(
        "memdrift.{}.svc.cluster.local",
        s(svc, "/metadata/namespace")
    )
}

/// A URL on memdrift's gate port: checks the host and port, returns the path and the query.
fn gate_url(url: &str, host: &str) -> (String, BTreeMap<String, String>) {
    let parsed = Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(parsed.scheme(), "http", "{url}");
    assert_eq!(parsed.host_str(), Some(host), "{url}: memdrift's Service");
    assert_eq!(parsed.port_or_known_default(), Some(GATE_PORT), "{url}");
    let query = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.replace(' ', "")))
        .collect();
    (parsed.path().to_string(), query)
}

/// The decisions a condition accepts; each term must be `result == "<decision>"`, joined by `||`.
fn decisions(condition: &str) -> BTreeSet<&str> {
    condition
        .split("||")
        .map(|term| {
            let decision = term
                .trim()
                .strip_prefix("result")
                .and_then(|t| t.trim_start().strip_prefix("=="))
                .and_then(|t| t.trim().strip_prefix('"'))
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or_else(|| {
                    panic!("{condition:?}: each term must read result == \"<decision>\"")
                });
            assert!(
                DECISIONS.contains(&decision),
                "{condition:?}: memdrift's decisions are {DECISIONS:?}"
            );
            decision
        })
        .collect()
}

// --- the pinned CRD schemas -------------------------------------------------------------------------------

/// The peers' Python, when it has jsonschema. Missing: `None` with a note (the test skips), unless `CI=true`,
/// where scripts/test-env.sh must have installed tests/peers/requirements.txt.
fn python_with_jsonschema() -> Option<PathBuf> {
    let python = repo_root().join(".venv/bin/python");
    let found = python.is_file()
        && Command::new(&python)
            .args(["-c", "import jsonschema"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} has no jsonschema; scripts/test-env.sh installs tests/peers/requirements.txt",
            python.display()
        );
        eprintln!("skipping: .venv has no jsonschema (scripts/test-env.sh installs it)");
        return None;
    }
    Some(python)
}

/// A fresh temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("memdrift-rollouts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// Writes `docs` as a JSON array to the file `name`, and returns its path.
    fn write(&self, name: &str, docs: &[Value]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(docs).expect("JSON")).expect("write");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs tests/peers/validate_crds.py on `files`: its exit code and its output.
fn validate(python: &Path, files: &[PathBuf]) -> (Option<i32>, String) {
    let out = Command::new(python)
        .arg(repo_root().join("tests/peers/validate_crds.py"))
        .args(files)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn the_pinned_crd_schemas_accept_the_manifests() {
    let Some(python) = python_with_jsonschema() else {
        return;
    };
    let dir = TempDir::new("valid");
    let mut files = Vec::new();
    let mut expected = Vec::new();
    for file in CRD_FILES {
        let docs = manifest(file);
        let path = dir.write(&format!("{file}.json"), &docs);
        for (i, doc) in docs.iter().enumerate() {
            let api = s(doc, "/apiVersion");
            if api.starts_with("argoproj.io/") || api.starts_with("flagger.app/") {
                expected.push(format!(
                    "{}#{} {api} {} {}",
                    path.display(),
                    i + 1,
                    s(doc, "/kind"),
                    s(doc, "/metadata/name")
                ));
            }
        }
        files.push(path);
    }
    assert_eq!(expected.len(), 4, "{expected:#?}");

    let (code, out) = validate(&python, &files);
    assert_eq!(code, Some(0), "{out}");
    // Every custom resource was checked against its schema, none skipped.
    for line in &expected {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok ") && l.ends_with(line.as_str())),
            "not validated: {line}\n{out}"
        );
    }
}

/// Renames a field of the object at `pointer`.
fn rename(doc: &mut Value, pointer: &str, from: &str, to: &str) {
    let object = doc
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {pointer}"));
    let value = object
        .remove(from)
        .unwrap_or_else(|| panic!("no {from} at {pointer}"));
    object.insert(to.to_string(), value);
}

/// Replaces the value at `pointer`.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    *doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}")) = value;
}

/// A copy of a manifest with one change, and what the validator must say about it.
struct Broken {
    file: &'static str,
    /// The document's index in the file.
    doc: usize,
    change: fn(&mut Value),
    /// `path: message` of the error.
    says: &'static str,
}

#[test]
fn the_validator_catches_misspelled_fields_and_wrong_types() {
    let Some(python) = python_with_jsonschema() else {
        return;
    };
    let cases = [
        Broken {
            file: "analysis-template.yaml",
            doc: 0,
            change: |d| rename(d, "/spec/metrics/0", "successCondition", "successCondtion"),
            says: r#"spec.metrics[0].successCondtion: unknown field "successCondtion""#,
        },
        Broken {
            file: "analysis-template.yaml",
            doc: 0,
            change: |d| rename(d, "/spec/metrics/0/provider/web", "jsonPath", "jsonpath"),
            says: r#"spec.metrics[0].provider.web.jsonpath: unknown field "jsonpath""#,
        },
        Broken {
            file: "analysis-template.yaml",
            doc: 1,
            change: |d| set(d, "/spec/metrics/0/interval", json!(60)),
            says: "spec.metrics[0].interval: 60 is not of type 'string'",
        },
        Broken {
            file: "analysis-template.yaml",
            doc: 1,
            change: |d| {
                d["metadata"]
                    .as_object_mut()
                    .expect("metadata")
                    .remove("name");
            },
            says: "metadata.name: required field is missing",
        },
        Broken {
            file: "rollout.yaml",
            doc: 0,
            change: |d| {
                rename(
                    d,
                    "/spec/strategy/canary/analysis/args/1/valueFrom",
                    "podTemplateHashValue",
                    "podTemplateHash",
                )
            },
            says: r#"spec.strategy.canary.analysis.args[1].valueFrom.podTemplateHash: unknown field "podTemplateHash""#,
        },
        Broken {
            file: "rollout.yaml",
            doc: 0,
            change: |d| set(d, "/spec/strategy/canary/steps/0/setWeight", json!("10")),
            says: "spec.strategy.canary.steps[0].setWeight: '10' is not of type 'integer'",
        },
        Broken {
            file: "flagger-canary.yaml",
            doc: 1,
            change: |d| set(d, "/spec/analysis/webhooks/0/type", json!("pre_rollout")),
            says: "spec.analysis.webhooks[0].type: 'pre_rollout' is not one of",
        },
        Broken {
            file: "flagger-canary.yaml",
            doc: 1,
            change: |d| rename(d, "/spec/analysis/webhooks/2", "url", "URL"),
            says: r#"spec.analysis.webhooks[2].URL: unknown field "URL""#,
        },
    ];
    let dir = TempDir::new("broken");
    let mut files = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut docs = manifest(case.file);
        (case.change)(&mut docs[case.doc]);
        files.push(dir.write(&format!("case{i}-{}.json", case.file), &docs));
    }
    // Integers given as strings where the schema says x-kubernetes-int-or-string are valid.
    let mut docs = manifest("analysis-template.yaml");
    set(&mut docs[1], "/spec/metrics/0/failureLimit", json!("0"));
    set(&mut docs[1], "/spec/metrics/0/count", json!("30"));
    let int_or_string = dir.write("int-or-string.json", &docs);
    files.push(int_or_string.clone());

    let (code, out) = validate(&python, &files);
    assert_eq!(code, Some(1), "{out}");
    for (case, file) in cases.iter().zip(&files) {
        let prefix = format!("error {}#{} ", file.display(), case.doc + 1);
        assert!(
            out.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(case.says)),
            "{}: expected an error {:?}\n{out}",
            file.display(),
            case.says
        );
    }
    for i in [1, 2] {
        let ok = format!("ok    {}#{i} ", int_or_string.display());
        assert!(out.lines().any(|l| l.starts_with(&ok)), "{ok}\n{out}");
    }
}

// --- the gate contract ------------------------------------------------------------------------------------

#[test]
fn analysis_templates_query_the_gate_with_the_rollouts_cohorts() {
    let host = gate_host();
    let docs = manifest("analysis-template.yaml");
    let mut conditions = BTreeMap::new();
    for template in by_kind(&docs, "AnalysisTemplate") {
        let name = s(template, "/metadata/name");
        let args: BTreeSet<&str> = template["spec"]["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| s(a, "/name"))
            .collect();
        assert_eq!(
            args,
            BTreeSet::from(["service-name", "stable-hash", "canary-hash"]),
            "{name}"
        );
        let metrics = template["spec"]["metrics"].as_array().expect("metrics");
        assert_eq!(metrics.len(), 1, "{name}: one metric");
        let metric = &metrics[0];
        let web = &metric["provider"]["web"];
        let (path, query) = gate_url(s(web, "/url"), &host);
        assert_eq!(path, "/v1/gate", "{name}");
        let bound: BTreeMap<String, String> = [
            ("service", "{{args.service-name}}"),
            ("baseline", "{{args.stable-hash}}"),
            ("canary", "{{args.canary-hash}}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(query, bound, "{name}: the query binds the arguments");
        assert!(
            web.get("method").is_none_or(|m| *m == "GET"),
            "{name}: GET /v1/gate"
        );
        assert_eq!(s(web, "/jsonPath"), "{$.decision}", "{name}");
        // A memdrift outage has an explicit budget (see the file's comments).
        assert!(
            int(&metric["consecutiveErrorLimit"]).is_some_and(|n| n > 0),
            "{name}: consecutiveErrorLimit"
        );
        conditions.insert(
            name,
            (
                decisions(s(metric, "/successCondition")),
                decisions(s(metric, "/failureCondition")),
                metric,
            ),
        );
    }

    // Background: continue and pass go on, fail aborts at once; it runs until the rollout ends.
    let (success, failure, metric) = &conditions["memdrift-gate-background"];
    assert_eq!(*success, BTreeSet::from(["continue", "pass"]));
    assert_eq!(*failure, BTreeSet::from(["fail"]));
    assert_eq!(int(&metric["failureLimit"]), Some(0));
    assert!(
        metric.get("count").is_none(),
        "the background run has no count"
    );

    // Promotion: only pass succeeds (on the first one); continue is inconclusive, tolerated until the count.
    let (success, failure, metric) = &conditions["memdrift-gate-promotion"];
    assert_eq!(*success, BTreeSet::from(["pass"]));
    assert_eq!(*failure, BTreeSet::from(["fail"]));
    assert_eq!(int(&metric["failureLimit"]), Some(0));
    assert_eq!(int(&metric["consecutiveSuccessLimit"]), Some(1));
    let count = int(&metric["count"]).expect("count");
    let inconclusive = int(&metric["inconclusiveLimit"]).expect("inconclusiveLimit");
    assert!(
        0 < inconclusive && inconclusive < count,
        "inconclusiveLimit {inconclusive} below count {count}: `continue` waits, but not for ever"
    );
}

/// The arguments of one of the Rollout's analyses: the template, and the service and both hashes.
fn check_rollout_analysis(analysis: &Value, template: &str, service: &str) {
    let templates: Vec<&str> = analysis["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| s(t, "/templateName"))
        .collect();
    assert_eq!(templates, [template]);
    let args: BTreeMap<&str, &Value> = analysis["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| (s(a, "/name"), a))
        .collect();
    assert_eq!(
        args.keys().copied().collect::<Vec<_>>(),
        ["canary-hash", "service-name", "stable-hash"],
        "{template}"
    );
    assert_eq!(s(args["service-name"], "/value"), service, "{template}");
    for (arg, hash) in [("stable-hash", "Stable"), ("canary-hash", "Latest")] {
        assert_eq!(
            s(args[arg], "/valueFrom/podTemplateHashValue"),
            hash,
            "{template}: {arg}"
        );
    }
}

#[test]
fn the_rollout_gates_its_canary_on_the_pod_template_hashes() {
    let templates: BTreeSet<String> =
        by_kind(&manifest("analysis-template.yaml"), "AnalysisTemplate")
            .iter()
            .map(|t| s(t, "/metadata/name").to_string())
            .collect();
    let docs = manifest("rollout.yaml");
    let rollout = by_kind(&docs, "Rollout")[0];
    let container = &rollout["spec"]["template"]["spec"]["containers"][0];
    let env = env(container);
    let service = s(env["OTEL_SERVICE_NAME"], "/value");
    assert!(
        s(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "/value").starts_with("http://otel-collector."),
        "the pods send to the Collector"
    );
    // The pods' cohort is their pod-template hash, the value Argo passes as Stable / Latest.
    assert_eq!(
        s(env["MEMSPAN_COHORT"], "/valueFrom/fieldRef/fieldPath"),
        "metadata.labels['rollouts-pod-template-hash']"
    );

    let canary = &rollout["spec"]["strategy"]["canary"];
    check_rollout_analysis(&canary["analysis"], "memdrift-gate-background", service);
    let steps = canary["steps"].as_array().expect("steps");
    let last = steps.last().expect("steps");
    check_rollout_analysis(&last["analysis"], "memdrift-gate-promotion", service);
    for used in ["memdrift-gate-background", "memdrift-gate-promotion"] {
        assert!(
            templates.contains(used),
            "{used} is in analysis-template.yaml"
        );
    }
}

/// A Flagger duration ("5s", "1m") in seconds.
fn seconds(duration: &str) -> u64 {
    let (n, unit) = duration.split_at(duration.len() - 1);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("duration {duration:?}"));
    match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => panic!("duration {duration:?}"),
    }
}

#[test]
fn the_flagger_canary_calls_the_five_webhooks_with_its_cohorts() {
    let host = gate_host();
    let docs = manifest("flagger-canary.yaml");
    let canary = by_kind(&docs, "Canary")[0];
    let name = s(canary, "/metadata/name");
    let target = s(canary, "/spec/targetRef/name");
    let deployment = by_kind(&docs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == target)
        .expect("the target Deployment");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let env = env(container);

    let mut types = BTreeSet::new();
    let mut timeouts = 0;
    for hook in canary["spec"]["analysis"]["webhooks"]
        .as_array()
        .expect("webhooks")
    {
        let kind = s(hook, "/type");
        let (path, query) = gate_url(s(hook, "/url"), &host);
        assert_eq!(path, format!("/v1/flagger/{kind}"), "the {kind} webhook");
        assert!(query.is_empty(), "{kind}: the payload says it all");
        assert!(types.insert(kind), "two {kind} webhooks");
        timeouts += seconds(s(hook, "/timeout"));

        // memdrift's mapping of the payload, with this webhook's metadata.
        let meta = &hook["metadata"];
        let or = |key: &str, default: String| {
            meta.get(key)
                .and_then(Value::as_str)
                .map_or(default, String::from)
        };
        let service = or("service", name.to_string());
        let baseline = or("baseline", format!("{name}-primary"));
        let canary_cohort = or("canary", name.to_string());
        assert_eq!(service, s(env["OTEL_SERVICE_NAME"], "/value"), "{kind}");
        // Flagger's canary pods keep the target's `app` label; the primary's carry `<app>-primary`.
        let app = s(pod, "/metadata/labels/app");
        assert_eq!(canary_cohort, app, "{kind}: the canary pods' app label");
        assert_eq!(
            baseline,
            format!("{app}-primary"),
            "{kind}: the primary pods' app label"
        );
    }
    assert_eq!(
        types,
        BTreeSet::from([
            "pre-rollout",
            "rollout",
            "confirm-promotion",
            "rollback",
            "event"
        ])
    );
    assert!(
        timeouts < seconds(s(canary, "/spec/analysis/interval")),
        "the webhooks' timeouts ({timeouts}s) fit in one analysis interval"
    );
    assert_eq!(
        s(env["MEMSPAN_COHORT"], "/valueFrom/fieldRef/fieldPath"),
        "metadata.labels['app']",
        "the pods' cohort is their app label"
    );
}
