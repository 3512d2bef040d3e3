//! Connections, bounded: a cap per listener, a deadline for a connection's first bytes and for silence after
//! them, and an HTTP server loop that owns its connections, so that stopping it closes them all.
//!
//! At the cap a new connection is not turned away while some connection has sent nothing at all: the oldest
//! such one is closed instead (a client that connected and said nothing is the cheapest to lose, and a flood of
//! idle connections then cannot lock real senders out). Only when every connection has sent something is the
//! new one closed at once. Every closing is counted in `memdrift_connections_closed_total{server, reason}`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::telemetry::Telemetry;

/// How many connections a listener holds and how long they may stay silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most (beyond it, see the module documentation).
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed; its first bytes are due within
    /// `header_read_timeout`.
    pub idle_timeout: Duration,
    /// The first bytes of a connection, and every HTTP/1 request's headers, are due within this.
    pub header_read_timeout: Duration,
    /// A request's whole body (HTTP) or the whole call (gRPC) is due within this.
    pub request_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What a [`Guarded`] connection shares with its listener.
#[derive(Default)]
struct Slot {
    /// Set by the listener to close the connection; its next read fails.
    evicted: AtomicBool,
    /// It has sent at least one byte.
    active: AtomicBool,
    waker: AtomicWaker,
}

struct Shared {
    name: &'static str,
    limits: ConnectionLimits,
    live: AtomicUsize,
    /// Connections in accept order, for eviction; the dead and the active are pruned as it grows.
    order: Mutex<VecDeque<Arc<Slot>>>,
    telemetry: Telemetry,
}

impl Shared {
    fn closed(&self, reason: &str) {
        self.telemetry
            .connections_closed
            .with_label_values(&[self.name, reason])
            .inc();
    }

    /// Closes the oldest connection that has sent nothing; false when there is none.
    fn evict_one_silent(&self) -> bool {
        let Ok(mut order) = self.order.lock() else {
            return false;
        };
        let found = order.iter().position(|s| {
            Arc::strong_count(s) > 1
                && !s.active.load(Ordering::Acquire)
                && !s.evicted.load(Ordering::Acquire)
        });
        let Some(i) = found else {
            return false;
        };
        if let Some(slot) = order.remove(i) {
            slot.evicted.store(true, Ordering::Release);
            slot.waker.wake();
            self.closed("evicted_silent");
        }
        true
    }

    fn register(&self, slot: &Arc<Slot>) {
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        if order.len() >= 2 * self.limits.max_connections.max(1) {
            order.retain(|s| Arc::strong_count(s) > 1 && !s.active.load(Ordering::Acquire));
        }
        order.push_back(Arc::clone(slot));
    }
}

/// A listener that bounds its connections.
#[derive(Clone)]
pub struct GuardedListener {
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
}

impl GuardedListener {
    pub fn new(
        name: &'static str,
        listener: TcpListener,
        limits: ConnectionLimits,
        telemetry: Telemetry,
    ) -> GuardedListener {
        GuardedListener {
            listener: Arc::new(listener),
            shared: Arc::new(Shared {
                name,
                limits,
                live: AtomicUsize::new(0),
                order: Mutex::new(VecDeque::new()),
                telemetry,
            }),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.shared.limits
    }

    /// The next connection within the cap. Accept errors (out of file descriptors, say) are logged and counted,
    /// and accepting goes on after a pause, as they pass when connections close.
    pub async fn accept(&self) -> Guarded<TcpStream> {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(server = self.shared.name, error = %e, "accepting a connection failed; retrying in 100 ms");
                    self.shared.closed("accept_error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = &self.shared;
            if shared.live.load(Ordering::Acquire) >= shared.limits.max_connections
                && !shared.evict_one_silent()
            {
                shared.closed("over_limit");
                drop(stream);
                continue;
            }
            // Small exports must not wait for the peer's delayed ACK (about 40 ms a request with Nagle on).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
            }
            shared.live.fetch_add(1, Ordering::AcqRel);
            let slot = Arc::new(Slot::default());
            shared.register(&slot);
            let deadline = Instant::now() + shared.limits.header_read_timeout;
            return Guarded {
                io: stream,
                slot,
                shared: Arc::clone(shared),
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
            };
        }
    }
}

/// A connection under its listener's limits: a read fails once the connection is evicted or silent too long.
pub struct Guarded<IO> {
    io: IO,
    slot: Arc<Slot>,
    shared: Arc<Shared>,
    deadline: Pin<Box<Sleep>>,
}

impl<IO> Drop for Guarded<IO> {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.slot.waker.register(cx.waker());
        if this.slot.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room: the connection had sent nothing",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.slot.active.store(true, Ordering::Release);
                    let next = Instant::now() + this.shared.limits.idle_timeout;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let active = this.slot.active.load(Ordering::Acquire);
                    this.shared.closed(if active { "idle" } else { "silent" });
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection was silent past its deadline",
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// HTTP/2's flow-control windows (a stream's and the whole connection's) and the largest DATA frame a sender
/// may use, over gRPC and OTLP/HTTP alike. An export of 512 memory spans (about 190 KB) then arrives as one
/// frame without waiting for a WINDOW_UPDATE, where h2's defaults (64 KiB windows, 16 KiB frames) cut it into a
/// dozen frames, each its own read and flow-control round (about a tenth of the CPU at 10k spans/s over gRPC,
/// BENCHMARKS.md). It is also what a connection can hold received and not yet read, outside the decode budget:
/// 256 KiB, against h2's 64 KiB.
pub const HTTP2_WINDOW: u32 = 256 * 1024;

/// Serves `router` over HTTP/1 and HTTP/2 on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves, then lets the open connections finish their requests. The connections are this future's:
/// dropping it (an aborted task) closes every one of them.
pub async fn serve_http(
    listener: GuardedListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let limits = listener.limits();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(Some(64))
        .initial_stream_window_size(HTTP2_WINDOW)
        .initial_connection_window_size(HTTP2_WINDOW)
        .max_frame_size(HTTP2_WINDOW);
    let builder = Arc::new(builder);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            io = listener.accept() => {
                let conn = Connection {
                    builder: Arc::clone(&builder),
                    router: router.clone(),
                    stop: stopping.subscribe(),
                };
                let tls = tls.clone();
                let handshake = limits.header_read_timeout;
                connections.spawn(async move {
                    let Some(tls) = tls else {
                        return conn.serve(io).await;
                    };
                    match tokio::time::timeout(handshake, tls.accept(io)).await {
                        Ok(Ok(io)) => conn.serve(io).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake did not finish within header_read_timeout"),
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One accepted HTTP connection, served until it closes or the server stops.
struct Connection {
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    router: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn serve<IO>(mut self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper_util::service::TowerToHyperService::new(self.router);
        let conn = self
            .builder
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
        tokio::pin!(conn);
        let stopping = async move {
            let _ = self.stop.wait_for(|s| *s).await;
        };
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = stopping => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(limits: ConnectionLimits) -> (GuardedListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        (
            GuardedListener::new("test", l, limits, Telemetry::new()),
            addr,
        )
    }

    /// An echo server over guarded connections.
    fn echo(l: GuardedListener) {
        tokio::spawn(async move {
            loop {
                let mut c = l.accept().await;
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    async fn closed_by_server(c: &mut TcpStream) -> bool {
        let mut buf = [0u8; 8];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_silent_connection_makes_room() {
        let limits = ConnectionLimits {
            max_connections: 3,
            ..ConnectionLimits::default()
        };
        let (l, addr) = listener(limits).await;
        let telemetry = l.shared.telemetry.clone();
        echo(l);
        let mut talker = TcpStream::connect(addr).await.expect("connect");
        talker.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        talker.read_exact(&mut buf).await.expect("echo");
        let mut silent_old = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _silent_new = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The fourth: the oldest silent one goes, the one that talked stays.
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_by_server(&mut silent_old).await);
        fourth.write_all(b"ok").await.expect("write");
        fourth.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ok");
        talker.write_all(b"hi").await.expect("write");
        talker.read_exact(&mut buf).await.expect("still served");
        let evicted = telemetry
            .connections_closed
            .with_label_values(&["test", "evicted_silent"])
            .get();
        assert_eq!(evicted, 1);
    }

    #[tokio::test]
    async fn the_eviction_list_stays_bounded_by_twice_the_cap() {
        let limits = ConnectionLimits {
            max_connections: 4,
            ..ConnectionLimits::default()
        };
        let (l, addr) = listener(limits).await;
        let shared = Arc::clone(&l.shared);
        echo(l);
        // 200 connections come, talk and go, and some stay silent a while: the list of candidates for eviction
        // never holds more than twice the cap (plus the one being added).
        for i in 0..200 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            if i % 3 != 0 {
                c.write_all(b"x").await.expect("write");
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.expect("echo");
            }
            drop(c);
            let held = shared.order.lock().map(|o| o.len()).unwrap_or(usize::MAX);
            assert!(held <= 2 * 4 + 1, "{held} slots held after {i} connections");
        }
    }

    #[tokio::test]
    async fn when_every_connection_talks_a_new_one_is_closed_at_once() {
        let limits = ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        };
        let (l, addr) = listener(limits).await;
        echo(l);
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.expect("echo");
            held.push(c);
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_by_server(&mut third).await);
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed_at_their_deadlines() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(400),
            ..ConnectionLimits::default()
        };
        let (l, addr) = listener(limits).await;
        echo(l);
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        assert!(closed_by_server(&mut silent).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut talker = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..4 {
            // Talking more often than the idle timeout keeps it open past both deadlines.
            talker.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            talker.read_exact(&mut b).await.expect("echo");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(
            closed_by_server(&mut talker).await,
            "then silence closes it"
        );
    }
}
