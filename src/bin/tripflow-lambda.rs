//! `tripflow-lambda`: the ingest and KPI stages as AWS Lambda functions on a custom
//! runtime (`provided.al2023`). The template's `Handler` (`_HANDLER`) picks the function;
//! the `TRIPFLOW_*` variables configure it, as they configure the CLI. Everything is
//! opened once here, at init; an init failure is reported to the Runtime API's
//! `/init/error` with the message, and the process exits.

use std::process::ExitCode;
use std::time::SystemTime;

use aws_lambda_events::event::kinesis::KinesisEvent;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use lambda_runtime_api_client::body::Body;
use tracing_subscriber::EnvFilter;
use tripflow::config::AwsEnv;
use tripflow::lambda::{Handler, IngestFunction, KpiFunction, Settings};

/// A failed invocation, reported with the stage as its `errorType` (`tripflow.store`).
#[derive(Debug)]
struct Failure(tripflow::Error);

impl From<Failure> for Diagnostic {
    fn from(f: Failure) -> Diagnostic {
        Diagnostic { error_type: format!("tripflow.{}", f.0.stage()), error_message: f.0.to_string() }
    }
}

enum Function {
    Ingest(IngestFunction),
    Kpi(KpiFunction),
}

async fn init() -> tripflow::Result<Function> {
    let handler = Handler::parse(std::env::var("_HANDLER").ok().as_deref())?;
    let settings = Settings::from_vars(|name| std::env::var(name).ok())?;
    let aws = AwsEnv::default();
    Ok(match handler {
        Handler::Ingest => Function::Ingest(IngestFunction::open(&settings, &aws).await?),
        Handler::Kpi => Function::Kpi(KpiFunction::open(&settings, &aws).await?),
    })
}

/// Tells Lambda why init failed (`POST /runtime/init/error`), so the message shows in
/// the invocation's error as well as in the log.
async fn report_init_error(error: &tripflow::Error) {
    let error_type = format!("tripflow.{}", error.stage());
    let body = serde_json::json!({ "errorType": error_type, "errorMessage": error.to_string() }).to_string();
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else { return };
    let Ok(endpoint) = format!("http://{api}").parse() else { return };
    let client = lambda_runtime_api_client::PooledClient::builder().with_endpoint(endpoint).build();
    let request = lambda_runtime_api_client::build_request()
        .method("POST")
        .uri("/2018-06-01/runtime/init/error")
        .header("Lambda-Runtime-Function-Error-Type", error_type)
        .body(Body::from(body));
    if let Ok(request) = request
        && let Err(e) = client.call(request).await
    {
        tracing::error!(error = %e, "Could not report the init error to the Runtime API.");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tripflow::observe::memory::map_large_blocks();
    // CloudWatch stamps each line; colours would show as escape codes there. With the
    // function's LogFormat JSON (Lambda sets AWS_LAMBDA_LOG_FORMAT), one JSON object a
    // line, with the invocation's span and so its requestId, as Powertools logs.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,aws_config=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).without_time();
    if std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        logs.init();
    }

    let function = match init().await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(stage = e.stage(), "Init failed: {e}");
            report_init_error(&e).await;
            return ExitCode::FAILURE;
        }
    };
    let served = match &function {
        Function::Ingest(f) => {
            lambda_runtime::run(service_fn(|event: LambdaEvent<KinesisEvent>| async move {
                let deadline = event.context.deadline();
                f.handle(event.payload, deadline, SystemTime::now).await.map(|(response, _)| response).map_err(Failure)
            }))
            .await
        }
        Function::Kpi(f) => {
            lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| async move {
                f.handle(event.payload).await.map_err(Failure)
            }))
            .await
        }
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("The Lambda runtime stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
