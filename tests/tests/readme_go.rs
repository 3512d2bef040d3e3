//! The README's Go service ("Instrumenting services"), as it stands: taken from between its markers, checked
//! by gofmt and go vet, built against the package in `sdk-instrumentation/go` (a `replace` in its go.mod, as
//! the README says), and run against a running memdrift over OTLP/HTTP: every request arrives as a memory
//! sample with the package's attributes, under the cohort from `MEMSPAN_COHORT`, and the runtime metrics too.
//! Without `.venv/bin/go` the test is skipped, unless `CI=true`, where it fails.

use std::path::Path;

use memdrift_e2e::{
    await_cohort_window, go_command, metric_value, repo_root, scrape, venv_go, Loopback,
};

const REQUESTS: f64 = 60.0;

/// The Go code between `<!-- memspan-go:start -->` and `<!-- memspan-go:end -->`, without its fence.
fn snippet() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find("<!-- memspan-go:start -->")
        .expect("the README marks its Go service with <!-- memspan-go:start -->");
    let rest = &readme[start..];
    let end = rest
        .find("<!-- memspan-go:end -->")
        .expect("and <!-- memspan-go:end -->");
    let block = &rest[..end];
    let code = block
        .split_once("```go\n")
        .and_then(|(_, code)| code.rsplit_once("```"))
        .map(|(code, _)| code)
        .expect("a ```go block between the markers");
    code.to_string()
}

fn go_ok(go: &Path, dir: &Path, args: &[&str]) -> String {
    let out = go_command(go, dir).args(args).output().expect("go runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_go_service_reaches_memdrift_under_its_cohort() {
    let Some(go) = venv_go() else {
        return;
    };
    let memdrift = Loopback::start("readme-go").await;
    let dir = memdrift.dir.join("service");
    std::fs::create_dir_all(&dir).expect("service dir");
    std::fs::write(dir.join("main.go"), snippet()).expect("main.go");
    let package = repo_root().join("sdk-instrumentation/go");
    std::fs::write(
        dir.join("go.mod"),
        format!(
            "module chatapi\n\ngo 1.24\n\nrequire memspan v0.0.0\n\nreplace memspan => {}\n",
            package.display()
        ),
    )
    .expect("go.mod");
    let goroot = go_ok(&go, &dir, &["env", "GOROOT"]);
    let gofmt_bin = Path::new(goroot.trim()).join("bin/gofmt");
    let listed = std::process::Command::new(gofmt_bin)
        .arg("-l")
        .arg(dir.join("main.go"))
        .output()
        .expect("gofmt runs");
    assert!(
        listed.status.success() && listed.stdout.is_empty(),
        "the README's Go service is not gofmt-formatted: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    go_ok(&go, &dir, &["vet", "."]);
    go_ok(&go, &dir, &["build", "-o", "chat-api", "."]);

    let http = memdrift.http.clone();
    let bin = dir.join("chat-api");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", http)
            .env("OTEL_SERVICE_NAME", "go-readme")
            .env("OTEL_RESOURCE_ATTRIBUTES", "service.version=1.2.0")
            .env("MEMSPAN_COHORT", "canary")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .output()
            .expect("the service runs")
    })
    .await
    .expect("service thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ran 60 requests"),
        "the README's Go service failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let prom = memdrift.prometheus;
    let text = scrape(prom).await;
    assert_eq!(
        metric_value(&text, "memdrift_receiver_accepted_spans_total"),
        Some(REQUESTS),
        "{text}"
    );
    // Every request gives RSS, the heap and what it allocated.
    for signal in [
        "memspan.rss.end",
        "memspan.heap.allocated",
        "memspan.request.allocated",
    ] {
        let series = format!("memdrift_samples_total{{signal=\"{signal}\"}}");
        assert!(
            metric_value(&text, &series).is_some_and(|v| v >= REQUESTS),
            "{series}\n{text}"
        );
    }
    // The last collection of the runtime metrics, flushed by Shutdown.
    assert!(
        metric_value(
            &text,
            "memdrift_samples_total{signal=\"go.goroutine.count\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    await_cohort_window(prom, "go-readme", "canary").await;
    memdrift.stop().await;
}
