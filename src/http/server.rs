//! Connections: accepting, admitting, TLS, HTTP/1.1 through hyper, authentication and answers.
//!
//! Admission keeps a slow or idle client from starving a scraper. A connection is *pending*
//! until its TLS handshake and first request head are in; it has [`PENDING_TIMEOUT`] for that,
//! and at most [`MAX_PENDING`] wait at once, the oldest dropped to make room. With its first
//! request head it becomes *established*: at most [`MAX_ESTABLISHED`], and when a new one needs
//! room the one whose last request is oldest is dropped (a keep-alive client just connects
//! again). Accepting never waits for a slot, so a hundred clients that connect and send nothing
//! cost a hundred file descriptors for a few seconds and never delay Prometheus.
//!
//! After the first request, hyper bounds the time between requests and for each request head
//! ([`KEEP_ALIVE_TIMEOUT`]); a client that stops taking an answer is dropped after
//! [`WRITE_TIMEOUT`] (see [`Watched`]). Every failure is counted with its own `error_type`
//! ([`HttpFailure`]); a keep-alive connection that simply goes quiet and is closed is not one.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::auth::{Authenticator, Verdict};
use super::live::{Active, LiveConfig};
use super::routes::{accepts_gzip, route, Answer, Parts};
use super::Routes;
use crate::internal_events::{HttpFailure, HttpRequestError};

/// How long a new connection has for its TLS handshake and its first request head.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections still in their pending time at once; beyond it the oldest is dropped.
pub const MAX_PENDING: usize = 512;
/// Connections past their first request at once; beyond it the longest quiet one is dropped.
pub const MAX_ESTABLISHED: usize = 64;
/// How long an established connection may sit between requests, or take over a request head.
/// Longer than the usual scrape intervals, so a scraper's keep-alive connection lasts.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a client may leave an answer untaken before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head accepted (hyper's smallest read buffer); longer ones get 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// What every connection shares.
pub struct Server {
    routes: Routes,
    web: Option<LiveConfig>,
    /// Whether the listeners speak TLS; fixed at start-up.
    tls: bool,
    auth: Authenticator,
    table: ConnectionTable,
    default: Arc<Active>,
}

impl Server {
    /// A server for `routes`, with the web configuration file's settings when one is given.
    pub fn new(routes: Routes, web: Option<LiveConfig>) -> Server {
        let tls = web.as_ref().is_some_and(|web| web.current().tls.is_some());
        Server {
            routes,
            web,
            tls,
            auth: Authenticator::default(),
            table: ConnectionTable::default(),
            default: Arc::new(Active::default()),
        }
    }

    fn current(&self) -> Arc<Active> {
        match &self.web {
            Some(web) => web.current(),
            None => self.default.clone(),
        }
    }
}

/// Accepts on `listener` until `shutdown`, each connection on a task of its own.
pub async fn accept(listener: TcpListener, server: Arc<Server>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                fail(HttpFailure::AcceptFailed, &error.to_string());
                // Out of file descriptors and the like: wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = server.table.admit(&shutdown);
        tokio::spawn(connection(
            stream,
            server.clone(),
            admitted,
            shutdown.clone(),
        ));
    }
}

fn fail(failure: HttpFailure, reason: &str) {
    HttpRequestError { failure, reason }.emit();
}

/// One connection's place in the [`ConnectionTable`], given up when dropped.
struct Admitted {
    id: u64,
    /// Cancelled when the connection is dropped to make room, or at shutdown.
    token: CancellationToken,
    /// Set once the first request head is in.
    promoted: Arc<AtomicBool>,
}

/// The connections being served, pending and established, for the caps.
#[derive(Default)]
struct ConnectionTable {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    next_request: u64,
    /// Pending connections by id, so the first is the oldest.
    pending: BTreeMap<u64, CancellationToken>,
    /// Established connections: the sequence number of their last request, and their token.
    established: HashMap<u64, (u64, CancellationToken)>,
}

impl ConnectionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(&self, shutdown: &CancellationToken) -> Admitted {
        let mut slots = self.lock();
        if slots.pending.len() >= MAX_PENDING {
            if let Some((_, oldest)) = slots.pending.pop_first() {
                oldest.cancel();
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let token = shutdown.child_token();
        slots.pending.insert(id, token.clone());
        Admitted {
            id,
            token,
            promoted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A request head arrived on connection `id`.
    fn request(&self, id: u64) {
        let mut slots = self.lock();
        let sequence = slots.next_request;
        slots.next_request += 1;
        if let Some((last, _)) = slots.established.get_mut(&id) {
            *last = sequence;
            return;
        }
        let Some(token) = slots.pending.remove(&id) else {
            return;
        };
        if slots.established.len() >= MAX_ESTABLISHED {
            let quietest = slots
                .established
                .iter()
                .min_by_key(|(_, (last, _))| *last)
                .map(|(id, _)| *id);
            if let Some((_, evicted)) = quietest.and_then(|id| slots.established.remove(&id)) {
                evicted.cancel();
            }
        }
        slots.established.insert(id, (sequence, token));
    }

    fn leave(&self, id: u64) {
        let mut slots = self.lock();
        slots.pending.remove(&id);
        slots.established.remove(&id);
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let slots = self.lock();
        (slots.pending.len(), slots.established.len())
    }
}

/// What a connection's requests need to know of it.
struct ConnectionState {
    id: u64,
    promoted: Arc<AtomicBool>,
    /// Bytes read from the client so far, and when the last request head was in.
    read: Arc<AtomicU64>,
    read_at_last_request: AtomicU64,
}

async fn connection(
    stream: TcpStream,
    server: Arc<Server>,
    admitted: Admitted,
    shutdown: CancellationToken,
) {
    let Admitted {
        id,
        token,
        promoted,
    } = admitted;
    let deadline = Instant::now() + PENDING_TIMEOUT;
    let _ = stream.set_nodelay(true);
    let read = Arc::new(AtomicU64::new(0));
    let state = Arc::new(ConnectionState {
        id,
        promoted: promoted.clone(),
        read: read.clone(),
        read_at_last_request: AtomicU64::new(0),
    });
    let outcome = if server.tls {
        let handshake = tls_handshake(stream, &server, read, deadline);
        let tls_stream = tokio::select! {
            _ = token.cancelled() => Err(Ended::Cancelled),
            result = handshake => result,
        };
        match tls_stream {
            Ok(tls_stream) => {
                serve_http(TokioIo::new(tls_stream), &server, &state, &token, deadline).await
            }
            Err(ended) => Err(ended),
        }
    } else {
        let io = TokioIo::new(Watched::new(stream, read));
        serve_http(io, &server, &state, &token, deadline).await
    };
    server.table.leave(id);
    match outcome {
        Ok(()) | Err(Ended::Quiet) => {}
        Err(Ended::Cancelled) if shutdown.is_cancelled() => {}
        Err(Ended::Cancelled) => fail(
            HttpFailure::TooManyConnections,
            if promoted.load(Ordering::Relaxed) {
                "dropped the longest quiet connection to make room"
            } else {
                "dropped the oldest connection still without a request to make room"
            },
        ),
        Err(Ended::Failed(failure, reason)) => fail(failure, &reason),
    }
}

/// Why a connection ended before its client closed it.
enum Ended {
    /// Dropped to make room, or shut down.
    Cancelled,
    /// A failure to count.
    Failed(HttpFailure, String),
    /// Closed without a failure: a keep-alive connection gone quiet, or one that never spoke.
    Quiet,
}

async fn tls_handshake(
    stream: TcpStream,
    server: &Server,
    read: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<tokio_rustls::server::TlsStream<Watched<TcpStream>>, Ended> {
    let timed_out = || Ended::Failed(HttpFailure::Timeout, "no TLS handshake in time".to_owned());
    // A plain HTTP request on the TLS port gets a plain answer saying so, as Go's server gives.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(error)) => {
            return Err(Ended::Failed(
                HttpFailure::ConnectionError,
                error.to_string(),
            ))
        }
        // Closed before saying anything: nothing to serve, nothing to count.
        Ok(Ok(0)) => return Err(Ended::Quiet),
        Ok(Ok(_)) if first[0].is_ascii_uppercase() => {
            answer_plain_http(stream, deadline).await;
            return Err(Ended::Failed(
                HttpFailure::TlsHandshake,
                "a plain HTTP request on the TLS port".to_owned(),
            ));
        }
        Ok(Ok(_)) => {}
    }
    let Some(config) = server.current().tls.clone() else {
        return Err(Ended::Failed(
            HttpFailure::TlsHandshake,
            "no TLS configuration".to_owned(),
        ));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout_at(deadline, acceptor.accept(Watched::new(stream, read))).await {
        Err(_) => Err(timed_out()),
        Ok(Err(error)) => Err(Ended::Failed(HttpFailure::TlsHandshake, error.to_string())),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// Tells a plain HTTP client on the TLS port what went wrong. Its request head is read first:
/// closing a socket with unread data resets the connection, and the client would see no answer.
async fn answer_plain_http(mut stream: TcpStream, deadline: Instant) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_REQUEST_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let answer = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                   Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(answer).await?;
        stream.shutdown().await
    })
    .await;
}

async fn serve_http<I>(
    io: TokioIo<I>,
    server: &Arc<Server>,
    state: &Arc<ConnectionState>,
    token: &CancellationToken,
    deadline: Instant,
) -> Result<(), Ended>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let server = server.clone();
        let state = state.clone();
        hyper::service::service_fn(move |request| {
            let server = server.clone();
            let state = state.clone();
            async move { Ok::<_, Infallible>(answer(&server, &state, request).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(KEEP_ALIVE_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut pending = true;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = token.cancelled() => return Err(Ended::Cancelled),
            _ = tokio::time::sleep_until(deadline), if pending => {
                if state.promoted.load(Ordering::Relaxed) {
                    pending = false;
                } else {
                    return Err(Ended::Failed(
                        HttpFailure::Timeout,
                        "no request in time".to_owned(),
                    ));
                }
            }
        }
    };
    let Err(error) = result else {
        return Ok(());
    };
    Err(classify(&error, state))
}

/// The failure a hyper error stands for. A keep-alive connection closed for silence between
/// requests is no failure.
fn classify(error: &hyper::Error, state: &ConnectionState) -> Ended {
    let failure = if error.is_timeout() {
        let read = state.read.load(Ordering::Relaxed);
        if read == state.read_at_last_request.load(Ordering::Relaxed) {
            return Ended::Quiet;
        }
        HttpFailure::Timeout
    } else if error.is_parse_too_large() {
        HttpFailure::RequestTooLarge
    } else if error.is_parse() || error.is_incomplete_message() {
        HttpFailure::BadRequest
    } else if let Some(io) =
        std::error::Error::source(error).and_then(|source| source.downcast_ref::<io::Error>())
    {
        if io.kind() == io::ErrorKind::TimedOut {
            HttpFailure::Timeout
        } else {
            HttpFailure::ConnectionError
        }
    } else {
        HttpFailure::ConnectionError
    };
    Ended::Failed(failure, error.to_string())
}

/// Answers one request: rate limit, authentication, method, route, headers, encoding.
async fn answer(
    server: &Server,
    state: &ConnectionState,
    request: Request<Incoming>,
) -> Response<Parts> {
    server.table.request(state.id);
    state.promoted.store(true, Ordering::Relaxed);
    state
        .read_at_last_request
        .store(state.read.load(Ordering::Relaxed), Ordering::Relaxed);
    let active = server.current();
    let mut response = respond(server, &active, &request).await;
    for (name, value) in &active.config.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn respond(server: &Server, active: &Active, request: &Request<Incoming>) -> Response<Parts> {
    if active.limiter.as_ref().is_some_and(|l| !l.allow()) {
        fail(HttpFailure::RateLimited, "over the configured rate_limit");
        return plain(Answer::text(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests\n",
        ));
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if server.auth.check(&active.config.users, authorization).await == Verdict::Refused {
        fail(
            HttpFailure::Unauthorized,
            "missing or wrong basic authentication",
        );
        let mut response = plain(Answer::text(StatusCode::UNAUTHORIZED, "Unauthorized\n"));
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        return response;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        fail(HttpFailure::MethodNotAllowed, request.method().as_str());
        let mut response = plain(Answer::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
        ));
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let answer = route(request.uri().path(), &server.routes);
    if !answer.compressible {
        return plain(answer);
    }
    let gzip = request
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(accepts_gzip);
    let (status, content_type) = (answer.status, answer.content_type);
    let mut response = Response::new(answer.encode(gzip));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

fn plain(answer: Answer) -> Response<Parts> {
    let status = answer.status;
    let content_type = answer.content_type;
    let mut response = Response::new(answer.encode(false));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A client socket that counts the bytes it reads and fails a write the client has not taken
/// for [`WRITE_TIMEOUT`], since hyper has no write timeout of its own.
pub struct Watched<S> {
    inner: S,
    read: Arc<AtomicU64>,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Watched<S> {
    fn new(inner: S, read: Arc<AtomicU64>) -> Watched<S> {
        Watched {
            inner,
            read,
            stalled: None,
        }
    }

    /// Passes `poll` through, starting the stall clock when it is pending and failing once the
    /// clock runs out.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not take the answer in time",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.read.fetch_add(read as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_write(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_write(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch_write(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_pending_connection_makes_room() {
        let table = ConnectionTable::default();
        let shutdown = CancellationToken::new();
        let admitted: Vec<Admitted> = (0..MAX_PENDING).map(|_| table.admit(&shutdown)).collect();
        assert_eq!(table.counts(), (MAX_PENDING, 0));
        assert!(admitted.iter().all(|a| !a.token.is_cancelled()));
        let newest = table.admit(&shutdown);
        assert!(admitted[0].token.is_cancelled(), "the oldest was dropped");
        assert!(!admitted[1].token.is_cancelled() && !newest.token.is_cancelled());
        assert_eq!(table.counts(), (MAX_PENDING, 0));
        table.request(newest.id);
        assert_eq!(
            table.counts(),
            (MAX_PENDING - 1, 1),
            "its request made it established"
        );
        table.leave(newest.id);
        assert_eq!(table.counts(), (MAX_PENDING - 1, 0));
    }

    #[test]
    fn the_longest_quiet_established_connection_makes_room() {
        let table = ConnectionTable::default();
        let shutdown = CancellationToken::new();
        let established: Vec<Admitted> = (0..MAX_ESTABLISHED)
            .map(|_| {
                let a = table.admit(&shutdown);
                table.request(a.id);
                a
            })
            .collect();
        // The first connection asks again: the second is now the quietest.
        table.request(established[0].id);
        let newcomer = table.admit(&shutdown);
        table.request(newcomer.id);
        assert!(established[1].token.is_cancelled());
        assert!(!established[0].token.is_cancelled());
        assert!(!newcomer.token.is_cancelled());
        assert_eq!(table.counts(), (0, MAX_ESTABLISHED));
        shutdown.cancel();
        assert!(
            newcomer.token.is_cancelled(),
            "shutdown reaches every connection"
        );
    }
}
