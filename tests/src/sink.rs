//! Drives `tests/peers/otlp_sink.py`, the independent OTLP receiver: start it (on given or free ports, plain or
//! TLS), inject faults, and read back what it decoded.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{repo_root, venv_python};

/// How long one answer from the sink may take before the test fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Sink {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub grpc_port: u16,
    pub http_port: u16,
}

/// A loopback port where nobody listens, held for as long as this lives: connections to it are refused, and no
/// other test's receiver can be given it meanwhile (a port from [`free_port`] left unbound for seconds can be,
/// and a backend that should be down would then answer).
pub struct ClosedPort {
    /// Bound, never listening.
    _socket: socket2::Socket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        socket.bind(&any.into()).expect("bound to a free port");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("a local port");
        ClosedPort {
            _socket: socket,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

/// A loopback port that was free a moment ago, for a receiver that starts later.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Sink {
    /// Starts the sink on free ports.
    pub fn start() -> Sink {
        Sink::start_on(0, 0, None)
    }

    /// Starts the sink on the given ports (0: free), with TLS when `tls` names a certificate and key.
    pub fn start_on(grpc_port: u16, http_port: u16, tls: Option<(&Path, &Path)>) -> Sink {
        let mut cmd = Command::new(venv_python());
        cmd.arg(repo_root().join("tests/peers/otlp_sink.py"))
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .args(["--control", "--timeout-s", "600"]);
        if let Some((cert, key)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the sink starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sink = Sink {
            child,
            stdin,
            lines,
            grpc_port: 0,
            http_port: 0,
        };
        let ready = sink.next_line();
        let ports = &ready["ready"];
        sink.grpc_port = ports["grpc_port"].as_u64().expect("grpc port") as u16;
        sink.http_port = ports["http_port"].as_u64().expect("http port") as u16;
        sink
    }

    fn next_line(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(ANSWER_TIMEOUT)
            .unwrap_or_else(|e| panic!("no answer from the sink ({e}); see its stderr above"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("sink said {line:?}: {e}"))
    }

    fn command(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").expect("sink takes commands");
        self.stdin.flush().expect("flush");
        let answer = self.next_line();
        assert!(answer.get("error").is_none(), "{command} -> {answer}");
        answer
    }

    /// Answers the next requests of `fault["signal"]` as the fault says (see the sink's doc).
    pub fn fault(&mut self, fault: Value) {
        let mut command = json!({"cmd": "fault"});
        if let (Some(c), Some(f)) = (command.as_object_mut(), fault.as_object()) {
            c.extend(f.clone());
        }
        self.command(command);
    }

    /// Everything received so far: `requests`, `logs`, `spans`, `metrics`.
    pub fn dump(&mut self) -> Value {
        self.command(json!({"cmd": "dump"}))["dump"].take()
    }

    /// Polls the dump until `done` holds; panics with `what` and the last dump after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let dump = self.dump();
            if done(&dump) {
                return dump;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; the sink has:\n{dump:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The items of one kind in a dump (`logs`, `spans`, `metrics`, `requests`).
pub fn items<'a>(dump: &'a Value, kind: &str) -> &'a [Value] {
    dump[kind].as_array().map_or(&[], Vec::as_slice)
}

/// The requests of one signal, in arrival order.
pub fn requests<'a>(dump: &'a Value, signal: &str) -> Vec<&'a Value> {
    items(dump, "requests")
        .iter()
        .filter(|r| r["signal"] == signal)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed port refuses connections while it is held, and is free to bind once dropped.
    #[test]
    fn a_closed_port_refuses_and_frees_its_port_when_dropped() {
        let closed = ClosedPort::new();
        let err = std::net::TcpStream::connect(("127.0.0.1", closed.port))
            .expect_err("nobody listens on a closed port");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        assert!(
            TcpListener::bind(("127.0.0.1", closed.port)).is_err(),
            "the port is held"
        );
        let port = closed.port;
        drop(closed);
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    }
}
