//! A private certificate authority for TLS tests, made with the openssl command line: a CA, a server
//! certificate for 127.0.0.1 and localhost, and a client certificate, both signed by it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::external_tool;

/// The files of a private PKI (PEM).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes the PKI in `dir`; `None` (test skipped) only outside CI when openssl is not installed.
pub fn private_pki(dir: &Path) -> Option<Pki> {
    let openssl = external_tool("openssl")?;
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("writes");
    write(
        "server.ext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    write(
        "client.ext",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    );
    run(&[
        "req",
        "-x509",
        "-subj",
        "/CN=memdrift test CA",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    for (name, cn) in [
        ("server", "/CN=127.0.0.1"),
        ("client", "/CN=memdrift test client"),
    ] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        run(&[
            "req", "-subj", cn, "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", &key,
            "-out", &csr,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    Some(Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    })
}
