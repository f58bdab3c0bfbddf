//! The API's HTTP server: hyper serving the poem application, with the bounds poem's own
//! `Server` does not set, so that no client can hold a socket open for long: a time limit on
//! sending request headers (a client that sends nothing at all included), on writing each answer
//! (`write_deadline`), on keep-alive idling and on a connection's whole life; a bounded wait
//! when a connection is told to close; and a cap on concurrent connections (further clients wait
//! in the kernel's accept backlog). The body read limit is applied by the middleware, which
//! answers 408. HTTP/2 in clear text (h2c) is served only when enabled, with its own stream cap
//! and keep-alive pings; otherwise an HTTP/2 preface closes the connection at once.

mod write_deadline;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use poem::{Endpoint, endpoint::BoxEndpoint, http::uri::Scheme, web::LocalAddr};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// The pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// How often an HTTP/2 connection is pinged; an unanswered ping closes it after
/// `response_write_timeout`.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// The kernel's send buffer per connection (it doubles the figure for its bookkeeping). Linux
/// would otherwise grow it to megabytes on a fast link, so a client that never reads would
/// park a whole large answer in kernel memory; answers here are small, and /docs streams out
/// through this at full speed to any client that reads.
const SEND_BUFFER_BYTES: u32 = 64 * 1024;

/// The listening socket: accepted connections inherit its bounded send buffer.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(SEND_BUFFER_BYTES)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How long a client may take, and how many may connect at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From the first byte of a request to the end of its headers; also how long a new
    /// connection may stay silent before its first request.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub keep_alive_timeout: Duration,
    /// From the first write that finds the socket full to the whole answer written.
    pub response_write_timeout: Duration,
    /// A connection's whole life; then it finishes what is in flight and closes.
    pub max_age: Duration,
    /// What a connection told to close (idle, too old) gets to finish its request in flight.
    pub drain_timeout: Duration,
    pub max_connections: usize,
    /// `Some(streams per connection)`: HTTP/2 in clear text is served.
    pub http2_cleartext: Option<u32>,
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets requests in
/// flight finish within `grace`, and closes the rest.
pub async fn serve(
    listener: TcpListener,
    app: BoxEndpoint<'static>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> std::io::Result<()> {
    let app: Arc<BoxEndpoint<'static>> = Arc::new(app);
    let local = listener.local_addr()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        // At the cap, wait for a connection to end before accepting another.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, stopping) = (app.clone(), stopping.clone());
        connections.spawn(async move {
            connection(stream, local, peer, app, limits, stopping, grace).await;
            drop(permit);
        });
    }
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    app: Arc<BoxEndpoint<'static>>,
    limits: ConnectionLimits,
    stopping: CancellationToken,
    grace: Duration,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let activity = Arc::new(Notify::new());
    let service = hyper::service::service_fn({
        let (in_flight, activity) = (in_flight.clone(), activity.clone());
        move |req: hyper::Request<Incoming>| {
            let (app, in_flight, activity) = (app.clone(), in_flight.clone(), activity.clone());
            async move {
                in_flight.fetch_add(1, Ordering::SeqCst);
                activity.notify_one();
                let req: poem::Request = (
                    req,
                    LocalAddr(local.into()),
                    poem::web::RemoteAddr(peer.into()),
                    Scheme::HTTP,
                )
                    .into();
                let resp = app.get_response(req).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                activity.notify_one();
                Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, std::io::Error>>::from(
                    resp,
                ))
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    if let Some(streams) = limits.http2_cleartext {
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(streams)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(limits.response_write_timeout);
    } else {
        // HTTP/1.1 only: an HTTP/2 preface is a parse error that closes the connection.
        builder = builder.http1_only();
    }
    let io = TokioIo::new(write_deadline::WriteDeadline::new(
        stream,
        limits.response_write_timeout,
    ));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle = async {
        // Until its first request a connection may be silent only as long as a request's
        // headers may take; then the keep-alive limit applies between requests.
        let mut limit = limits.header_read_timeout;
        loop {
            if in_flight.load(Ordering::SeqCst) == 0 {
                let woke = tokio::time::timeout(limit, activity.notified());
                if woke.await.is_err() && in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
            } else {
                activity.notified().await;
            }
            limit = limits.keep_alive_timeout;
        }
    };
    let drain = tokio::select! {
        _ = &mut conn => return,
        _ = idle => limits.drain_timeout,
        _ = tokio::time::sleep(limits.max_age) => limits.drain_timeout,
        _ = stopping.cancelled() => grace,
    };
    // Finish what is in flight, then close; a client that stalls even that is dropped.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(drain, conn).await;
}
