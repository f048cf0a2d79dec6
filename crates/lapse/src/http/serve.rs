//! Serving the API: HTTP/1.1 connections from a listener, each on a task of its own, until
//! shutdown; then no new connection is taken and open ones finish what they are answering.
//!
//! hyper's HTTP/1 connection directly rather than `axum::serve`. axum's reads the first bytes
//! of every connection to tell HTTP/2 from HTTP/1 and hands them back to HTTP/1 as a read of
//! their own, which grows the connection's read buffer from 8 to 16 KB for the rest of its
//! life: for an idle event stream, most of what it costs. lapse speaks HTTP/1.1, which is
//! what a proxy in front of it speaks to it. A connection that opens with an event stream is
//! answered without hyper's buffers at all (`stream_conn`).

use std::io;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::stream_conn;

/// Serves `router` on `listener` until `shutdown`, then waits for the connections open at
/// that moment to finish their requests.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let http = http1::Builder::new();
    let open = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let watcher = open.watcher();
        let (http, router, shutdown) = (http.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            // Event streams write small frames one at a time: each goes out as it is
            // written, rather than waiting for the previous one's acknowledgement.
            let _ = stream.set_nodelay(true);
            // Until it ends, this task holds `watcher`: shutdown waits for the answer, but
            // not for a client that has asked nothing yet (as hyper closes an idle one).
            let first = tokio::select! {
                first = stream_conn::stream_request(&mut stream) => first,
                () = shutdown.cancelled() => return,
            };
            if let Some(request) = first
                && stream_conn::answer(&mut stream, request, router.clone()).await
                    == stream_conn::After::Close
            {
                return;
            }
            let service = TowerToHyperService::new(router);
            // Boxed for the same reason as the router's call in `stream_conn::answer`: this
            // task holds room for its largest state, and an open event stream never gets here.
            let connection =
                Box::pin(watcher.watch(http.serve_connection(TokioIo::new(stream), service)));
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    open.shutdown().await;
}

/// A connection that failed before it was accepted costs nothing; anything else (out of file
/// descriptors, say) is logged, and accepting pauses a second rather than spin on it.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
