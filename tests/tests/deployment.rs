//! The deployment files in otel-config/ hold together: promtool accepts the alert rules and their unit tests
//! pass; every metric a rule, dashboard, Grafana alert or autoscaler reads is one memdrift really exposes; the
//! Collector configs wire every pipeline to components they define and shard by service.name; the compose
//! stack, the Kubernetes manifests and the Grafana provisioning refer to each other consistently; and the
//! ConfigMap's pipeline is one memdrift accepts. No docker or kubectl runs here: the shapes are checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use memdrift::config::Pipeline;
use memdrift::topology::Service;
use memdrift_e2e::{int, metric_value, repo_root, request, resource, scrape_until, span, string};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::Deserialize;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

fn otel_config() -> PathBuf {
    repo_root().join("otel-config")
}

fn read(rel: &str) -> String {
    let path = otel_config().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One YAML document, with `<<` merge keys applied (compose uses them).
fn yaml(rel: &str) -> Yaml {
    let mut v: Yaml =
        serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    v.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
    v
}

/// Every document of a multi-document YAML file (Kubernetes manifests).
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}")))
        .collect()
}

fn json(rel: &str) -> Json {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

/// The string at `path` (keys, or indices for sequences) in a YAML value.
fn ystr<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    ynode(v, path)?.as_str()
}

fn ynode<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter()
        .try_fold(v, |node, key| match key.parse::<usize>() {
            Ok(i) if node.is_sequence() => node.get(i),
            _ => node.get(*key),
        })
}

fn ykeys(v: &Yaml) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn ylist(v: Option<&Yaml>) -> Vec<String> {
    v.and_then(Yaml::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// --- promtool ---------------------------------------------------------------------------------------------

fn promtool(dir: &Path, args: &[&str]) {
    let Some(promtool) = memdrift_e2e::external_tool("promtool") else {
        return;
    };
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_their_unit_tests_and_the_scrape_config() {
    let dir = otel_config().join("prometheus");
    promtool(&dir, &["check", "rules", "alerts.yaml"]);
    promtool(&dir, &["test", "rules", "alerts_test.yaml"]);
    promtool(&dir, &["check", "config", "prometheus.yml"]);

    // Every alert has a severity and says what to do; every alert is exercised by a unit test.
    let rules = yaml("prometheus/alerts.yaml");
    let tests = read("prometheus/alerts_test.yaml");
    let mut alerts = 0;
    for group in ynode(&rules, &["groups"])
        .and_then(Yaml::as_sequence)
        .expect("groups")
    {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = ystr(rule, &["alert"]).expect("alerting rules only");
            alerts += 1;
            assert!(
                matches!(
                    ystr(rule, &["labels", "severity"]),
                    Some("critical" | "warning" | "info")
                ),
                "{name}: severity"
            );
            for key in ["summary", "description", "runbook"] {
                assert!(
                    ystr(rule, &["annotations", key]).is_some_and(|s| s.len() > 20),
                    "{name}: annotation {key}"
                );
            }
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "{name} has no promtool unit test"
            );
        }
    }
    assert!(alerts >= 8, "{alerts} alerts");
    let leak = read("prometheus/alerts.yaml");
    assert!(
        leak.contains("scaling out does not fix a leak"),
        "the leak runbook says scaling is not the fix"
    );
}

// --- metric names -----------------------------------------------------------------------------------------

/// `memdrift_*` and `process_*` names in a PromQL expression (or any text).
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if token.starts_with("memdrift_") || token.starts_with("process_") {
            into.insert(token.to_string());
        }
    }
}

/// Every string in a JSON document under a key named `expr`, `query` or `definition`.
fn json_queries(v: &Json, into: &mut BTreeSet<String>) {
    match v {
        Json::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Json::String(s)) => metric_names(s, into),
                    _ => json_queries(x, into),
                }
            }
        }
        Json::Array(a) => a.iter().for_each(|x| json_queries(x, into)),
        _ => {}
    }
}

/// The metric names read by each deployment file, by file.
fn names_used() -> BTreeMap<&'static str, BTreeSet<String>> {
    let mut used = BTreeMap::new();

    let mut rules = BTreeSet::new();
    let alerts = yaml("prometheus/alerts.yaml");
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            metric_names(ystr(rule, &["expr"]).expect("expr"), &mut rules);
            // The OOM description queries the growth rate.
            metric_names(
                ystr(rule, &["annotations", "description"]).unwrap_or(""),
                &mut rules,
            );
        }
    }
    used.insert("prometheus/alerts.yaml", rules);

    for file in ["grafana/memdrift-dashboard.json", "grafana/alerts.json"] {
        let mut names = BTreeSet::new();
        json_queries(&json(file), &mut names);
        used.insert(file, names);
    }

    let mut keda = BTreeSet::new();
    for doc in yaml_docs("k8s/keda-scaledobject.yaml") {
        for trigger in doc["spec"]["triggers"].as_sequence().expect("triggers") {
            metric_names(
                ystr(trigger, &["metadata", "query"]).expect("query"),
                &mut keda,
            );
        }
    }
    used.insert("k8s/keda-scaledobject.yaml", keda);

    let mut hpa = BTreeSet::new();
    for doc in yaml_docs("k8s/hpa.yaml") {
        for metric in doc["spec"]["metrics"].as_sequence().expect("metrics") {
            metric_names(
                ystr(metric, &["external", "metric", "name"]).expect("name"),
                &mut hpa,
            );
        }
    }
    used.insert("k8s/hpa.yaml", hpa);
    used
}

const S: u64 = 1_000_000_000;

/// A pipeline on loopback ports whose detectors give gauges within minutes of event time, with an OTLP
/// exporter (towards nobody) so the exporter's metrics are exposed too.
fn pipeline(jsonl: &Path) -> Pipeline {
    let nobody = memdrift_e2e::sink::free_port();
    let text = format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc: {{ endpoint: 127.0.0.1:0 }}\n\
         processors:\n  extract: {{}}\n  windows: {{ size: 60s, step: 10s, allowed_lateness: 5s, idle_timeout: 30m }}\n\
         \x20 spread_drift: {{ signals: [memspan.request.allocated] }}\n\
         \x20 growth: {{ warmup: 1m, lookback: 10m, recent: 2m, envelope: 30s }}\n\
         \x20 leak: {{}}\n\
         exporters:\n  jsonl: {{ path: \"{}\" }}\n  prometheus: {{ endpoint: 127.0.0.1:0 }}\n\
         \x20 otlp: {{ endpoint: \"http://127.0.0.1:{nobody}\", protocol: grpc, shutdown_timeout: 100ms }}\n\
         service:\n  pipelines:\n    memory: {{ receivers: [otlp], processors: [extract, windows, spread_drift, growth, leak], exporters: [jsonl, prometheus, otlp] }}\n",
        jsonl.display()
    );
    Pipeline::parse_with_env("deployment-test.yaml", &text, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Fifteen minutes of event time, ending now: a baseline and a wider canary of one service, every instance's
/// RSS climbing 1 MB/s towards a 4 GiB limit, so the window, spread and growth gauges all exist.
async fn drive(grpc: &str) {
    let mut client = TraceServiceClient::connect(grpc.to_string())
        .await
        .expect("connects");
    let mut rng = StdRng::seed_from_u64(7);
    let baseline = Normal::new(50e6, 2e6).expect("valid");
    let canary = Normal::new(50e6, 8e6).expect("valid");
    let end = memdrift_e2e::now_unix_nano() - S;
    let start = end - 900 * S;
    let instances = [
        ("1.4.2", "b-1"),
        ("1.4.2", "b-2"),
        ("1.5.0", "c-1"),
        ("1.5.0", "c-2"),
    ];
    let mut n = 0u64;
    for chunk in 0..90u64 {
        for (version, instance) in instances {
            let spans = (0..10u64)
                .map(|i| {
                    let second = chunk * 10 + i;
                    let allocated: f64 = if version == "1.5.0" {
                        canary.sample(&mut rng)
                    } else {
                        baseline.sample(&mut rng)
                    };
                    let rss = 1_000_000_000 + second as i64 * 1_000_000;
                    n += 1;
                    span(
                        n,
                        start + second * S,
                        vec![
                            int("memspan.request.allocated", allocated.max(0.0) as i64),
                            int("memspan.rss.end", rss),
                            int("memspan.limit", 4 << 30),
                            string("gen_ai.operation.name", "chat"),
                        ],
                    )
                })
                .collect();
            client
                .export(request(resource("llm", version, instance), spans))
                .await
                .expect("export accepted");
        }
    }
}

fn exposed_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_deployment_reads_is_one_memdrift_exposes() {
    let used = names_used();
    let all: BTreeSet<&String> = used.values().flatten().collect();
    for expected in [
        "memdrift_time_to_limit_seconds",
        "memdrift_growth_bytes_per_second",
        "memdrift_spread_sd_ratio",
        "memdrift_spread_p_value",
        "memdrift_anomalies_total",
    ] {
        assert!(
            all.iter().any(|n| *n == expected),
            "{expected} is read by none of {used:?}"
        );
    }

    let dir = std::env::temp_dir().join(format!("memdrift-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let service = Service::start(pipeline(&dir.join("anomalies.jsonl")))
        .await
        .expect("service starts");
    let grpc = format!("http://{}", service.grpc_addr.expect("grpc bound"));
    let prom = service.prometheus_addr.expect("prometheus bound");
    drive(&grpc).await;

    // The detectors publish their gauges as windows close; wait until every name read is there.
    let text = scrape_until(prom, Duration::from_secs(30), |text| {
        let exposed = exposed_names(text);
        let missing: Vec<_> = used
            .iter()
            .flat_map(|(file, names)| {
                names
                    .iter()
                    .filter(|n| !exposed.contains(*n))
                    .map(move |n| format!("{n} (read by {file})"))
            })
            .collect();
        match missing.is_empty() {
            true => Ok(()),
            false => Err(format!("not exposed by memdrift: {missing:?}")),
        }
    })
    .await;
    // The real gauges meet the spread alert's condition for a canary four times wider.
    let pair =
        "baseline=\"1.4.2\",canary=\"1.5.0\",service=\"llm\",signal=\"memspan.request.allocated\"";
    let ratio = metric_value(&text, &format!("memdrift_spread_sd_ratio{{{pair}}}"));
    let p = metric_value(&text, &format!("memdrift_spread_p_value{{{pair}}}"));
    assert!(
        ratio.is_some_and(|r| r > 1.25) && p.is_some_and(|p| p < 0.01),
        "sd ratio {ratio:?}, p {p:?}\n{text}"
    );
    service.shutdown().await.expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

// --- Collector --------------------------------------------------------------------------------------------

/// Every pipeline names only receivers, processors and exporters the file defines; returns the pipelines.
fn check_collector(rel: &str) -> Yaml {
    let config = yaml(rel);
    let pipelines = ynode(&config, &["service", "pipelines"])
        .unwrap_or_else(|| panic!("{rel}: service.pipelines"));
    for (name, p) in pipelines.as_mapping().expect("pipelines map") {
        let name = name.as_str().expect("pipeline name");
        let signal = name.split('/').next().unwrap_or(name);
        assert!(
            matches!(signal, "traces" | "metrics" | "logs"),
            "{rel}: pipeline {name}"
        );
        for kind in ["receivers", "processors", "exporters"] {
            let defined = ykeys(&config[kind]);
            for component in ylist(p.get(kind)) {
                assert!(
                    defined.contains(&component),
                    "{rel}: pipeline {name} uses {kind} {component}, which is not defined"
                );
            }
        }
        assert!(
            !ylist(p.get("receivers")).is_empty() && !ylist(p.get("exporters")).is_empty(),
            "{rel}: {name}"
        );
    }
    config
}

/// The pipelines (by name) that use `component` as a `kind`.
fn pipelines_using(config: &Yaml, kind: &str, component: &str) -> BTreeSet<String> {
    config["service"]["pipelines"]
        .as_mapping()
        .expect("pipelines")
        .iter()
        .filter(|(_, p)| ylist(p.get(kind)).iter().any(|c| c == component))
        .filter_map(|(n, _)| n.as_str().map(String::from))
        .collect()
}

#[test]
fn collector_configs_wire_their_pipelines_and_shard_by_service() {
    let single = check_collector("collector.yaml");
    assert!(pipelines_using(&single, "exporters", "otlp/memdrift").len() >= 2);

    let front = check_collector("collector-loadbalancing.yaml");
    let lb = &front["exporters"]["loadbalancing/memdrift"];
    assert_eq!(ystr(lb, &["routing_key"]), Some("service"));
    assert!(
        ynode(lb, &["protocol", "otlp"]).is_some_and(|o| o.get("endpoint").is_none()),
        "the resolver fills in the endpoint"
    );
    let hosts = ylist(ynode(lb, &["resolver", "static", "hostnames"]));
    assert!(hosts.len() >= 2, "{hosts:?}");
    let signals: BTreeSet<_> = pipelines_using(&front, "exporters", "loadbalancing/memdrift")
        .iter()
        .map(|p| p.split('/').next().unwrap_or(p).to_string())
        .collect();
    assert_eq!(
        signals,
        BTreeSet::from(["metrics".to_string(), "traces".to_string()])
    );

    // The return path: memdrift sends logs, spans and metrics; a signal without a pipeline is refused.
    let back: BTreeSet<_> = pipelines_using(&front, "receivers", "otlp/memdrift")
        .iter()
        .map(|p| p.split('/').next().unwrap_or(p).to_string())
        .collect();
    assert_eq!(back.len(), 3, "return pipelines: {back:?}");
    // ... and none of it is fanned out to memdrift again.
    for p in pipelines_using(&front, "receivers", "otlp/memdrift") {
        assert!(!pipelines_using(&front, "exporters", "loadbalancing/memdrift").contains(&p));
    }
}

// --- compose ----------------------------------------------------------------------------------------------

#[test]
fn compose_stack_matches_the_collector_and_prometheus() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];
    for s in [
        "otel-collector",
        "prometheus",
        "grafana",
        "jaeger",
        "memdrift-0",
        "memdrift-1",
    ] {
        assert!(services.get(s).is_some(), "compose service {s}");
    }
    // Every bind mount's source exists beside compose.yaml.
    for (name, s) in services.as_mapping().expect("services") {
        for volume in ylist(s.get("volumes")) {
            let source = volume.split(':').next().unwrap_or("");
            if let Some(rel) = source.strip_prefix("./") {
                assert!(
                    otel_config().join(rel).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            }
        }
    }
    // memdrift is built from the repository with otel-config/Dockerfile.
    let memdrift: Vec<_> = services
        .as_mapping()
        .expect("services")
        .iter()
        .filter(|(_, s)| ystr(s, &["build", "dockerfile"]).is_some())
        .map(|(n, s)| (n.as_str().unwrap_or("").to_string(), s))
        .collect();
    assert!(memdrift.len() >= 2);
    for (name, s) in &memdrift {
        let context = otel_config().join(ystr(s, &["build", "context"]).expect("context"));
        assert!(context
            .join(ystr(s, &["build", "dockerfile"]).expect("dockerfile"))
            .exists());
        assert_eq!(
            ystr(s, &["environment", "OTEL_EXPORTER_OTLP_ENDPOINT"]),
            Some("http://otel-collector:14317"),
            "{name} sends its findings to the Collector's return receiver"
        );
    }
    let memdrift_names: BTreeSet<_> = memdrift.iter().map(|(n, _)| n.clone()).collect();

    // The Collector routes to exactly those shards, and Prometheus scrapes exactly those.
    let front = yaml("collector-loadbalancing.yaml");
    let routed: BTreeSet<_> = ylist(ynode(
        &front,
        &[
            "exporters",
            "loadbalancing/memdrift",
            "resolver",
            "static",
            "hostnames",
        ],
    ))
    .iter()
    .map(|h| h.strip_suffix(":4317").expect("OTLP gRPC port").to_string())
    .collect();
    assert_eq!(routed, memdrift_names);
    let prom = yaml("prometheus/prometheus.yml");
    let job = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .find(|j| ystr(j, &["job_name"]) == Some("memdrift"))
        .expect("job memdrift");
    assert_eq!(job["honor_labels"].as_bool(), Some(true));
    let scraped: BTreeSet<_> = ylist(ynode(job, &["static_configs", "0", "targets"]))
        .iter()
        .map(|t| t.strip_suffix(":9464").expect("port 9464").to_string())
        .collect();
    assert_eq!(scraped, memdrift_names);
    let collector = &services["otel-collector"];
    assert!(ystr(collector, &["image"]).is_some_and(|i| i.contains("contrib")));
    assert!(ylist(collector.get("volumes"))
        .iter()
        .any(|v| v.starts_with("./collector-loadbalancing.yaml:")));
    assert_eq!(
        ystr(
            &services["jaeger"],
            &["environment", "COLLECTOR_OTLP_ENABLED"]
        ),
        Some("true")
    );
}

// --- Kubernetes -------------------------------------------------------------------------------------------

fn by_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| ystr(d, &["kind"]) == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn kubernetes_manifests_hold_together_and_the_pipeline_parses() {
    let docs = yaml_docs("k8s/memdrift.yaml");
    let deployment = by_kind(&docs, "Deployment");
    let svc = by_kind(&docs, "Service");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];

    let ports: BTreeMap<String, u64> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                ystr(p, &["name"]).expect("named port").to_string(),
                p["containerPort"].as_u64().expect("port number"),
            )
        })
        .collect();
    let numbers: BTreeSet<_> = ports.values().copied().collect();
    assert_eq!(numbers, BTreeSet::from([4317, 4318, 8080, 9464]));
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(ystr(get, &["path"]), Some("/metrics"), "{probe}");
        let port = match &get["port"] {
            Yaml::Number(n) => n.as_u64(),
            Yaml::String(name) => ports.get(name).copied(),
            _ => None,
        };
        assert_eq!(port, Some(9464), "{probe} probes the Prometheus port");
    }
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                ystr(container, &["resources", bound, resource]).is_some(),
                "resources.{bound}.{resource}"
            );
        }
    }
    // The headless Service selects the pods (the Collector's dns resolver needs one address per pod).
    assert_eq!(ystr(svc, &["spec", "clusterIP"]), Some("None"));
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(pod["metadata"]["labels"].get(k), Some(v));
    }

    // The ConfigMap the Deployment mounts holds a pipeline memdrift accepts, with the Deployment's env.
    let configmap = by_kind(&yaml_docs("k8s/configmap.yaml"), "ConfigMap").clone();
    let mounted = pod["spec"]["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find_map(|v| ystr(v, &["configMap", "name"]))
        .expect("a ConfigMap volume");
    assert_eq!(ystr(&configmap, &["metadata", "name"]), Some(mounted));
    let args = ylist(container.get("args"));
    let config_path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config FILE");
    let file = Path::new(config_path)
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name");
    let text = ystr(&configmap, &["data", file]).expect("the file in the ConfigMap");
    let env: BTreeMap<String, String> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            (
                ystr(e, &["name"]).expect("name").to_string(),
                ystr(e, &["value"]).expect("value").to_string(),
            )
        })
        .collect();
    let accepted: Pipeline =
        Pipeline::parse_with_env("k8s/configmap.yaml", text, &|k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("{e}"));
    // The root filesystem is read-only: the directories memdrift writes (the exporter's queue, the
    // checkpoint) are on writable volumes.
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let writable: Vec<&str> = container["volumeMounts"]
        .as_sequence()
        .expect("volume mounts")
        .iter()
        .filter(|m| m["readOnly"].as_bool() != Some(true))
        .filter_map(|m| ystr(m, &["mountPath"]))
        .collect();
    let checkpoint = (accepted.file.service.checkpoint.as_ref())
        .map(|c| c.directory.clone())
        .expect("the example keeps a checkpoint");
    let queue = env
        .get("MEMDRIFT_OTLP_QUEUE_DIR")
        .cloned()
        .expect("the example queues on disk");
    for dir in [checkpoint, queue] {
        assert!(
            writable.iter().any(|m| Path::new(&dir).starts_with(m)),
            "{dir} is on none of the writable mounts {writable:?}"
        );
    }
    for port in [":4317", ":4318", ":9464"] {
        assert!(text.contains(port), "the pipeline listens on {port}");
    }

    // Autoscaling examples target the watched service and warn that scaling does not fix a leak.
    for rel in ["k8s/keda-scaledobject.yaml", "k8s/hpa.yaml"] {
        let doc = &yaml_docs(rel)[0];
        assert!(
            ystr(doc, &["spec", "scaleTargetRef", "name"]).is_some(),
            "{rel}"
        );
        assert!(
            read(rel).contains("does NOT fix a leak"),
            "{rel} says scaling out does not fix a leak"
        );
    }
}

// --- Grafana ----------------------------------------------------------------------------------------------

#[test]
fn grafana_dashboard_and_alerts_are_provisionable() {
    let dashboard = json("grafana/memdrift-dashboard.json");
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus datasource variable");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().expect("name"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = String::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate panel id"
        );
        if p["type"] == "row" {
            continue;
        }
        titles.push_str(p["title"].as_str().unwrap_or(""));
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{}",
                p["title"]
            );
        }
    }
    let mut read_by_panels = BTreeSet::new();
    json_queries(&Json::Array(panels.clone()), &mut read_by_panels);
    for name in [
        "memdrift_spread_sd_ratio",
        "memdrift_spread_p_value",
        "memdrift_time_to_limit_seconds",
        "memdrift_growth_bytes_per_second",
        "memdrift_anomalies_total",
        "memdrift_receiver_refused_spans_total",
        "memdrift_exporter_failed_total",
        "process_resident_memory_bytes",
    ] {
        assert!(read_by_panels.contains(name), "no panel shows {name}");
    }

    // Grafana-managed rules: provisioning format, datasource uids that the provisioned datasources have.
    let datasources = yaml("grafana/provisioning/datasources/datasources.yaml");
    let uids: BTreeSet<_> = datasources["datasources"]
        .as_sequence()
        .expect("datasources")
        .iter()
        .filter_map(|d| ystr(d, &["uid"]).map(String::from))
        .chain(["__expr__".to_string()])
        .collect();
    let alerts = json("grafana/alerts.json");
    assert_eq!(alerts["apiVersion"], 1);
    let rules: Vec<&Json> = alerts["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    for rule in &rules {
        let refs: BTreeSet<_> = rule["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| {
                let uid = d["datasourceUid"].as_str().expect("datasourceUid");
                assert!(uids.contains(uid), "{}: datasource {uid}", rule["title"]);
                d["refId"].as_str().expect("refId")
            })
            .collect();
        assert!(
            refs.contains(rule["condition"].as_str().expect("condition")),
            "{}",
            rule["title"]
        );
    }
    let oom = rules
        .iter()
        .find(|r| {
            r["data"].as_array().into_iter().flatten().any(|d| {
                d["model"]["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("memdrift_time_to_limit_seconds"))
            })
        })
        .expect("a Grafana OOM forecast rule");
    let threshold = oom["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["model"]["type"] == "threshold")
        .expect("threshold");
    assert_eq!(
        threshold["model"]["conditions"][0]["evaluator"],
        serde_json::json!({ "type": "lt", "params": [900] })
    );
    assert_eq!(oom["labels"]["severity"], "critical");

    // The dashboard provider loads the directory compose mounts the dashboard into.
    let providers = yaml("grafana/provisioning/dashboards/dashboards.yaml");
    let path = ystr(&providers, &["providers", "0", "options", "path"]).expect("provider path");
    let compose = read("compose.yaml");
    assert!(compose.contains(&format!("./grafana/memdrift-dashboard.json:{path}/")));
    assert!(!titles.is_empty());
}
