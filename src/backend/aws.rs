//! AWS settings shared by the Kinesis, DynamoDB and S3 backends.
//!
//! Region, credentials and endpoints come from the standard AWS environment through
//! `aws-config` (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_KINESIS`, `..._DYNAMODB`, `..._S3`, the shared config files, SSO,
//! instance roles). The S3 object store gets the same region and the same credential
//! chain, so one profile serves every backend. The SDK clients retry throttling, 5xx
//! responses, timeouts and dropped connections with exponential backoff and jitter, from
//! a retry budget of their own ([`RETRY_BUDGET_CALLS`]; docs/aws.md#retries).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::{RetryConfig, RetryMode};
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_dynamodb::config::retry::{RetryPartition, TokenBucket};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::{CredentialProvider, ObjectStore};

use crate::{Error, Result};

/// Attempts per request, the first included, before an SDK call gives up.
pub const MAX_ATTEMPTS: u32 = 10;

/// SDK calls in flight at once that the retry budget is sized for: each may hold one
/// retry's tokens while it waits, and have every retry it is allowed spent.
pub const RETRY_BUDGET_CALLS: usize = 64;

/// The AWS configuration of a process.
#[derive(Clone, Debug)]
pub struct Aws {
    sdk: SdkConfig,
    s3_endpoint: Option<String>,
    /// The retry partition of every client this configuration makes; `None` leaves the
    /// SDK's own (one per service and region, shared by the process).
    retries: Option<RetryPartition>,
}

/// The retry mode `AWS_RETRY_MODE` asks for, if any: then the SDK's own retry
/// partition, token bucket and (adaptive) rate limiter apply, as AWS documents them.
fn sdk_retry_mode() -> Result<Option<RetryMode>> {
    match std::env::var("AWS_RETRY_MODE").ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "standard" | "legacy" => Ok(Some(RetryMode::Standard)),
            "adaptive" => Ok(Some(RetryMode::Adaptive)),
            _ => Err(Error::config(format!(
                "AWS_RETRY_MODE={v:?} is not a retry mode; unset it for tripflow's retry budget, or set standard or adaptive"
            ))),
        },
    }
}

fn retry_config(mode: Option<RetryMode>) -> RetryConfig {
    let config = match mode {
        Some(RetryMode::Adaptive) => RetryConfig::adaptive(),
        _ => RetryConfig::standard(),
    };
    config.with_max_attempts(MAX_ATTEMPTS).with_initial_backoff(Duration::from_millis(50))
}

/// The retry budget of a process, shared by its clients: unlike the SDK's default
/// bucket (500 tokens, refilled only by successes), it holds a full set of retries for
/// [`RETRY_BUDGET_CALLS`] calls and refills with time, so sustained throttling slows the
/// calls down (their backoff) instead of failing them on their first fault.
fn retry_budget() -> RetryPartition {
    // A retry costs at most 10 tokens (a timeout or dropped connection; a throttle 5).
    let capacity = RETRY_BUDGET_CALLS * (MAX_ATTEMPTS as usize - 1) * 10;
    let bucket = TokenBucket::builder().capacity(capacity).refill_rate(capacity as f32 / 60.0).build();
    RetryPartition::custom("tripflow").token_bucket(bucket).build()
}

fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(20))
        .build()
}

/// The HTTP client of every AWS SDK client: HTTPS through rustls with ring, the one
/// crypto provider in the build (object_store's client uses it too); plain `http://`
/// endpoints, such as an emulator's, work as well.
fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
}

impl Aws {
    /// Loads the configuration from the standard AWS environment.
    ///
    /// # Errors
    /// When no region is set anywhere the SDK looks.
    pub async fn from_env() -> Result<Self> {
        let mode = sdk_retry_mode()?;
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .retry_config(retry_config(mode))
            .timeout_config(timeout_config())
            .load()
            .await;
        let s3_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
        if sdk.region().is_none() {
            return Err(Error::config(
                "no AWS region is set: set AWS_REGION (e.g. export AWS_REGION=eu-west-1) or a region in your AWS profile",
            ));
        }
        Ok(Aws { sdk, s3_endpoint, retries: mode.is_none().then(retry_budget) })
    }

    /// A configuration that sends every service to `endpoint` (an emulator such as
    /// moto) with fixed test credentials, whatever the environment says.
    pub fn for_endpoint(endpoint: &str) -> Self {
        Self::for_endpoint_as(endpoint, "testing", "testing")
    }

    /// A configuration that sends every service to `endpoint` with the given access key
    /// (an emulator's IAM user, say, when it enforces IAM).
    pub fn for_endpoint_as(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> Self {
        let credentials = Credentials::new(access_key_id, secret_access_key, None, None, "tripflow-endpoint");
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .retry_config(retry_config(None))
            .timeout_config(timeout_config())
            .build();
        Aws { sdk, s3_endpoint: Some(endpoint.to_owned()), retries: Some(retry_budget()) }
    }

    /// The loaded SDK configuration.
    pub fn sdk(&self) -> &SdkConfig {
        &self.sdk
    }

    /// A Kinesis client.
    pub fn kinesis(&self) -> aws_sdk_kinesis::Client {
        let mut conf = aws_sdk_kinesis::config::Builder::from(&self.sdk);
        conf.set_retry_partition(self.retries.clone());
        aws_sdk_kinesis::Client::from_conf(conf.build())
    }

    /// An S3 client (for creating buckets; data goes through [`Aws::s3`]).
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        let mut conf = aws_sdk_s3::config::Builder::from(&self.sdk).force_path_style(self.s3_endpoint.is_some());
        conf.set_retry_partition(self.retries.clone());
        aws_sdk_s3::Client::from_conf(conf.build())
    }

    /// Creates `bucket` unless it exists. Returns whether it was created.
    ///
    /// # Errors
    /// When S3 refuses (the name is taken by another account, say).
    pub async fn create_bucket_if_missing(&self, bucket: &str) -> Result<bool> {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        use aws_smithy_types::error::metadata::ProvideErrorMetadata;
        let client = self.s3_client();
        // us-east-1 answers CreateBucket on a bucket one already owns with success, so
        // ask first.
        match client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(false),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
            Err(e) => return Err(Error::output(format!("cannot check S3 bucket {bucket}: {}", describe(&e)))),
        }
        let mut req = client.create_bucket().bucket(bucket);
        if let Some(region) = self.sdk.region().map(|r| r.as_ref()).filter(|r| *r != "us-east-1") {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(false),
            Err(e) => Err(Error::output(format!("cannot create S3 bucket {bucket}: {}", describe(&e)))),
        }
    }

    /// An SQS client (for the on-failure queue of the Lambda ingest function).
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let mut conf = aws_sdk_sqs::config::Builder::from(&self.sdk);
        conf.set_retry_partition(self.retries.clone());
        aws_sdk_sqs::Client::from_conf(conf.build())
    }

    /// A DynamoDB client.
    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let mut conf = aws_sdk_dynamodb::config::Builder::from(&self.sdk);
        conf.set_retry_partition(self.retries.clone());
        aws_sdk_dynamodb::Client::from_conf(conf.build())
    }

    /// An object store for `s3://bucket`, with this configuration's region, endpoint and
    /// credentials. Other `AWS_*` settings object_store knows (`AWS_ALLOW_HTTP`, …) apply.
    ///
    /// # Errors
    /// When no region is configured or the builder refuses the settings.
    pub fn s3(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let region = self.sdk.region().ok_or_else(|| {
            Error::config(format!(
                "s3://{bucket}: no AWS region is set; set AWS_REGION (e.g. AWS_REGION=eu-west-1) or a region in your AWS profile"
            ))
        })?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_region(region.as_ref());
        if let Some(endpoint) = &self.s3_endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(provider) = self.sdk.credentials_provider() {
            builder = builder.with_credentials(Arc::new(SdkCredentials { provider, cached: Mutex::default() }));
        }
        let store = builder.build().map_err(|e| Error::config_because(format!("s3://{bucket}"), e, ""))?;
        Ok(Arc::new(store))
    }
}

/// Hands the SDK's credential chain to object_store, caching each credential until five
/// minutes before it expires.
#[derive(Debug)]
struct SdkCredentials {
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait]
impl CredentialProvider for SdkCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let margin = Duration::from_secs(300);
        if let Some((credential, expiry)) = self.cached.lock().expect("credential cache").as_ref()
            && expiry.is_none_or(|at| SystemTime::now() + margin < at)
        {
            return Ok(credential.clone());
        }
        let c = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })?;
        let credential = Arc::new(AwsCredential {
            key_id: c.access_key_id().to_owned(),
            secret_key: c.secret_access_key().to_owned(),
            token: c.session_token().map(str::to_owned),
        });
        *self.cached.lock().expect("credential cache") = Some((credential.clone(), c.expiry()));
        Ok(credential)
    }
}

/// The error code and message of an SDK error, for matching and for messages.
pub fn error_code<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(e: &E) -> (String, String) {
    (e.code().unwrap_or("").to_owned(), e.message().unwrap_or("").to_owned())
}

/// Full-jitter exponential backoff: a random wait up to `base * 2^attempt`, capped.
pub fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    let cap = Duration::from_millis(50u64.saturating_mul(1 << attempt.min(8))).min(Duration::from_secs(5));
    Duration::from_micros(rand::rng().random_range(0..=cap.as_micros() as u64))
}

/// Describes an SDK error in one line: its code and message, or the transport failure.
pub fn describe<E>(
    e: &aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                // An answer the SDK could not read as an error of its service (a proxy's,
                // or an emulator's in another format): its status and the start of its body.
                _ => {
                    let raw = s.raw();
                    let body = raw.body().bytes().unwrap_or_default();
                    let body = String::from_utf8_lossy(&body[..body.len().min(300)]);
                    format!("{err} (HTTP {}: {})", raw.status().as_u16(), body.trim())
                }
            }
        }
        SdkError::TimeoutError(_) => "the request timed out; check AWS_ENDPOINT_URL and the network".to_owned(),
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            if matches!(other, SdkError::DispatchFailure(_)) {
                s.push_str("; check AWS_ENDPOINT_URL and the network");
            }
            s
        }
    }
}

/// Creates a DynamoDB table keyed by `hash` (and `range`), both strings, on demand,
/// unless it exists; waits up to two minutes until it is active. Returns whether it was
/// created.
///
/// # Errors
/// When DynamoDB refuses, or the table is not active in time.
pub async fn create_key_table(aws: &Aws, table: &str, hash: &str, range: Option<&str>) -> Result<bool> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    let client = aws.dynamodb();
    let build = |e: aws_smithy_types::error::operation::BuildError| Error::store(e.to_string());
    let mut req = client.create_table().table_name(table).billing_mode(BillingMode::PayPerRequest);
    for (name, ty) in std::iter::once((hash, KeyType::Hash)).chain(range.map(|r| (r, KeyType::Range))) {
        req = req
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(KeySchemaElement::builder().attribute_name(name).key_type(ty).build().map_err(build)?);
    }
    let created = match req.send().await {
        Ok(_) => true,
        Err(e) if e.code() == Some("ResourceInUseException") => false,
        Err(e) => return Err(Error::store(format!("cannot create DynamoDB table {table}: {}", describe(&e)))),
    };
    let late = || Error::store(format!("DynamoDB table {table} is not active after 120 s"));
    wait_for(Duration::from_secs(120), late, async || {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| Error::store(format!("cannot describe DynamoDB table {table}: {}", describe(&e))))?;
        let active = out.table().and_then(|t| t.table_status()) == Some(&aws_sdk_dynamodb::types::TableStatus::Active);
        Ok(active.then_some(()))
    })
    .await?;
    Ok(created)
}

/// Asks `ready` every half second until it gives a value, for up to `limit`, then fails
/// with `late()`: for what AWS creates in the background (a stream, a table, an index).
///
/// # Errors
/// `ready`'s error, or `late()` when the time is up.
pub async fn wait_for<T>(
    limit: Duration,
    late: impl FnOnce() -> Error,
    mut ready: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let began = std::time::Instant::now();
    loop {
        if let Some(value) = ready().await? {
            return Ok(value);
        }
        if began.elapsed() > limit {
            return Err(late());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use tokio::io::AsyncReadExt;

    use super::*;

    /// The SDK's clients speak TLS through the one provider in the build (ring): a call
    /// to an `https://` endpoint opens with a TLS ClientHello. (The emulators are plain
    /// HTTP, so nothing else in the tests takes this path.)
    #[tokio::test]
    async fn an_https_endpoint_gets_a_tls_handshake() {
        async fn first_record(listener: &tokio::net::TcpListener) -> [u8; 6] {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut record = [0u8; 6];
            conn.read_exact(&mut record).await.unwrap();
            record
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let aws = Aws::for_endpoint(&format!("https://{}", listener.local_addr().unwrap()));
        // The SDK's client (Kinesis and DynamoDB), then object_store's (S3 data).
        let client = aws.dynamodb();
        let sdk = tokio::spawn(async move { client.list_tables().send().await });
        let record = first_record(&listener).await;
        sdk.abort();
        // A handshake record (22) of TLS 1.x (3, _), holding a ClientHello (1).
        assert_eq!((record[0], record[1], record[5]), (22, 3, 1), "the SDK sent {record:?}");
        let store = aws.s3("bucket").unwrap();
        let s3 = tokio::spawn(async move { store.get(&object_store::path::Path::from("x")).await.map(drop) });
        let record = first_record(&listener).await;
        s3.abort();
        assert_eq!((record[0], record[1], record[5]), (22, 3, 1), "object_store sent {record:?}");
    }
}
