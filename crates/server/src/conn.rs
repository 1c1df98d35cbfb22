//! The accept loop: HTTP/1 connections served by hyper with the limits `axum::serve`
//! lacks — a cap on open connections, a header-read (and keep-alive idle) timeout, and
//! bounds on the request head.
//!
//! Past the connection cap a new connection is accepted, answered `503`
//! `too_many_connections` in the API's error format and closed, rather than left in the
//! kernel's accept queue: a client then gets a clear error it can retry on (with
//! `Retry-After`) instead of a connect that hangs until its own timeout, which is what
//! "stop accepting" looks like from outside. Those answers are bounded too
//! ([`REJECTING_MAX`] at once, each at most [`REJECT_LINGER`]); past that a connection is
//! closed at once.
//!
//! Long-polls are not cut: hyper's header timer runs only while a request head is being
//! read, and nothing is read on a connection while its request is being answered.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sluice_proto::{limits, ErrorBody, ErrorResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::error::ApiError;

/// Hyper's own bound on a request head, a backstop behind [`limits::HEADER_BYTES_MAX`]
/// (which is checked with the headers parsed, so that it can answer in the API's error
/// format). A head over this one gets hyper's bare `431` with an empty body, and the
/// connection is closed.
pub const HEADER_BYTES_HARD_MAX: usize = 4 * limits::HEADER_BYTES_MAX;
/// Hyper's own bound on header fields, behind [`limits::HEADERS_LEN_MAX`]; past it hyper
/// answers a bare `431`. 100 is hyper's default and keeps its header array on the stack.
pub const HEADERS_LEN_HARD_MAX: usize = 100;
/// Connections being answered `503 too_many_connections` at once; past it a connection
/// over the cap is closed without an answer.
pub const REJECTING_MAX: usize = 256;
/// Longest a connection over the cap is kept: to read its request head (so that closing
/// does not reset the connection before the client reads the answer), answer, and wait
/// for the client to close.
pub const REJECT_LINGER: Duration = Duration::from_secs(2);
/// File descriptors kept for everything but connections (WAL segments, snapshots, the
/// lock file, the runtime, logs).
pub const FD_RESERVE: usize = 256;
/// Pause after an accept error that is not about one connection (out of file
/// descriptors, say), so that the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What [`serve`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub connections_max: usize,
    pub header_read_timeout: Duration,
}

/// Accepts connections on `listener` and serves `router` on each until `stop` turns
/// true; then stops accepting (the listener is closed), asks every connection to close
/// once its in-flight request is answered, and returns when all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let connections_max = limits.connections_max.clamp(1, Semaphore::MAX_PERMITS);
    let connections_max = u32::try_from(connections_max).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(connections_max as usize));
    let rejecting = Arc::new(Semaphore::new(REJECTING_MAX));
    let rejection = rejection_response(connections_max);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(HEADER_BYTES_HARD_MAX)
        .max_headers(HEADERS_LEN_HARD_MAX)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let service = TowerToHyperService::new(router);

    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        // Small replies must not wait on Nagle's algorithm for an ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let builder = builder.clone();
                let service = service.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let mut conn = std::pin::pin!(conn);
                    let mut stopping = false;
                    let result = loop {
                        tokio::select! {
                            result = conn.as_mut() => break result,
                            _ = stop.wait_for(|s| *s), if !stopping => {
                                // Finish the request in flight, then close; an idle
                                // connection closes at once.
                                stopping = true;
                                conn.as_mut().graceful_shutdown();
                            }
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Err(_) => match rejecting.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracing::debug!(connections_max, "connection over the cap: answering 503");
                    let rejection = rejection.clone();
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(REJECT_LINGER, reject(stream, &rejection)).await;
                        drop(permit);
                    });
                }
                Err(_) => drop(stream),
            },
        }
    }
    drop(listener);
    // Every connection holds a slot until it has closed.
    let _ = slots.acquire_many(connections_max).await;
}

/// Reads the request head (bounded), answers `response`, half-closes, and reads until the
/// client closes: closing with unread bytes would reset the connection, and the client
/// could lose the answer.
async fn reject(mut stream: TcpStream, response: &[u8]) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") || head.len() > HEADER_BYTES_HARD_MAX {
            break;
        }
    }
    stream.write_all(response).await?;
    stream.shutdown().await?;
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// The whole HTTP/1.1 answer to a connection over the cap.
fn rejection_response(connections_max: u32) -> Arc<[u8]> {
    let body = ErrorResponse {
        error: ErrorBody {
            code: "too_many_connections".into(),
            message: format!(
                "the server has its limit of {connections_max} open connections; retry later"
            ),
            details: Vec::new(),
        },
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

/// Errors that concern one connection only; the next accept may well succeed.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Middleware: a request head over [`limits::HEADER_BYTES_MAX`] or
/// [`limits::HEADERS_LEN_MAX`] gets 431 `headers_too_large`. The size counts the request
/// line and each `name: value\r\n` as sent in HTTP/1.1.
pub async fn check_head(request: Request, next: Next) -> Response {
    let headers = request.headers();
    if headers.len() > limits::HEADERS_LEN_MAX {
        return headers_too_large(format!(
            "{} header fields; the limit is {}",
            headers.len(),
            limits::HEADERS_LEN_MAX
        ));
    }
    let request_line = request.method().as_str().len()
        + 1
        + request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len();
    let bytes = request_line
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
        + 2;
    if bytes > limits::HEADER_BYTES_MAX {
        return headers_too_large(format!(
            "the request head is {bytes} bytes; the limit is {}",
            limits::HEADER_BYTES_MAX
        ));
    }
    next.run(request).await
}

fn headers_too_large(message: String) -> Response {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        message,
    )
    .into_response()
}

/// Raises the soft limit on open files to `wanted` (at most the hard limit) and returns
/// the soft limit now in force, or `None` where it cannot be read.
#[cfg(unix)]
pub fn raise_open_files_limit(wanted: u64) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else {
        return None; // unlimited
    };
    if current >= wanted {
        return Some(current);
    }
    let target = limit.maximum.map_or(wanted, |hard| wanted.min(hard));
    if target <= current {
        return Some(current);
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(from = current, to = target, "raised the open-file limit");
            Some(target)
        }
        Err(error) => {
            tracing::warn!(%error, current, "cannot raise the open-file limit");
            Some(current)
        }
    }
}

#[cfg(not(unix))]
pub fn raise_open_files_limit(_wanted: u64) -> Option<u64> {
    None
}

/// The connection cap that the open-file limit allows: `connections_max`, lowered (with
/// a warning) when the process may not open that many files plus [`REJECTING_MAX`] and
/// [`FD_RESERVE`]. Past a lowered cap clients still get the 503, not a failed accept.
pub fn effective_connections_max(connections_max: usize) -> usize {
    let connections_max = connections_max.max(1);
    let wanted = connections_max + REJECTING_MAX + FD_RESERVE;
    match raise_open_files_limit(wanted as u64) {
        Some(soft) if (soft as usize) < wanted => {
            let allowed = (soft as usize)
                .saturating_sub(REJECTING_MAX + FD_RESERVE)
                .max(1);
            tracing::warn!(
                open_files_limit = soft,
                connections_max,
                allowed,
                "the open-file limit (ulimit -n) is too low for connections_max; capping \
                 connections lower"
            );
            allowed
        }
        _ => connections_max,
    }
}
