//! Accepting and serving client connections, plain HTTP or TLS, with a
//! bound on each one and on how many are open.
//!
//! ```text
//!  accept loop: take one of max_connections slots (wait while none is free)
//!    --> accept TCP --> one task per connection, holding its slot:
//!          TLS only: ServerTls::handshake (10 s timeout)
//!          hyper HTTP/1.1: request head within header_read_timeout, after
//!            connecting and again after each response (idle keep-alive);
//!            a response the client does not read for request_timeout
//!            closes the connection; the Router's request_timeout and body
//!            limit (408/413) cover the rest of the request
//!          ConnectInfo<SocketAddr> + ClientIdentity put into every request
//!  shutdown: stop accepting, abort handshakes, let every connection finish
//!            its request in flight, close idle ones, then return
//! ```
//!
//! Why one hand-written loop instead of `axum::serve`: `axum::serve` sets
//! no header read timeout and no connection limit, so clients that send
//! half a request head (or nothing, or nothing more after a response) held
//! a task and a descriptor forever, until the process ran out of both.
//! Building the loop on hyper's own connection type gives its header read
//! timeout, and one loop for both transports gives them the same limits,
//! counters and shutdown.
//!
//! **At the limit, accepting waits; it does not refuse.** A CA is in front
//! of every bot's SSH access, and the likely cause of a full house is a
//! flood of slow or idle clients. Closing new connections at once would
//! turn that flood into a certain failure for every bot that connects
//! meanwhile. Waiting leaves new clients in the kernel's listen backlog
//! (where they cost the server no descriptor and no task; [`bind`] asks
//! for a deep one, up to `net.core.somaxconn`), and since no
//! connection can sit idle longer than `header_read_timeout`, a slot frees
//! within that time and the bot is served late rather than not at all.
//! Every pause is counted (`mayfly_connections_limit_reached_total`) and
//! logged at most once a minute, so an operator sees it and can raise
//! `max_connections` (and the process's descriptor limit) if it is load.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::metrics::{ConnectionStats, EarlyClose};
use crate::tls::{ClientIdentity, HandshakeError, ServerTls};

/// Descriptors kept apart from `max_connections` for the listener, the
/// database, key and policy files, audit sinks and JWKS fetches.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Connections the kernel holds for us while accepting waits at the cap
/// (capped by the kernel, `net.core.somaxconn`). The usual 128 would make
/// clients beyond it retry their SYN with growing back-off.
const LISTEN_BACKLOG: u32 = 4096;

/// How often, at most, reaching the connection limit is logged.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The bounds applied to every connection (from `mayfly.toml`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed for a complete request head, after connecting and
    /// after each response.
    pub header_read_timeout: Duration,
    /// Connections open at once, TLS handshakes included.
    pub max_connections: usize,
    /// Longest a response write may wait for the client to read.
    pub write_stall_timeout: Duration,
}

/// Listens on `addr` with a listen backlog deep enough for clients to wait
/// in while `max_connections` are open.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` (over TLS when `tls` is set) within `limits`
/// until `shutdown` completes, then drains: requests in flight finish,
/// idle connections close, handshakes are abandoned.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: Router,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let tls = tls.map(Arc::new);
    let _watch = tls.as_ref().map(|t| t.watch_files());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let (stopping_tx, stopping) = watch::channel(false);
    let mut last_limit_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                stats.limit_reached();
                if last_limit_log.is_none_or(|t| t.elapsed() >= LIMIT_LOG_INTERVAL) {
                    last_limit_log = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new clients wait until a connection closes \
                         (idle ones close after header_read_timeout); if this is load, not an \
                         attack, raise max_connections and the descriptor limit"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = Connection {
            peer,
            router: app.clone(),
            http: http.clone(),
            write_stall_timeout: limits.write_stall_timeout,
            stats: stats.clone(),
            _slot: slot,
        };
        tokio::spawn(conn.run(tcp, tls.clone(), graceful.watcher(), stopping.clone()));
    }
    tracing::info!(
        open = stats.open_now(),
        "no longer accepting connections; draining in-flight requests"
    );
    drop(listener);
    let _ = stopping_tx.send(true);
    graceful.shutdown().await;
    Ok(())
}

/// As `axum::serve` does: connection-level errors are the peer's business;
/// anything else (e.g. out of file descriptors) is logged and retried after
/// a pause.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One accepted connection and what it needs to be served.
struct Connection {
    peer: SocketAddr,
    router: Router,
    http: http1::Builder,
    write_stall_timeout: Duration,
    stats: Arc<ConnectionStats>,
    /// Held until the connection closes: one of `max_connections`.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(
        self,
        tcp: TcpStream,
        tls: Option<Arc<ServerTls>>,
        watcher: Watcher,
        mut stopping: watch::Receiver<bool>,
    ) {
        let _open = self.stats.open();
        let Some(tls) = tls else {
            self.serve_http(tcp, ClientIdentity(None), watcher).await;
            return;
        };
        let handshake = tokio::select! {
            r = tls.handshake(tcp) => r,
            // Shutting down: a connection without a request yet is dropped.
            _ = stopping.wait_for(|s| *s) => return,
        };
        match handshake {
            Ok((stream, identity)) => self.serve_http(stream, identity, watcher).await,
            Err(e) => {
                self.stats.closed_early(match e {
                    HandshakeError::TimedOut(_) => EarlyClose::TlsHandshakeTimeout,
                    HandshakeError::Failed(_) => EarlyClose::TlsHandshakeError,
                });
                tracing::debug!(peer = %self.peer, "{e}");
            }
        }
    }

    async fn serve_http<S>(&self, stream: S, identity: ClientIdentity, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(WriteDeadline::new(stream, self.write_stall_timeout));
        let service = TowerToHyperService::new(ConnService {
            router: self.router.clone(),
            remote: self.peer,
            identity,
        });
        let conn = self.http.serve_connection(io, service);
        let Err(e) = watcher.watch(conn).await else {
            return;
        };
        if e.is_timeout() {
            self.stats.closed_early(EarlyClose::HeaderTimeout);
            tracing::debug!(peer = %self.peer,
                "closed: no complete request head within header_read_timeout");
        } else if is_write_stall(&e) {
            self.stats.closed_early(EarlyClose::WriteStalled);
            tracing::debug!(peer = %self.peer,
                "closed: the client did not read the response within request_timeout");
        } else {
            tracing::debug!(peer = %self.peer, "connection ended with an error: {e}");
        }
    }
}

/// The router, with this connection's `ConnectInfo<SocketAddr>` and
/// [`ClientIdentity`] put into each request.
#[derive(Clone)]
struct ConnService {
    router: Router,
    remote: SocketAddr,
    identity: ClientIdentity,
}

impl tower::Service<hyper::Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as tower::Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <Router as tower::Service<Request>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, req: hyper::Request<Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.remote));
        req.extensions_mut().insert(self.identity.clone());
        self.router.call(req)
    }
}

/// The error a stalled write ends with, to tell it apart in the logs.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing of the response for {0:?}")]
struct WriteStalled(Duration);

fn is_write_stall(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<WriteStalled>())
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// A stream whose writes fail once they have made no progress for
/// `limit`: a client that sends a request and then never reads the answer
/// would otherwise hold its connection for as long as it likes.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Started when a write first found the socket full; cleared by progress.
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// After the inner stream said `Pending`: still pending, or an error
    /// once the stall has lasted `limit`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteStalled(limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(r, cx)
    }
}

/// A warning when `max_connections` does not fit under the process's
/// descriptor limit (`soft_limit`, `RLIMIT_NOFILE`), so that the cap, not
/// the kernel, is what stops new connections.
pub fn descriptor_limit_warning(max_connections: usize, soft_limit: Option<u64>) -> Option<String> {
    let soft = soft_limit?;
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_DESCRIPTORS);
    (needed > soft).then(|| {
        format!(
            "max_connections = {max_connections} plus {RESERVED_DESCRIPTORS} descriptors for \
             files and the database exceeds the open-file limit {soft}: accepting may fail \
             with \"too many open files\". Raise the limit (LimitNOFILE= in the systemd unit, \
             ulimit -n) to at least {needed}, or lower max_connections"
        )
    })
}

/// The soft open-file limit of this process, from `/proc/self/limits`
/// (Linux); `None` when unknown or unlimited.
pub fn descriptor_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_soft_nofile(&text)
}

fn parse_soft_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_soft_open_file_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_soft_nofile(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_soft_nofile(unlimited), None);
        assert_eq!(parse_soft_nofile(""), None);
    }

    #[test]
    fn a_cap_above_the_descriptor_limit_is_warned_about_with_the_fix() {
        assert_eq!(descriptor_limit_warning(1024, Some(65_536)), None);
        assert_eq!(descriptor_limit_warning(1024, None), None);
        assert_eq!(descriptor_limit_warning(960, Some(1024)), None);
        let w = descriptor_limit_warning(1024, Some(1024)).expect("over the limit");
        assert!(w.contains("LimitNOFILE") && w.contains("1088"), "{w}");
    }

    #[tokio::test]
    async fn a_write_the_client_never_reads_fails_after_the_limit() {
        let (server, _client) = tokio::io::duplex(64);
        let mut s = WriteDeadline::new(server, Duration::from_millis(200));
        let r = tokio::time::timeout(Duration::from_secs(30), s.write_all(&[0u8; 4096]))
            .await
            .expect("the write must fail, not hang");
        let err = r.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.get_ref().is_some_and(|e| e.is::<WriteStalled>()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
        let (server, mut client) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 32 * 1024 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                got += client.read(&mut buf).await.expect("read");
            }
            got
        });
        // Longer in total than the limit; no single stall is.
        let mut s = WriteDeadline::new(server, Duration::from_secs(1));
        s.write_all(&[0u8; 32 * 1024])
            .await
            .expect("progress resets the limit");
        assert_eq!(reader.await.expect("reader"), 32 * 1024);
    }
}
