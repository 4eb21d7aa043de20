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
        Self::start_with(upstream, rate, seed, 0).await
    }

    /// Starts a proxy that answers every `every`-th GetRecords with
    /// ExpiredIteratorException (which moto itself never sends), and faults nothing else.
    pub async fn expiring_iterators(upstream: &str, every: u64) -> Self {
        Self::start_with(upstream, 0.0, 0, every).await
    }

    async fn start_with(upstream: &str, rate: f64, seed: u64, expire_every: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(FaultCounts::default());
        let upstream = host_port(upstream);
        let rng = Arc::new(std::sync::Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else { return };
                let (upstream, counts, rng) = (upstream.clone(), c.clone(), rng.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &upstream, rate, expire_every, &counts, &rng).await;
                });
            }
        });
        FaultProxy { url, counts }
    }

    /// Requests faulted so far.
    pub fn faulted(&self) -> u64 {
        let c = &self.counts;
        [&c.throttled, &c.errors, &c.slowed, &c.dropped_before, &c.dropped_after]
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
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

async fn serve(
    mut conn: TcpStream,
    upstream: &str,
    rate: f64,
    expire_every: u64,
    counts: &FaultCounts,
    rng: &std::sync::Mutex<rand_chacha::ChaCha8Rng>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    // One request per connection: every answer closes it, and the client reconnects.
    let Some((head, body)) = read_request(&mut conn, &mut buf).await? else { return Ok(()) };
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let json_target = head.lines().any(|l| l.to_ascii_lowercase().starts_with("x-amz-target:"));
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
    let (fault, kind) = {
        let mut r = rng.lock().unwrap();
        (r.random_bool(rate), r.random_range(0..5u8))
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
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(&closing(&head, &body)).await?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await?;
    if fault && kind == 4 {
        counts.dropped_after.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    conn.write_all(&answer).await?;
    conn.shutdown().await
}
