//! Authenticated receivers: with `tls:` (and a client CA) and `auth: { authenticator: bearertokenauth }` on the
//! gRPC and HTTP receivers and on `/metrics`, only a client with a trusted certificate and the token is served;
//! each refusal is the protocol's own answer (TLS failure, HTTP 401, gRPC UNAUTHENTICATED).

use std::path::Path;

use memdrift::config::Pipeline;
use memdrift::topology::Service;
use memdrift_e2e::pki::{private_pki, Pki};
use memdrift_e2e::{int, now_unix_nano, request, resource, span};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOKEN: &str = "s3cret-token";

fn pipeline(pki: &Pki) -> Pipeline {
    let tls = format!(
        "{{ cert_file: \"{}\", key_file: \"{}\", client_ca_file: \"{}\" }}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let text = format!(
        r#"
extensions:
  bearertokenauth:
    token: {TOKEN}
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:0", tls: {tls}, auth: {{ authenticator: bearertokenauth }} }}
      http: {{ endpoint: "127.0.0.1:0", tls: {tls}, auth: {{ authenticator: bearertokenauth }} }}
processors:
  extract: {{}}
  windows: {{}}
exporters:
  prometheus: {{ endpoint: "127.0.0.1:0", tls: {tls}, auth: {{ authenticator: bearertokenauth }} }}
service:
  extensions: [bearertokenauth]
  pipelines:
    memory: {{ receivers: [otlp], processors: [extract, windows], exporters: [prometheus] }}
"#
    );
    Pipeline::parse_with_env("security-test.yaml", &text, &|_| None).expect("a valid pipeline")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("reads")
}

fn https_client(pki: &Pki, with_client_cert: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&read(&pki.ca)).expect("ca"));
    if with_client_cert {
        let mut pem = read(&pki.client_cert);
        pem.extend(read(&pki.client_key));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("client")
}

async fn grpc_channel(pki: &Pki, port: u16) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca)))
        .identity(Identity::from_pem(
            read(&pki.client_cert),
            read(&pki.client_key),
        ))
        .domain_name("localhost");
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_clients_with_the_token_are_served_on_every_port() {
    let dir = std::env::temp_dir().join(format!("memdrift-security-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let Some(pki) = private_pki(&dir) else {
        return;
    };
    let service = Service::start(pipeline(&pki)).await.expect("starts");
    let (grpc, http, prom) = (
        service.grpc_addr.expect("grpc").port(),
        service.http_addr.expect("http").port(),
        service.prometheus_addr.expect("prometheus").port(),
    );
    let body = request(
        resource("secure-llm", "1.0.0", "pod-a"),
        vec![span(
            1,
            now_unix_nano(),
            vec![int("memspan.rss.end", 500_000_000)],
        )],
    );

    // HTTP: the token and a client certificate are both needed.
    let traces = format!("https://localhost:{http}/v1/traces");
    let post = |client: &reqwest::Client, token: Option<&str>| {
        let mut req = client
            .post(&traces)
            .header("content-type", "application/x-protobuf")
            .body(body.encode_to_vec());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let trusted = https_client(&pki, true);
    assert_eq!(
        post(&trusted, Some(TOKEN)).await.expect("sent").status(),
        200
    );
    let refused = post(&trusted, None).await.expect("sent");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        post(&trusted, Some("wrong")).await.expect("sent").status(),
        401
    );
    assert!(
        post(&https_client(&pki, false), Some(TOKEN)).await.is_err(),
        "no client certificate: the handshake fails"
    );
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body.encode_to_vec())
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.expect("answer").status().is_success(),
        "plain text is not served"
    );

    // gRPC: the same.
    let mut client = TraceServiceClient::new(grpc_channel(&pki, grpc).await);
    let mut with_token = tonic::Request::new(body.clone());
    with_token.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii"),
    );
    client.export(with_token).await.expect("accepted");
    let status = client
        .export(tonic::Request::new(body.clone()))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // /metrics: the same token; the refusals above are counted.
    let metrics = format!("https://localhost:{prom}/metrics");
    assert_eq!(
        trusted.get(&metrics).send().await.expect("sent").status(),
        401
    );
    let text = trusted
        .get(&metrics)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    for (transport, n) in [("grpc", 1), ("http", 2), ("prometheus", 1)] {
        let series = format!(
            "memdrift_receiver_failed_requests_total{{reason=\"unauthenticated\",transport=\"{transport}\"}} {n}"
        );
        assert!(text.contains(&series), "{series} missing:\n{text}");
    }
    service.shutdown().await.expect("stops");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_auth_naming_an_undefined_extension_is_a_clear_error() {
    let text = r#"
receivers:
  otlp:
    protocols:
      http: { endpoint: "127.0.0.1:0", auth: { authenticator: bearertokenauth } }
exporters:
  jsonl: { path: stdout }
service:
  pipelines:
    memory: { receivers: [otlp], exporters: [jsonl] }
"#;
    let pipeline = Pipeline::parse_with_env("t.yaml", text, &|_| None).expect("parses");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let err = match rt.block_on(Service::start(pipeline)) {
        Ok(_) => panic!("started without the extension"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("extensions.bearertokenauth is not defined"),
        "{err}"
    );
}
