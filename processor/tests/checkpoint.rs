//! `service.checkpoint` on the real binary: state written on the interval is back after a kill -9, and state
//! written at SIGTERM after a clean restart; a corrupt checkpoint or one from other settings is reported, set
//! aside and skipped; a second memdrift on the same directory is refused with a message that names it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{http_request, metric, pipeline_file, tempdir, wait_within, Running, BIN};

/// OTLP/JSON spans of `instances` instances of one service, ten each, ending now.
fn spans(instances: usize) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let resources: Vec<String> = (0..instances)
        .map(|i| {
            let spans: Vec<String> = (0..10u64)
                .map(|k| {
                    let end = now - (10 - k) * 100_000_000;
                    format!(
                        r#"{{"traceId":"{:032x}","spanId":"{:016x}","name":"chat","startTimeUnixNano":"{}",
                        "endTimeUnixNano":"{end}","attributes":[{{"key":"memspan.rss.end",
                        "value":{{"intValue":"{}"}}}}]}}"#,
                        i * 100 + k as usize + 1,
                        k + 1,
                        end - 1000,
                        500_000_000 + k * 1_000_000
                    )
                })
                .collect();
            format!(
                r#"{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"llm"}}}},
                {{"key":"service.instance.id","value":{{"stringValue":"pod-{i}"}}}},
                {{"key":"service.version","value":{{"stringValue":"1.{}"}}}}]}},
                "scopeSpans":[{{"spans":[{}]}}]}}"#,
                i % 2,
                spans.join(",")
            )
        })
        .collect();
    format!(r#"{{"resourceSpans":[{}]}}"#, resources.join(",")).into_bytes()
}

/// Waits until `series` reads at least `value`; fails with `what` after `limit`.
fn wait_for(
    running: &Running,
    series: &str,
    value: f64,
    limit: Duration,
    what: impl std::fmt::Display,
) {
    let deadline = std::time::Instant::now() + limit;
    while metric(running, series) < value {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn checkpointed(dir: &Path, state: &Path) -> std::path::PathBuf {
    let service = format!(
        "  checkpoint:\n    directory: {}\n    interval: 1s\n",
        state.display()
    );
    pipeline_file(dir, &service, "")
}

#[test]
fn state_survives_a_restart_and_a_bad_checkpoint_is_skipped() {
    let dir = tempdir("checkpoint");
    let state = dir.join("state");
    let config = checkpointed(&dir, &state);
    let instances = r#"memdrift_keys{kind="instance"}"#;

    // First run: six instances' series, written by the interval's checkpoint; then the process is killed.
    let first = Running::start(Some(&config));
    let (status, body) = http_request(
        first.http,
        "POST",
        "/v1/traces",
        &[("Content-Type", "application/json")],
        &spans(6),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    wait_for(
        &first,
        instances,
        6.0,
        Duration::from_secs(20),
        "the engine never saw the six instances",
    );

    // A second memdrift on the same directory is refused, naming the directory and the holder.
    let second = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("MEMDRIFT_GRPC_ENDPOINT", "127.0.0.1:0")
        .env("MEMDRIFT_HTTP_ENDPOINT", "127.0.0.1:0")
        .env("MEMDRIFT_PROMETHEUS_ENDPOINT", "127.0.0.1:0")
        .env("MEMDRIFT_GATE_ENDPOINT", "127.0.0.1:0")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut second = second;
    let exit = wait_within(&mut second, Duration::from_secs(20), "a second memdrift");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(!exit.success());
    assert!(
        err.contains("service.checkpoint.directory") && err.contains("in use by another memdrift"),
        "{err}"
    );

    // The timer saves once the interval has passed (on its next tick, within a step).
    wait_for(
        &first,
        "memdrift_checkpoints_total",
        1.0,
        Duration::from_secs(30),
        "no checkpoint on the interval",
    );
    assert!(metric(&first, "memdrift_checkpoint_bytes") > 0.0);
    let mut first = first;
    first.child.kill().expect("kill -9");
    first.child.wait().expect("reaped");

    // After the crash, then after a clean stop (SIGTERM writes the state once more): the six instances are
    // back before any new data arrives.
    for how in ["after kill -9", "after SIGTERM"] {
        let restarted = Running::start(Some(&config));
        assert!(
            (restarted.seen.iter()).any(|l| l.contains("state restored from the checkpoint")),
            "{how}: {:#?}",
            restarted.seen
        );
        wait_for(
            &restarted,
            instances,
            6.0,
            Duration::from_secs(20),
            format!("{how}: the restored instances are not counted"),
        );
        let (exit, _, log) = restarted.terminate(Duration::from_secs(15));
        assert!(exit.success(), "{how}: {log:#?}");
    }

    // One flipped byte: reported, counted, set aside; memdrift starts fresh.
    let file = state.join("checkpoint");
    let mut bytes = std::fs::read(&file).expect("checkpoint");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).expect("write");
    let fresh = Running::start(Some(&config));
    assert!(
        fresh
            .seen
            .iter()
            .any(|l| l.contains("checkpoint not restored") && l.contains("checksum mismatch")),
        "{:#?}",
        fresh.seen
    );
    assert_eq!(
        metric(
            &fresh,
            r#"memdrift_checkpoint_failures_total{operation="restore"}"#
        ),
        1.0
    );
    assert_eq!(metric(&fresh, instances), 0.0);
    assert!(state.join("checkpoint.rejected").exists());
    let (exit, _, log) = fresh.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");

    // Other window settings: the checkpoint is not used.
    let text = std::fs::read_to_string(&config).expect("pipeline");
    std::fs::write(&config, text.replace("size: 60s", "size: 120s")).expect("pipeline");
    let changed = Running::start(Some(&config));
    assert!(
        changed
            .seen
            .iter()
            .any(|l| l.contains("checkpoint not restored")
                && l.contains("other window or detector settings")),
        "{:#?}",
        changed.seen
    );
    let (exit, _, log) = changed.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{log:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
