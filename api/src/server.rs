//! The API's HTTP server: hyper (HTTP/1.1 and HTTP/2) serving the poem application, with the
//! bounds poem's own `Server` does not set, so slow or idle clients cannot hold sockets:
//! a time limit on reading request headers, a keep-alive idle limit, and a cap on concurrent
//! connections (further clients wait in the kernel's accept backlog). The body read limit is
//! applied by the middleware, which answers 408.

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

/// How long a client may take, and how many may connect at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
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
            connection(stream, local, peer, app, limits, stopping).await;
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
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = async {
        loop {
            if in_flight.load(Ordering::SeqCst) == 0 {
                let woke = tokio::time::timeout(limits.keep_alive_timeout, activity.notified());
                if woke.await.is_err() && in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
            } else {
                activity.notified().await;
            }
        }
    };
    tokio::select! {
        _ = &mut conn => return,
        _ = idle => {}
        _ = stopping.cancelled() => {}
    }
    // Finish what is in flight, then close.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
