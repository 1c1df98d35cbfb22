//! The connection-level limits (see `docs/api.md`, Limits): each is driven just past its
//! bound against a real server in-process, over raw TCP where the client's own HTTP
//! stack would hide what the server does, while a normal client checks that it keeps
//! being served.

#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_proto::limits;
use sluice_server::conn::{HEADERS_LEN_HARD_MAX, HEADER_BYTES_HARD_MAX};
use sluice_server::ServerConfig;
use support::{wait_until, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on anything that should be prompt, for a loaded 2-core CI machine.
const PROMPT: Duration = Duration::from_secs(1);

async fn start(config: impl FnOnce(&mut ServerConfig)) -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server_config = ServerConfig::new(dir.path());
    config(&mut server_config);
    let server = TestServer::start_with(server_config).await;
    (dir, server)
}

fn address(server: &TestServer) -> String {
    server
        .base_url
        .strip_prefix("http://")
        .expect("base_url is http")
        .to_owned()
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(address(server))
        .await
        .expect("connect to the server")
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (head, then `content-length` bytes of body); `None` when the
/// server closed (or reset) the connection before a full head.
async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let mut response = RawResponse {
        status,
        head,
        body: buf[head_end..].to_vec(),
    };
    let length: usize = response
        .header("content-length")
        .map_or(0, |v| v.parse().expect("content-length is a number"));
    while response.body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => response.body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(response)
}

/// True once the server has closed `stream` (EOF or reset), reading what else it sends.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

async fn get_healthz(stream: &mut TcpStream) -> Option<RawResponse> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: sluice\r\n\r\n")
        .await
        .ok()?;
    read_response(stream).await
}

// ---- header-read timeout ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_at_the_header_timeout_while_a_normal_client_is_served() {
    let timeout_ms = 1_000;
    let (_dir, server) = start(|c| c.header_read_timeout_ms = timeout_ms).await;

    // 20 clients send a request head byte by byte, one byte every 100 ms: always busy,
    // never done. Each reports how long the server let it talk.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let address = address(&server);
            tokio::spawn(async move {
                let stream = TcpStream::connect(address).await.expect("connect");
                let started = Instant::now();
                let (mut reader, mut writer) = stream.into_split();
                let dripping = tokio::spawn(async move {
                    let head = b"GET /healthz HTTP/1.1\r\nhost: sluice\r\nx-slow: ";
                    for &byte in head.iter().chain(std::iter::repeat(&b'a')) {
                        if writer.write_all(&[byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                let mut chunk = [0u8; 1024];
                let answered = matches!(reader.read(&mut chunk).await, Ok(n) if n > 0);
                dripping.abort();
                (started.elapsed(), answered)
            })
        })
        .collect();

    // Meanwhile a normal client keeps getting prompt answers.
    let mut served = 0;
    let until = Instant::now() + Duration::from_millis(2 * timeout_ms);
    while Instant::now() < until {
        let sent = Instant::now();
        let (status, _) = server.get("/healthz").await;
        assert_eq!(status, 200);
        assert!(
            sent.elapsed() < PROMPT,
            "normal request took {:?}",
            sent.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 10, "only {served} normal requests served");

    for task in slow {
        let (lasted, answered) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("slow client cut off within 10 s")
            .expect("slow client task");
        assert!(!answered, "a slow client got an answer");
        assert!(
            lasted >= Duration::from_millis(timeout_ms - 100)
                && lasted < Duration::from_millis(timeout_ms) + Duration::from_secs(3),
            "slow client was cut after {lasted:?}, timeout {timeout_ms} ms"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let timeout_ms = 500;
    let (_dir, server) = start(|c| c.header_read_timeout_ms = timeout_ms).await;
    let mut stream = connect(&server).await;
    let response = get_healthz(&mut stream).await.expect("an answer");
    assert_eq!(response.status, 200);
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_by_server(&mut stream))
        .await
        .expect("idle connection closed within 5 s");
    assert!(closed);
    assert!(
        idle.elapsed() >= Duration::from_millis(timeout_ms - 50),
        "closed after {:?}, before the {timeout_ms} ms timeout",
        idle.elapsed()
    );
    server.stop().await;
}

// ---- request head size and count ----------------------------------------------------------

/// A request head of exactly `bytes` bytes, the bulk in one `x-big` header.
fn head_of(bytes: usize) -> Vec<u8> {
    let fixed = "GET /healthz HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\nx-big: \r\n\r\n";
    let filler = bytes
        .checked_sub(fixed.len())
        .expect("room for the fixed part");
    format!(
        "GET /healthz HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\nx-big: {}\r\n\r\n",
        "a".repeat(filler)
    )
    .into_bytes()
}

/// A request head with `count` header fields in all.
fn head_with_fields(count: usize) -> Vec<u8> {
    let mut head = String::from("GET /healthz HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\n");
    for i in 2..count {
        head.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

async fn send_raw(server: &TestServer, request: &[u8]) -> Option<RawResponse> {
    let mut stream = connect(server).await;
    stream.write_all(request).await.expect("request sent");
    read_response(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_one_byte_over_header_bytes_max_is_431_headers_too_large() {
    let (_dir, server) = start(|_| {}).await;
    let at = send_raw(&server, &head_of(limits::HEADER_BYTES_MAX))
        .await
        .expect("an answer");
    assert_eq!(at.status, 200, "a head of exactly the limit is served");

    let over = send_raw(&server, &head_of(limits::HEADER_BYTES_MAX + 1))
        .await
        .expect("an answer");
    assert_eq!(over.status, 431);
    assert!(over
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/json")));
    let body = over.json();
    assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
    assert!(body["error"]["message"].is_string());

    // The same through an ordinary client.
    let reply = server
        .client
        .get(server.url("/healthz"))
        .header("x-big", "a".repeat(limits::HEADER_BYTES_MAX))
        .send()
        .await
        .expect("sent");
    assert_eq!(reply.status(), 431);
    let body: Value = reply.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], "headers_too_large");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_header_field_over_headers_len_max_is_431_headers_too_large() {
    let (_dir, server) = start(|_| {}).await;
    let at = send_raw(&server, &head_with_fields(limits::HEADERS_LEN_MAX))
        .await
        .expect("an answer");
    assert_eq!(at.status, 200, "exactly the limit of fields is served");
    let over = send_raw(&server, &head_with_fields(limits::HEADERS_LEN_MAX + 1))
        .await
        .expect("an answer");
    assert_eq!(over.status, 431);
    assert_eq!(over.json()["error"]["code"], "headers_too_large");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_hypers_own_head_bounds_the_answer_is_a_bare_431_and_the_connection_closes() {
    let (_dir, server) = start(|_| {}).await;
    // Too many fields for hyper's parser.
    let mut stream = connect(&server).await;
    stream
        .write_all(&head_with_fields(HEADERS_LEN_HARD_MAX + 1))
        .await
        .expect("sent");
    let response = read_response(&mut stream).await.expect("an answer");
    assert_eq!(response.status, 431);
    assert!(response.body.is_empty(), "hyper's answer has no body");
    assert!(closed_by_server(&mut stream).await);

    // A head that reaches hyper's byte bound unfinished (exactly that many bytes, so
    // that nothing is left unread when the server closes).
    let mut stream = connect(&server).await;
    let mut head = b"GET /healthz HTTP/1.1\r\nhost: sluice\r\nx-big: ".to_vec();
    head.resize(HEADER_BYTES_HARD_MAX, b'a');
    stream.write_all(&head).await.expect("sent");
    let response = read_response(&mut stream).await.expect("an answer");
    assert_eq!(response.status, 431);
    assert!(closed_by_server(&mut stream).await);

    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200, "the server still serves others");
    server.stop().await;
}

// ---- connection cap -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_cap_is_503_too_many_connections_while_open_ones_keep_working() {
    let cap = 4;
    let (_dir, mut server) = start(|c| c.connections_max = cap).await;
    // The test client's pool holds connections from the readiness polls: drop it, and
    // take every slot with raw connections (retrying until the server has seen the
    // pooled ones close), so that what follows does not depend on the pool.
    server.client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut open = Vec::new();
    let deadline = Instant::now() + support::POLL_DEADLINE;
    while open.len() < cap {
        assert!(
            Instant::now() < deadline,
            "could not hold all {cap} connections"
        );
        let mut stream = connect(&server).await;
        match get_healthz(&mut stream).await {
            Some(response) if response.status == 200 => open.push(stream),
            _ => {
                // A pooled connection still holds a slot: start again.
                open.clear();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // One past the cap: a clear error, then the server closes.
    let mut extra = connect(&server).await;
    let response = get_healthz(&mut extra).await.expect("an answer");
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(response.header("retry-after").is_some());
    let body = response.json();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert!(body["error"]["message"].is_string());
    assert!(closed_by_server(&mut extra).await);

    // An ordinary client gets the same answer.
    let other = reqwest::Client::new();
    let reply = other
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert_eq!(reply.status(), 503);
    let body: Value = reply.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], "too_many_connections");

    // The connections already open keep being served.
    for stream in &mut open {
        let response = get_healthz(stream).await.expect("an answer");
        assert_eq!(response.status, 200);
    }

    // Closing one frees its slot.
    drop(open.pop());
    let freed = wait_until("a new connection is served again", || async {
        let mut stream = connect(&server).await;
        get_healthz(&mut stream)
            .await
            .is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(freed, "the slot of a closed connection was not freed");
    drop(open);
    server.stop().await;
}

// ---- long-polls -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_long_polls_are_all_answered_and_an_enqueue_meanwhile_is_prompt() {
    const POLLS: usize = 1_000;
    const WAIT_MS: u64 = 2_000;
    // A header timeout well under wait_ms: a long-poll must not be cut by it.
    let (_dir, server) = start(|c| c.header_read_timeout_ms = 500).await;
    let pollers = reqwest::Client::new();
    let started = Instant::now();
    let polls: Vec<_> = (0..POLLS)
        .map(|_| {
            let request = pollers
                .post(server.url("/v1/lease"))
                .json(&json!({ "queues": ["lp"], "wait_ms": WAIT_MS, "worker": "w" }));
            tokio::spawn(async move {
                let sent = Instant::now();
                let reply = request.send().await.expect("long-poll sent");
                let status = reply.status().as_u16();
                let body: Value = reply.json().await.expect("JSON body");
                (status, body, sent.elapsed())
            })
        })
        .collect();
    // Let the long-polls connect and park.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent = Instant::now();
    server
        .enqueue(json!({ "queue": "other", "kind": "k", "payload": {} }))
        .await;
    let enqueue_took = sent.elapsed();
    // One job for the pollers: exactly one of them gets it.
    server
        .enqueue(json!({ "queue": "lp", "kind": "k", "payload": {} }))
        .await;
    let enqueued_at = started.elapsed();
    eprintln!("enqueue took {enqueue_took:?} beside {POLLS} long-polls");
    assert!(
        enqueue_took < PROMPT,
        "an enqueue took {enqueue_took:?} beside {POLLS} long-polls"
    );
    assert!(
        enqueued_at < Duration::from_millis(WAIT_MS),
        "enqueues done {enqueued_at:?} after the long-polls began; their wait is {WAIT_MS} ms"
    );

    let mut leased = 0;
    for poll in polls {
        let (status, body, took) = tokio::time::timeout(Duration::from_secs(30), poll)
            .await
            .expect("every long-poll is answered")
            .expect("long-poll task");
        assert_eq!(status, 200, "{body}");
        let jobs = body["jobs"].as_array().expect("jobs").len();
        leased += jobs;
        if jobs == 0 {
            assert!(
                took >= Duration::from_millis(WAIT_MS - 10),
                "an empty long-poll returned after {took:?}, before wait_ms"
            );
        }
    }
    assert_eq!(leased, 1, "the one job went to exactly one long-poll");
    server.stop().await;
}
