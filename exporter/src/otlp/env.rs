//! The formats of the standard `OTEL_EXPORTER_OTLP_*` variables, as the OpenTelemetry specification defines them
//! ("OTLP Exporter Configuration"), and how an endpoint becomes a URL.
//!
//! Which variable applies where is the pipeline loader's business; this module only reads values.

use std::time::Duration;

use super::transport::Protocol;
use super::Signal;

/// The specification's `OTEL_EXPORTER_OTLP_HEADERS` format: `key1=value1,key2=value2`, values percent-encoded
/// (so a value may hold a comma as `%2C`); spaces around keys and values are trimmed.
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("`{}` is not key=value", pair.trim()));
        };
        let key = k.trim();
        if key.is_empty() {
            return Err(format!("`{}` has an empty key", pair.trim()));
        }
        let value = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|e| format!("the value of `{key}` is not UTF-8 once decoded: {e}"))?;
        out.push((key.to_string(), value.into_owned()));
    }
    Ok(out)
}

/// `OTEL_EXPORTER_OTLP_TIMEOUT`: integer milliseconds.
pub fn parse_timeout_ms(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("`{s}` is not a whole number of milliseconds"))
}

/// `grpc` or `http/protobuf` (`http/json` is not offered).
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(format!(
            "protocol `{other}` is not supported; use grpc or http/protobuf"
        )),
    }
}

/// `gzip` or `none`.
pub fn parse_compression(s: &str) -> Result<super::Compression, String> {
    match s.trim() {
        "gzip" => Ok(super::Compression::Gzip),
        "none" | "" => Ok(super::Compression::None),
        other => Err(format!(
            "compression `{other}` is not supported; use gzip or none"
        )),
    }
}

/// `true` / `false`, case-insensitive, as the specification's boolean variables.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" | "" => Ok(false),
        other => Err(format!("`{other}` is not true or false")),
    }
}

/// The URL one signal is sent to.
///
/// - A signal's own endpoint (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`) is used as it is, for HTTP too.
/// - The shared endpoint gets `/v1/logs` (`/v1/traces`, `/v1/metrics`) appended for HTTP, as the specification
///   says; gRPC uses it as it is.
/// - Without a scheme, TLS is used unless `insecure` (the specification's rule for gRPC, applied to HTTP as
///   well, where a scheme-less endpoint has no other reading).
pub fn signal_url(
    endpoint: &str,
    signal: Signal,
    protocol: Protocol,
    signal_specific: bool,
    insecure: bool,
) -> Result<String, String> {
    let endpoint = endpoint.trim();
    let with_scheme = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else if endpoint.contains("://") {
        return Err(format!(
            "endpoint `{endpoint}` has a scheme other than http:// or https://"
        ));
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| format!("endpoint `{endpoint}` is not a URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("endpoint `{endpoint}` names no host"));
    }
    Ok(match protocol {
        Protocol::HttpProtobuf if !signal_specific => format!(
            "{}/{}",
            with_scheme.trim_end_matches('/'),
            signal.http_path()
        ),
        _ => with_scheme,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_specification_format() {
        assert_eq!(
            parse_headers("api-key=abc, Authorization = Bearer%20x%2Cy ,").expect("valid"),
            vec![
                ("api-key".to_string(), "abc".to_string()),
                ("Authorization".to_string(), "Bearer x,y".to_string())
            ]
        );
        assert_eq!(parse_headers("").expect("empty is none"), vec![]);
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("=x").is_err());
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_timeout_ms("2500"), Ok(Duration::from_millis(2500)));
        assert!(parse_timeout_ms("10s").is_err());
        assert_eq!(parse_protocol("grpc"), Ok(Protocol::Grpc));
        assert_eq!(parse_protocol("http/protobuf"), Ok(Protocol::HttpProtobuf));
        assert!(parse_protocol("http/json").is_err());
        assert_eq!(
            parse_compression("gzip"),
            Ok(super::super::Compression::Gzip)
        );
        assert!(parse_compression("zstd").is_err());
        assert_eq!(parse_bool("TRUE"), Ok(true));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn urls_per_signal() {
        let h = Protocol::HttpProtobuf;
        assert_eq!(
            signal_url("http://collector:4318/", Signal::Logs, h, false, false).as_deref(),
            Ok("http://collector:4318/v1/logs")
        );
        assert_eq!(
            signal_url(
                "https://otlp.example.com/otlp",
                Signal::Metrics,
                h,
                false,
                false
            )
            .as_deref(),
            Ok("https://otlp.example.com/otlp/v1/metrics")
        );
        assert_eq!(
            signal_url(
                "https://x.example/custom/logs",
                Signal::Logs,
                h,
                true,
                false
            )
            .as_deref(),
            Ok("https://x.example/custom/logs")
        );
        let g = Protocol::Grpc;
        assert_eq!(
            signal_url("collector:4317", Signal::Traces, g, false, false).as_deref(),
            Ok("https://collector:4317")
        );
        assert_eq!(
            signal_url("collector:4317", Signal::Traces, g, false, true).as_deref(),
            Ok("http://collector:4317")
        );
        assert!(signal_url("ftp://x", Signal::Logs, g, false, false).is_err());
        assert!(signal_url("http://", Signal::Logs, g, false, false).is_err());
    }
}
