//! Every limit of the API, named, with the reason beside it. The server checks each where
//! it binds and answers past it with the documented error (see `docs/api.md`).

/// Largest request body. A full enqueue batch of small jobs is a few MiB; 32 MiB leaves
/// room for larger payloads while bounding what one request can make the server buffer.
pub const REQUEST_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Open HTTP connections per server (a default: `sluice server --connections-max`).
/// Each costs a file descriptor and a task; 10,000 is half of this machine's `ulimit -n`
/// (20,000), so the WAL, snapshots and the 503 answers past the cap keep descriptors.
/// Past it a new connection is answered 503 `too_many_connections` and closed.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Time a client has to send a complete request head, counted from the moment the
/// connection is open or idle (so it is also the keep-alive idle timeout). Cuts off
/// slowloris clients; long-polls are not affected (no head is being read meanwhile).
/// Past it the connection is closed without an answer (hyper sends none).
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Bytes of a request head (request line and headers, as sent). 16 KiB, as Node.js:
/// several bearer tokens and cookies fit. Past it: 431 `headers_too_large`.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;
/// Header fields in one request. Real clients send about 10 to 20. Past it: 431
/// `headers_too_large`.
pub const HEADERS_LEN_MAX: usize = 64;
/// Largest job payload (JSON text as sent). Jobs carry references, not files.
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Jobs in one enqueue batch (all-or-nothing, one WAL record).
pub const ENQUEUE_BATCH_LEN_MAX: usize = 10_000;
/// Jobs one lease request may take.
pub const LEASE_BATCH_LEN_MAX: u32 = 1_000;
/// Items in one batch ack or fail.
pub const ACK_BATCH_LEN_MAX: usize = 10_000;
/// Queues one lease request may name.
pub const LEASE_QUEUES_LEN_MAX: usize = 100;
/// Longest long-poll; proxies commonly cut idle requests at 60 s.
pub const LONG_POLL_WAIT_MS_MAX: u64 = 30_000;
/// Queue names: 1..=128 bytes of `[A-Za-z0-9_.:-]`.
pub const QUEUE_NAME_BYTES_MAX: usize = 128;
/// Job kinds: 1..=128 bytes of `[A-Za-z0-9_.:-]`.
pub const KIND_BYTES_MAX: usize = 128;
/// Distinct queues; each costs memory even when empty.
pub const QUEUES_MAX: usize = 100_000;
/// A queue's concurrency limit: jobs leased at once across all workers.
pub const QUEUE_CONCURRENCY_MAX: u32 = 1_000_000;
/// A queue's rate limit: leases per window, and the window (at most a day).
pub const RATE_LIMIT_MAX: u32 = 1_000_000;
pub const RATE_PER_MS_MAX: u64 = 24 * 3_600_000;
/// Jobs one move request may move.
pub const MOVE_LEN_MAX: usize = 10_000;
/// A queue's weight in a weighted lease.
pub const QUEUE_WEIGHT_MAX: u32 = 1_000;
/// Cron schedules that may exist.
pub const CRONS_MAX: usize = 10_000;
/// Attempts a job may be given.
pub const MAX_ATTEMPTS_MAX: u32 = 1_000;
/// Default attempts (Sidekiq's default of 25 retries, rounded to attempts).
pub const MAX_ATTEMPTS_DEFAULT: u32 = 25;
/// Lease length per attempt: at least 1 s, at most 1 h; heartbeats extend it.
pub const TIMEOUT_MS_MIN: u64 = 1_000;
pub const TIMEOUT_MS_MAX: u64 = 3_600_000;
pub const TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Delays and run_at: at most one year ahead.
pub const DELAY_MS_MAX: u64 = 366 * 24 * 3_600_000;
/// Backoff parameters: at most one week.
pub const BACKOFF_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// Unique keys.
pub const UNIQUE_KEY_BYTES_MAX: usize = 256;
/// Bytes of a job's limit key (a customer or token id, not a document).
pub const LIMIT_KEY_BYTES_MAX: usize = 256;

/// A limit key: 1 to `LIMIT_KEY_BYTES_MAX` bytes of any text but `.` and `..`, which
/// cannot be a URL path segment (`GET /v1/queues/{queue}/keys/{key}`).
pub fn is_valid_limit_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= LIMIT_KEY_BYTES_MAX && key != "." && key != ".."
}
pub const UNIQUE_TTL_MS_DEFAULT: u64 = 24 * 3_600_000;
pub const UNIQUE_TTL_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// Tags per job and bytes per tag.
pub const TAGS_LEN_MAX: usize = 16;
pub const TAG_BYTES_MAX: usize = 64;
/// Error messages from `fail` are cut (at a char boundary) to this many bytes.
pub const ERROR_BYTES_MAX: usize = 4_096;
/// Progress reported by a heartbeat.
pub const PROGRESS_BYTES_MAX: usize = 4_096;
/// Worker names.
pub const WORKER_BYTES_MAX: usize = 256;
/// Registered workers (`PUT /v1/workers/{name}`); past it 429 `too_many_workers`.
pub const WORKERS_MAX: usize = 10_000;
/// A registered worker's `host` and `version`.
pub const WORKER_HOST_BYTES_MAX: usize = 256;
pub const WORKER_VERSION_BYTES_MAX: usize = 64;
/// A registered worker not heard from for this long (no beat, lease poll or job
/// heartbeat naming it) is gone: it is dropped and its leases end at once. The SDK beats
/// every 5 s.
pub const WORKER_STALE_MS_DEFAULT: u64 = 30_000;
/// Jobs per page when listing; default 100.
pub const LIST_LIMIT_MAX: usize = 1_000;
pub const LIST_LIMIT_DEFAULT: usize = 100;
/// Attempts kept in a job's history (the newest ones).
pub const HISTORY_LEN_MAX: usize = 25;

/// `text` cut to at most `bytes_max` bytes, at a char boundary: how every limit on text
/// that is cut rather than refused (a fail's `error`, a worker name, an excerpt) is applied.
pub fn truncate_utf8(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// True when `name` is a valid queue name or kind: 1..=max bytes of `[A-Za-z0-9_.:-]`,
/// other than `.` and `..`.
pub fn is_valid_name(name: &str, max_bytes: usize) -> bool {
    // `.` and `..` would be path segments that URLs normalise away: such a queue could
    // never be addressed as `/v1/queues/{queue}`.
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= max_bytes
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}
/// Events held for the live subscribers of `GET /v1/events` (one ring shared by all). A
/// subscriber that falls this far behind loses the oldest and is told how many
/// (`lagged`), so a slow browser costs the server no more memory than the ring.
pub const LIVE_EVENTS_BUFFER: usize = 1_024;
/// Concurrent `GET /v1/events` subscribers. Past it: 503 `too_many_subscribers`.
pub const LIVE_SUBSCRIBERS_MAX: usize = 256;
/// A comment line is sent on an idle event stream this often, so that proxies and the
/// client see it is alive.
pub const LIVE_KEEP_ALIVE_MS: u64 = 15_000;
/// Jobs one filtered job listing (`kind`, `tag`) looks at. A page that reaches it before
/// it has `limit` matches is answered short, with a `next_cursor` to go on from: a
/// request's cost stays bounded however rare the matches.
pub const JOB_SCAN_MAX: usize = 10_000;
