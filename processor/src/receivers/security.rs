//! Who may talk to memdrift's servers: TLS (a server certificate, and optionally client certificates) and a
//! shared bearer token, configured as the Collector configures its receivers (`tls:`, `auth:` with the
//! `bearertokenauth` extension). Both are off by default; the embedded pipeline listens in plain text.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use prometheus::IntCounter;

use crate::config::{Auth, PipelineFile, ServerTls};

/// What a server requires of its clients, resolved from the pipeline (files read, names checked).
#[derive(Clone, Default)]
pub struct Security {
    /// TLS for an HTTP server (rustls).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The same certificates for a gRPC server (tonic).
    pub grpc_tls: Option<tonic::transport::ServerTlsConfig>,
    pub token: Option<BearerToken>,
}

impl Security {
    /// Reads the certificate files and the token named by a server's `tls:` and `auth:`; `what` names the server
    /// in errors ("receivers.otlp.protocols.http").
    pub fn resolve(
        file: &PipelineFile,
        what: &str,
        tls: Option<&ServerTls>,
        auth: Option<&Auth>,
    ) -> Result<Security, String> {
        let mut security = Security::default();
        if let Some(tls) = tls {
            let read = |path: &str, key: &str| {
                std::fs::read(path)
                    .map_err(|e| format!("{what}.tls.{key}: cannot read {path}: {e}"))
            };
            let cert = read(&tls.cert_file, "cert_file")?;
            let key = read(&tls.key_file, "key_file")?;
            let ca = match &tls.client_ca_file {
                Some(path) => Some(read(path, "client_ca_file")?),
                None => None,
            };
            security.tls = Some(Arc::new(
                rustls_config(&cert, &key, ca.as_deref())
                    .map_err(|e| format!("{what}.tls: {e}"))?,
            ));
            let mut grpc = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&cert, &key));
            if let Some(ca) = &ca {
                grpc = grpc.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            security.grpc_tls = Some(grpc);
        }
        if let Some(auth) = auth {
            if auth.authenticator != "bearertokenauth" {
                return Err(format!(
                    "{what}.auth.authenticator: {:?} is not an authenticator memdrift knows; use bearertokenauth \
                     (defined under extensions:)",
                    auth.authenticator
                ));
            }
            let Some(ext) = &file.extensions.bearertokenauth else {
                return Err(format!(
                    "{what}.auth names bearertokenauth but extensions.bearertokenauth is not defined; add \
                     `extensions: {{ bearertokenauth: {{ token: ${{env:MEMDRIFT_BEARER_TOKEN}} }} }}`"
                ));
            };
            let token = match (&ext.token, &ext.filename) {
                (Some(t), _) if !t.is_empty() => t.clone(),
                (_, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| {
                        format!("extensions.bearertokenauth.filename: cannot read {path}: {e}")
                    })?
                    .trim_end()
                    .to_string(),
                _ => {
                    return Err(
                        "extensions.bearertokenauth needs a non-empty `token` or a `filename`"
                            .into(),
                    )
                }
            };
            if token.is_empty() {
                return Err("extensions.bearertokenauth: the token is empty".into());
            }
            let scheme = ext.scheme.as_deref().unwrap_or("Bearer");
            security.token = Some(BearerToken::new(scheme, &token));
        }
        Ok(security)
    }
}

fn rustls_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cert_file is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("cert_file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("key_file is not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| format!("client_ca_file is not PEM certificates: {e}"))?;
                roots.add(c).map_err(|e| format!("client_ca_file: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The expected `Authorization` header value, compared in constant time.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8]>);

impl BearerToken {
    pub fn new(scheme: &str, token: &str) -> BearerToken {
        BearerToken(format!("{scheme} {token}").into_bytes().into())
    }

    /// Whether `value` (an `Authorization` header or `authorization` metadata) carries the token.
    pub fn accepts(&self, value: Option<&[u8]>) -> bool {
        let Some(value) = value else {
            return false;
        };
        let expected: &[u8] = &self.0;
        // Every byte is looked at whatever the first difference, so the time taken says nothing about the token.
        let mut diff = u8::from(value.len() != expected.len());
        for (i, e) in expected.iter().enumerate() {
            diff |= e ^ value.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }

    /// An HTTP middleware answering 401 (with `WWW-Authenticate`) to a request without the token, and counting it.
    pub async fn require_http(
        axum::extract::State((token, refused)): axum::extract::State<(BearerToken, IntCounter)>,
        headers: HeaderMap,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        if token.accepts(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
            return next.run(request).await;
        }
        refused.inc();
        let mut response = (
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer <token>`",
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}

/// A gRPC interceptor answering UNAUTHENTICATED to a call without the token (every call passes when `token` is
/// `None`).
pub fn require_grpc(
    token: Option<BearerToken>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        let Some(token) = &token else {
            return Ok(request);
        };
        let value = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        if token.accepts(value) {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong bearer token: send `authorization: Bearer <token>` metadata",
            ))
        }
    }
}

/// Adds the bearer-token check to `router` when the server requires one; `refused` counts the requests turned
/// away.
pub fn guard_router(
    router: axum::Router,
    security: &Security,
    refused: IntCounter,
) -> axum::Router {
    match &security.token {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(
            (token.clone(), refused),
            BearerToken::require_http,
        )),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_accepted_whole_and_nothing_else() {
        let t = BearerToken::new("Bearer", "s3cret");
        assert!(t.accepts(Some(b"Bearer s3cret")));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret ",
            b"bearer s3cret",
            b"Bearer S3cret",
            b"",
        ] {
            assert!(
                !t.accepts(Some(wrong)),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!t.accepts(None));
    }
}
