//! `${env:VAR}` substitution, as in the Collector's configuration.

use super::ConfigError;

/// Replaces `${env:VAR}` and `${env:VAR:-default}`; `$$` is a literal `$`. An unset variable without a default
/// becomes empty (as in the Collector) and is reported as a warning naming the line.
pub fn substitute(
    file: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut warnings = Vec::new();
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            if let Some(after) = tail.strip_prefix("$$") {
                out.push('$');
                rest = after;
            } else if let Some(body) = tail.strip_prefix("${") {
                let Some(end) = body.find('}') else {
                    return Err(ConfigError::line(
                        file,
                        lineno + 1,
                        "unterminated `${`".into(),
                        Some("write ${env:NAME}, or $$ for a literal $".into()),
                    ));
                };
                let expr = &body[..end];
                let Some(var) = expr.strip_prefix("env:") else {
                    return Err(ConfigError::line(
                        file,
                        lineno + 1,
                        format!("unsupported substitution `${{{expr}}}`"),
                        Some("only ${env:NAME} and ${env:NAME:-default} are supported".into()),
                    ));
                };
                let (var, default) = match var.split_once(":-") {
                    Some((v, d)) => (v, Some(d)),
                    None => (var, None),
                };
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ConfigError::line(
                        file,
                        lineno + 1,
                        format!("`{var}` is not an environment variable name"),
                        Some("names are letters, digits and _".into()),
                    ));
                }
                match (lookup(var), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => warnings.push(format!(
                        "{file}:{}: environment variable {var} is not set; substituted an empty value",
                        lineno + 1
                    )),
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &str) -> Option<String> {
        (v == "PORT").then(|| "4317".to_string())
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let (out, w) = substitute(
            "f",
            "a: ${env:PORT}\nb: ${env:NOPE:-x}\nc: $$HOME $5\n",
            env,
        )
        .expect("ok");
        assert_eq!(out, "a: 4317\nb: x\nc: $HOME $5\n");
        assert!(w.is_empty());
    }

    #[test]
    fn unset_without_default_warns_with_the_line() {
        let (out, w) = substitute("f", "x: 1\nendpoint: \"${env:NOPE}\"\n", env).expect("ok");
        assert_eq!(out, "x: 1\nendpoint: \"\"\n");
        assert_eq!(
            w,
            vec!["f:2: environment variable NOPE is not set; substituted an empty value"]
        );
    }

    #[test]
    fn bad_forms_name_the_line() {
        let e = substitute("f", "\n\nx: ${file:/etc/passwd}\n", env).expect_err("rejected");
        assert_eq!(e.line, Some(3));
        let e = substitute("f", "x: ${env:A\n", env).expect_err("rejected");
        assert!(e.to_string().contains("unterminated"), "{e}");
    }
}
