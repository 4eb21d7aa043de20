//! The AWS emulator the AWS-backend tests run against, and a fault-injecting proxy.
//!
//! `moto_server` must be listening at `TRIPFLOW_TEST_AWS_ENDPOINT` (default
//! `http://127.0.0.1:5000`); `bash .ci/run` installs and starts it. When it is not there
//! the tests fail with a message saying how to start it: they never skip.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tripflow::backend::aws::Aws;

/// The emulator's endpoint.
pub fn endpoint() -> String {
    std::env::var("TRIPFLOW_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_owned()
}

/// Panics, saying how to start it, unless the emulator answers.
pub fn require() -> String {
    require_at(&endpoint(), "the AWS emulator", "`moto_server -H 127.0.0.1 -p 5000`", "TRIPFLOW_TEST_AWS_ENDPOINT")
}

/// Panics unless something listens at `url`, saying how to start `what` (with `start`)
/// or which variable points at one.
pub fn require_at(url: &str, what: &str, start: &str, variable: &str) -> String {
    if std::net::TcpStream::connect(host_port(url)).is_err() {
        panic!(
            "{what} is not running at {url}: start it with {start} (bash .ci/run installs and \
             starts it), or point {variable} at one"
        );
    }
    url.to_owned()
}

/// An AWS configuration pointed at the emulator.
pub fn aws() -> Aws {
    Aws::for_endpoint(&require())
}

/// A name no other test (or earlier run against the same emulator) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The environment that points the `tripflow` binary at the emulator (or at `url`).
pub fn cli_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", url.to_owned()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests answered with a throttling error.
    pub throttled: AtomicU64,
    /// Requests answered with a 500.
    pub errors: AtomicU64,
    /// Requests forwarded after a pause.
    pub slowed: AtomicU64,
    /// Connections dropped before forwarding.
    pub dropped_before: AtomicU64,
    /// Connections dropped after forwarding (the request took effect, its answer is lost).
    pub dropped_after: AtomicU64,
    /// GetRecords calls seen.
    pub get_records: AtomicU64,
    /// GetRecords answered with ExpiredIteratorException.
    pub expired: AtomicU64,
    /// DynamoDB Query calls seen.
    pub queries: AtomicU64,
    /// BatchWriteItem calls of more than one item seen.
    pub batch_writes: AtomicU64,
    /// BatchWriteItem calls of which only the first half of the items was forwarded,
    /// the rest answered as UnprocessedItems.
    pub unprocessed: AtomicU64,
}

/// Which requests a proxy faults, and how.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    rate: f64,
    seed: u64,
    /// Every this many GetRecords answer ExpiredIteratorException (0: never).
    expire_every: u64,
    /// Only DynamoDB's requests are faulted (the rest pass), and a faulted BatchWriteItem
    /// may also come back with half its items unprocessed.
    dynamodb_only: bool,
    /// DynamoDB's answers lose their ConsumedCapacity, as from a service that reports none.
    hide_capacity: bool,
}

/// A proxy in front of the emulator that faults a share of the requests: throttling
/// errors, 500s, slow answers and dropped connections, in equal parts.
pub struct FaultProxy {
    /// The URL to send requests to.
    pub url: String,
    /// What it did so far.
    pub counts: Arc<FaultCounts>,
}

impl FaultProxy {
    /// Starts the proxy in front of `upstream`, faulting `rate` of the requests.
    pub async fn start(upstream: &str, rate: f64, seed: u64) -> Self {
        Self::start_with(upstream, Faults { rate, seed, ..Faults::default() }).await
    }

    /// Starts a proxy that faults `rate` of DynamoDB's requests (and passes the other
    /// services' untouched): besides the faults of [`FaultProxy::start`], a faulted
    /// BatchWriteItem may have half its items left unprocessed.
    pub async fn dynamodb(upstream: &str, rate: f64, seed: u64) -> Self {
        Self::start_with(upstream, Faults { rate, seed, dynamodb_only: true, ..Faults::default() }).await
    }

    /// Starts a proxy that faults nothing, but takes ConsumedCapacity out of DynamoDB's
    /// answers.
    pub async fn without_capacity(upstream: &str) -> Self {
        Self::start_with(upstream, Faults { hide_capacity: true, ..Faults::default() }).await
    }

    /// Starts a proxy that answers every `every`-th GetRecords with
    /// ExpiredIteratorException (which moto itself never sends), and faults nothing else.
    pub async fn expiring_iterators(upstream: &str, every: u64) -> Self {
        Self::start_with(upstream, Faults { expire_every: every, ..Faults::default() }).await
    }

    async fn start_with(upstream: &str, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(FaultCounts::default());
        let upstream = host_port(upstream);
        let rng = Arc::new(std::sync::Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(faults.seed)));
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (upstream, counts, rng) = (upstream.clone(), c.clone(), rng.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &upstream, faults, &counts, &rng).await;
                });
            }
        });
        FaultProxy { url, counts }
    }

    /// Requests faulted so far.
    pub fn faulted(&self) -> u64 {
        let c = &self.counts;
        [&c.throttled, &c.errors, &c.slowed, &c.dropped_before, &c.dropped_after, &c.unprocessed]
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests that failed, or did part of their work, so far: every fault but a slow
    /// answer.
    pub fn failed(&self) -> u64 {
        self.faulted() - self.counts.slowed.load(Ordering::Relaxed)
    }
}

/// Reads one HTTP/1.1 request (head and Content-Length body), or `None` at EOF.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 65536];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Ok(Some((head, body)))
}

/// The request with `Connection: close`, so the emulator's answer ends at EOF.
fn closing(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = String::new();
    for line in head.trim_end().lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn error_response(status: &str, json_target: bool, code: &str) -> Vec<u8> {
    let (content_type, body) = if json_target {
        ("application/x-amz-json-1.0", format!(r#"{{"__type":"{code}","message":"injected by the test proxy"}}"#))
    } else {
        (
            "application/xml",
            format!(
                "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
            ),
        )
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nx-amzn-ErrorType: {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Half of a BatchWriteItem's items (at least one kept), and the other half, by table:
/// the body the proxy forwards, and what it says DynamoDB left unprocessed.
fn split_batch(body: &[u8]) -> Option<(Vec<u8>, serde_json::Value)> {
    let mut request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut left = serde_json::Map::new();
    for (table, items) in request["RequestItems"].as_object_mut()? {
        let items = items.as_array_mut()?;
        let kept = items.len().div_ceil(2);
        if items.len() > kept {
            left.insert(table.clone(), serde_json::Value::Array(items.split_off(kept)));
        }
    }
    (!left.is_empty()).then(|| (serde_json::to_vec(&request).unwrap(), serde_json::Value::Object(left)))
}

/// `head` with its Content-Length set to `length`.
fn with_length(head: &str, length: usize) -> String {
    let mut out = String::new();
    for line in head.trim_end().lines() {
        if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    out
}

/// A JSON answer as `edit` changes its body (`edit` is given the status line and says
/// whether it changed anything): a new answer with its own length, as the old checksum
/// header would no longer match. The answer as it was when its body is not a JSON
/// object, comes in chunks, or was not changed.
fn rewritten(
    answer: &[u8],
    edit: impl FnOnce(&str, &mut serde_json::Map<String, serde_json::Value>) -> bool,
) -> Vec<u8> {
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status = head.lines().next().unwrap_or_default().to_owned();
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&answer[head_end..]) else {
        return answer.to_vec();
    };
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") || !edit(&status, &mut body) {
        return answer.to_vec();
    }
    let body = serde_json::to_vec(&body).unwrap();
    let mut bytes = format!(
        "{status}\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// DynamoDB's answer to the forwarded half of a batch, with the other half added to its
/// UnprocessedItems.
fn with_unprocessed(answer: &[u8], left: serde_json::Value) -> Vec<u8> {
    rewritten(answer, |status, body| {
        if !status.starts_with("HTTP/1.1 200") {
            return false;
        }
        let unprocessed = body.entry("UnprocessedItems").or_insert_with(|| serde_json::json!({}));
        for (table, items) in left.as_object().unwrap() {
            let list =
                unprocessed.as_object_mut().unwrap().entry(table.clone()).or_insert_with(|| serde_json::json!([]));
            list.as_array_mut().unwrap().extend(items.as_array().unwrap().iter().cloned());
        }
        true
    })
}

/// A DynamoDB answer without its ConsumedCapacity.
fn without_consumed_capacity(answer: &[u8]) -> Vec<u8> {
    rewritten(answer, |_, body| body.remove("ConsumedCapacity").is_some())
}

async fn serve(
    mut conn: TcpStream,
    upstream: &str,
    faults: Faults,
    counts: &FaultCounts,
    rng: &std::sync::Mutex<rand_chacha::ChaCha8Rng>,
) -> std::io::Result<()> {
    let Faults { mut rate, expire_every, dynamodb_only, hide_capacity, .. } = faults;
    let mut buf = Vec::new();
    // One request per connection: every answer closes it, and the client reconnects.
    let Some((head, body)) = read_request(&mut conn, &mut buf).await? else { return Ok(()) };
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let target = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-amz-target")))
        .map(|(_, v)| v.trim().to_owned());
    let json_target = target.is_some();
    let dynamodb = target.as_deref().is_some_and(|t| t.starts_with("DynamoDB_"));
    if dynamodb_only && !dynamodb {
        rate = 0.0;
    }
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("x-amz-target:") && l.ends_with(".Query")) {
        counts.queries.fetch_add(1, Ordering::Relaxed);
    }
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("x-amz-target:") && l.ends_with(".GetRecords")) {
        let n = counts.get_records.fetch_add(1, Ordering::Relaxed) + 1;
        if expire_every > 0 && n.is_multiple_of(expire_every) {
            counts.expired.fetch_add(1, Ordering::Relaxed);
            return conn.write_all(&error_response("400 Bad Request", true, "ExpiredIteratorException")).await;
        }
    }
    // A batch of several items always comes back with half of them unprocessed (DynamoDB
    // answers a batch it can do none of with a throttle, so a batch of one is left whole).
    let batch = dynamodb_only
        && target.as_deref().is_some_and(|t| t.ends_with(".BatchWriteItem"))
        && serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|b| {
            b["RequestItems"]
                .as_object()
                .is_some_and(|t| t.values().map(|i| i.as_array().map_or(0, Vec::len)).sum::<usize>() > 1)
        });
    if batch {
        counts.batch_writes.fetch_add(1, Ordering::Relaxed);
    }
    let (fault, kind) = {
        let mut r = rng.lock().unwrap();
        if batch { (true, 5) } else { (r.random_bool(rate), r.random_range(0..5u8)) }
    };
    let mut slow = false;
    if fault {
        match kind {
            0 => {
                counts.throttled.fetch_add(1, Ordering::Relaxed);
                let (status, code) = if json_target {
                    ("400 Bad Request", "ProvisionedThroughputExceededException")
                } else {
                    ("503 Slow Down", "SlowDown")
                };
                return conn.write_all(&error_response(status, json_target, code)).await;
            }
            1 => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                let code = if json_target { "InternalFailure" } else { "InternalError" };
                return conn.write_all(&error_response("500 Internal Server Error", json_target, code)).await;
            }
            2 => {
                counts.slowed.fetch_add(1, Ordering::Relaxed);
                slow = true;
            }
            3 => {
                counts.dropped_before.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            _ => {}
        }
    }
    if slow {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (request, left) = match (fault && kind == 5).then(|| split_batch(&body)).flatten() {
        Some((half, left)) => {
            counts.unprocessed.fetch_add(1, Ordering::Relaxed);
            (closing(&with_length(&head, half.len()), &half), Some(left))
        }
        None => (closing(&head, &body), None),
    };
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&request).await?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await?;
    if fault && kind == 4 {
        counts.dropped_after.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    if let Some(left) = left {
        answer = with_unprocessed(&answer, left);
    }
    if hide_capacity && dynamodb {
        answer = without_consumed_capacity(&answer);
    }
    conn.write_all(&answer).await?;
    conn.shutdown().await
}
