//! The parts of the deployed stack that keep failures from going unseen and data from
//! being lost, checked in the *translated* template (what `sam deploy` creates; `.ci/run`
//! writes it and names it in `TRIPFLOW_TEST_TEMPLATE`), where SAM's shorthands have
//! become the resources CloudFormation makes.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::lambda_iam::translated_template;

fn resource<'a>(template: &'a Value, name: &str) -> &'a Value {
    let r = &template["Resources"][name];
    assert!(r.is_object(), "the translated template has no {name}");
    r
}

fn of_type<'a>(template: &'a Value, ty: &str) -> Vec<(&'a String, &'a Value)> {
    template["Resources"].as_object().unwrap().iter().filter(|(_, r)| r["Type"] == ty).collect()
}

#[test]
fn a_failed_nightly_run_goes_to_a_queue_and_a_missed_one_raises_an_alarm() {
    let t = translated_template();
    let failures = json!({ "Fn::GetAtt": ["KpiFailures", "Arn"] });

    // The function's asynchronous invocations (the scheduler's): one retry, then the queue.
    let invoke = &resource(&t, "KpiFunctionEventInvokeConfig")["Properties"];
    assert_eq!(invoke["FunctionName"], json!({ "Ref": "KpiFunction" }));
    assert_eq!(invoke["MaximumRetryAttempts"], 1);
    assert_eq!(invoke["DestinationConfig"]["OnFailure"]["Destination"], failures);

    // The schedule: its own dead-letter queue (the same), and a name of its own.
    let schedule = &resource(&t, "KpiFunctionNightly")["Properties"];
    assert_eq!(schedule["Target"]["DeadLetterConfig"]["Arn"], failures);
    assert!(schedule.get("Name").is_none(), "OmitName: two stacks' schedules must not clash");
    let sends = |role: &str| {
        resource(&t, role)["Properties"]["Policies"].as_array().unwrap().iter().any(|p| {
            p["PolicyDocument"]["Statement"].as_array().unwrap().iter().any(|s| {
                s["Resource"] == failures
                    && (s["Action"] == "sqs:SendMessage" || s["Action"] == json!(["sqs:SendMessage"]))
            })
        })
    };
    assert!(sends("KpiFunctionNightlyRole") && sends("KpiRole"), "both may send to the queue");

    // The queue's alarm, and the alarm on no successful run in 25 hours, on the metric the
    // function emits.
    let queue_alarm = &resource(&t, "KpiFailuresAlarm")["Properties"];
    assert_eq!(queue_alarm["Dimensions"][0]["Value"], json!({ "Fn::GetAtt": ["KpiFailures", "QueueName"] }));
    let missed = &resource(&t, "KpiMissedAlarm")["Properties"];
    let emitted: Value =
        serde_json::from_str(&tripflow::observe::telemetry::kpi_emf_line("s", &Default::default(), UNIX_EPOCH))
            .unwrap();
    let metrics = &emitted["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(missed["Namespace"], metrics["Namespace"]);
    assert!(metrics["Metrics"].as_array().unwrap().iter().any(|m| m["Name"] == missed["MetricName"]));
    assert_eq!(
        missed["Dimensions"],
        json!([{ "Name": "stack", "Value": { "Ref": "AWS::StackName" } }, { "Name": "function", "Value": emitted["function"] }])
    );
    assert_eq!(emitted[missed["MetricName"].as_str().unwrap()], 1);
    let hours = missed["Period"].as_u64().unwrap() * missed["DatapointsToAlarm"].as_u64().unwrap() / 3600;
    assert_eq!((hours, missed["EvaluationPeriods"].as_u64()), (25, missed["DatapointsToAlarm"].as_u64()));
    assert_eq!(missed["TreatMissingData"], "breaching", "no run at all must fire it");
    assert_eq!((&missed["Statistic"], &missed["ComparisonOperator"]), (&json!("Sum"), &json!("LessThanThreshold")));
    for alarm in of_type(&t, "AWS::CloudWatch::Alarm") {
        assert_eq!(alarm.1["Properties"]["AlarmActions"], json!([{ "Ref": "AlarmTopic" }]), "{}", alarm.0);
        assert_eq!(
            alarm.1["Properties"]["OKActions"],
            json!([{ "Ref": "AlarmTopic" }]),
            "{} says when it is over",
            alarm.0
        );
    }

    // Room for the spill, and JSON logs.
    let kpi = &resource(&t, "KpiFunction")["Properties"];
    assert_eq!(kpi["EphemeralStorage"]["Size"], json!({ "Ref": "KpiEphemeralStorageMiB" }));
    for (name, f) in of_type(&t, "AWS::Lambda::Function") {
        assert_eq!(f["Properties"]["LoggingConfig"]["LogFormat"], "JSON", "{name}");
    }
}

#[test]
fn data_outlives_the_stack_and_names_come_from_it() {
    let t = translated_template();
    for ty in ["AWS::Kinesis::Stream", "AWS::DynamoDB::Table", "AWS::S3::Bucket", "AWS::SQS::Queue"] {
        let found = of_type(&t, ty);
        assert!(!found.is_empty(), "no {ty}");
        for (name, r) in found {
            assert_eq!(
                (&r["DeletionPolicy"], &r["UpdateReplacePolicy"]),
                (&json!("Retain"), &json!("Retain")),
                "{name}"
            );
        }
    }
    let table = &resource(&t, "TripTable")["Properties"];
    assert_eq!(table["DeletionProtectionEnabled"], true);
    let default_name = |condition: &str, given: &str| json!({ "Fn::If": [condition, { "Ref": given }, { "Fn::Sub": "${AWS::StackName}-trips" }] });
    assert_eq!(table["TableName"], default_name("NamedTable", "TableName"));
    assert_eq!(resource(&t, "TripStream")["Properties"]["Name"], default_name("NamedStream", "StreamName"));
    for parameter in ["StreamName", "TableName"] {
        assert_eq!(t["Parameters"][parameter]["Default"], "", "{parameter} defaults to the stack's name");
    }
}

/// `value` with the stack's pseudo parameters given: `AWS::StackName` is `stack`.
fn as_in_stack(value: &Value, stack: &str) -> Value {
    match value {
        Value::Object(o) if o.get("Ref") == Some(&json!("AWS::StackName")) => json!(stack),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), as_in_stack(v, stack))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(|v| as_in_stack(v, stack)).collect()),
        other => other.clone(),
    }
}

/// The one series the alarm `name` watches in `stack`: its namespace, metric and every
/// dimension.
fn watched_series(t: &Value, name: &str, stack: &str) -> (String, String, BTreeMap<String, String>) {
    let p = as_in_stack(&resource(t, name)["Properties"], stack);
    let dims: BTreeMap<String, String> = p["Dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["Name"].as_str().unwrap().to_owned(), d["Value"].as_str().unwrap().to_owned()))
        .collect();
    (p["Namespace"].as_str().unwrap().to_owned(), p["MetricName"].as_str().unwrap().to_owned(), dims)
}

/// The series a CloudWatch EMF line becomes: (namespace, metric, dimensions) per metric
/// and dimension set, as CloudWatch Logs extracts them.
fn series_of(emf: &Value) -> Vec<(String, String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for directive in emf["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
        for set in directive["Dimensions"].as_array().unwrap() {
            let dims: BTreeMap<String, String> = set
                .as_array()
                .unwrap()
                .iter()
                .map(|d| (d.as_str().unwrap().to_owned(), emf[d.as_str().unwrap()].as_str().unwrap().to_owned()))
                .collect();
            for m in directive["Metrics"].as_array().unwrap() {
                out.push((
                    directive["Namespace"].as_str().unwrap().to_owned(),
                    m["Name"].as_str().unwrap().to_owned(),
                    dims.clone(),
                ));
            }
        }
    }
    out
}

#[test]
fn one_stack_s_successful_run_leaves_another_stack_s_missed_run_alarm_alarming() {
    let t = translated_template();
    // Stack "a" runs its KPI function, with the environment the template gives it; stack
    // "b" runs nothing.
    let env = &resource(&t, "KpiFunction")["Properties"]["Environment"]["Variables"];
    let env_in_a = as_in_stack(env, "a");
    let settings = tripflow::lambda::Settings::from_vars(|name| match name {
        "TRIPFLOW_STORE" => Some("dynamodb://trips".into()),
        "AWS_LAMBDA_FUNCTION_NAME" => Some("a-kpi".into()),
        _ => env_in_a[name].as_str().map(str::to_owned),
    })
    .unwrap();
    assert_eq!(settings.stack, "a", "the template names the stack to the function");
    let run = tripflow::observe::telemetry::KpiFigures {
        dates: 3,
        trips: 100,
        took: Duration::from_secs(9),
        ..Default::default()
    };
    let line = tripflow::observe::telemetry::kpi_emf_line(&settings.stack, &run, UNIX_EPOCH);
    let published = series_of(&serde_json::from_str(&line).unwrap());

    // An alarm watches exactly one series: its namespace, metric and every dimension.
    let watched = |stack: &str| watched_series(&t, "KpiMissedAlarm", stack);
    assert!(published.contains(&watched("a")), "a's run keeps a's alarm quiet: {published:?}");
    assert!(!published.contains(&watched("b")), "a's run would silence b's alarm: {published:?}");
    // And with no data, b's alarm breaches.
    assert_eq!(resource(&t, "KpiMissedAlarm")["Properties"]["TreatMissingData"], "breaching");
    // The ingest function names its stack too.
    let ingest_env = &resource(&t, "IngestFunction")["Properties"]["Environment"]["Variables"];
    assert_eq!(ingest_env["TRIPFLOW_STACK"], json!({ "Ref": "AWS::StackName" }));
}

#[test]
fn throttles_errors_and_slow_runs_raise_alarms_and_one_dashboard_shows_them() {
    let t = translated_template();
    let alarm = |name: &str| resource(&t, name)["Properties"].clone();
    let function = |f: &str| json!([{ "Name": "FunctionName", "Value": { "Ref": f } }]);

    // DynamoDB write throttles: the table's and its date index's, added up.
    let table = alarm("TableThrottlesAlarm");
    let metrics = table["Metrics"].as_array().unwrap();
    let returned: Vec<&Value> = metrics.iter().filter(|m| m["ReturnData"] == true).collect();
    assert_eq!(returned.len(), 1, "one series is compared: {metrics:?}");
    let stats: Vec<&Value> = metrics.iter().filter_map(|m| m.get("MetricStat")).collect();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert_eq!(
            (&s["Metric"]["Namespace"], &s["Metric"]["MetricName"]),
            (&json!("AWS/DynamoDB"), &json!("WriteThrottleEvents"))
        );
        assert_eq!(s["Metric"]["Dimensions"][0], json!({ "Name": "TableName", "Value": { "Ref": "TripTable" } }));
    }
    let index = &stats.iter().find(|s| s["Metric"]["Dimensions"].as_array().unwrap().len() == 2).unwrap()["Metric"];
    let gsi = &resource(&t, "TripTable")["Properties"]["GlobalSecondaryIndexes"][0]["IndexName"];
    assert_eq!(
        index["Dimensions"][1],
        json!({ "Name": "GlobalSecondaryIndexName", "Value": gsi }),
        "the index the table has"
    );
    let expression = returned[0]["Expression"].as_str().unwrap();
    for m in metrics.iter().filter(|m| m.get("MetricStat").is_some()) {
        assert!(expression.contains(m["Id"].as_str().unwrap()), "{expression} leaves out {}", m["Id"]);
    }

    // Kinesis write throttles on the stack's stream.
    let stream = alarm("StreamThrottlesAlarm");
    assert_eq!(
        (&stream["Namespace"], &stream["MetricName"]),
        (&json!("AWS/Kinesis"), &json!("WriteProvisionedThroughputExceeded"))
    );
    assert_eq!(stream["Dimensions"], json!([{ "Name": "StreamName", "Value": { "Ref": "TripStream" } }]));

    // The ingest function's errors and throttles.
    for (name, metric) in [("IngestErrorsAlarm", "Errors"), ("IngestThrottlesAlarm", "Throttles")] {
        let a = alarm(name);
        assert_eq!((&a["Namespace"], &a["MetricName"]), (&json!("AWS/Lambda"), &json!(metric)), "{name}");
        assert_eq!(a["Dimensions"], function("IngestFunction"), "{name}");
    }

    // A KPI run above 80% of the function's timeout.
    let slow = alarm("KpiDurationAlarm");
    let timeout = resource(&t, "KpiFunction")["Properties"]["Timeout"].as_f64().unwrap();
    assert_eq!((&slow["MetricName"], &slow["Statistic"]), (&json!("Duration"), &json!("Maximum")));
    assert_eq!(slow["Dimensions"], function("KpiFunction"));
    assert_eq!(slow["Threshold"].as_f64().unwrap(), 0.8 * timeout * 1000.0, "Duration is in milliseconds");

    // The event source mapping publishes its own metrics.
    let mapping = &of_type(&t, "AWS::Lambda::EventSourceMapping")[0].1["Properties"];
    assert_eq!(mapping["MetricsConfig"]["Metrics"], json!(["EventCount"]));

    // One dashboard with each of these, for this stack's resources.
    let body = resource(&t, "Dashboard")["Properties"]["DashboardBody"]["Fn::Sub"].clone();
    let text = body[0].as_str().unwrap();
    let mut resolved = text.to_owned();
    for (var, value) in [
        ("AWS::StackName", "s"),
        ("AWS::Region", "r"),
        ("TripStream", "st"),
        ("IngestFunction", "if"),
        ("KpiFunction", "kf"),
        ("TripTable", "tt"),
        ("DateIndex", "di"),
    ] {
        resolved = resolved.replace(&format!("${{{var}}}"), value);
    }
    assert!(!resolved.contains("${"), "every variable of the dashboard is given: {resolved}");
    let dashboard: Value = serde_json::from_str(&resolved).expect("the dashboard body is JSON");
    let shown: Vec<String> = dashboard["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["properties"]["metrics"].as_array().unwrap().iter())
        .map(|m| format!("{}/{}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    for expected in [
        "AWS/Kinesis/GetRecords.IteratorAgeMilliseconds",
        "AWS/Lambda/Errors",
        "AWS/Lambda/Duration",
        "AWS/DynamoDB/WriteThrottleEvents",
        "AWS/DynamoDB/ConsumedWriteCapacityUnits",
        "tripflow/read",
        "tripflow/applied",
        "tripflow/dead_lettered",
        "tripflow/KpiRunSucceeded",
    ] {
        assert!(shown.iter().any(|s| s == expected), "the dashboard lacks {expected}: {shown:?}");
    }
    // tripflow's own series are this stack's.
    assert!(resolved.contains(r#""tripflow", "read", "stack", "s", "function", "ingest""#), "{resolved}");
}

#[test]
fn the_bucket_refuses_plain_http_and_forgets_what_it_no_longer_needs() {
    let t = translated_template();
    let policy = &resource(&t, "OutputBucketPolicy")["Properties"];
    assert_eq!(policy["Bucket"], json!({ "Ref": "OutputBucket" }));
    let deny = &policy["PolicyDocument"]["Statement"][0];
    assert_eq!((&deny["Effect"], &deny["Principal"], &deny["Action"]), (&json!("Deny"), &json!("*"), &json!("s3:*")));
    assert_eq!(deny["Condition"], json!({ "Bool": { "aws:SecureTransport": "false" } }));
    assert_eq!(deny["Resource"][0], json!({ "Fn::GetAtt": ["OutputBucket", "Arn"] }), "the bucket");
    assert_eq!(deny["Resource"][1], json!({ "Fn::Sub": "${OutputBucket.Arn}/*" }), "and its objects");

    let rules =
        resource(&t, "OutputBucket")["Properties"]["LifecycleConfiguration"]["Rules"].as_array().unwrap().clone();
    assert!(rules.iter().all(|r| r["Status"] == "Enabled"), "{rules:?}");
    let old = rules.iter().find(|r| r.get("NoncurrentVersionExpiration").is_some()).expect("old versions expire");
    assert_eq!(old["NoncurrentVersionExpiration"]["NoncurrentDays"], json!({ "Ref": "NoncurrentVersionDays" }));
    assert_eq!(t["Parameters"]["NoncurrentVersionDays"]["Default"], 30);
    assert_eq!(old["ExpiredObjectDeleteMarker"], true);
    assert!(old["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"].as_u64().is_some());
    let letters = rules.iter().find(|r| r.get("ExpirationInDays").is_some()).expect("dead letters expire");
    assert_eq!(letters["ExpirationInDays"], json!({ "Ref": "DeadLetterRetentionDays" }));
    assert_eq!(letters["Prefix"], json!({ "Fn::Sub": "${OutputPrefix}/dead_letters/" }));
    // Where the ingest function writes them.
    let ingest = &resource(&t, "IngestFunction")["Properties"]["Environment"]["Variables"];
    assert_eq!(ingest["TRIPFLOW_DEAD_LETTER"], json!({ "Fn::Sub": "s3://${OutputBucket}/${OutputPrefix}" }));

    // One KPI run at a time.
    assert_eq!(resource(&t, "KpiFunction")["Properties"]["ReservedConcurrentExecutions"], 1);
}

#[test]
fn live_kpis_are_kept_by_ingest_published_on_a_rate_and_a_mismatch_raises_the_stack_s_alarm() {
    let t = translated_template();
    // Both functions are told, from one parameter; the template keeps them by default.
    for f in ["IngestFunction", "KpiFunction"] {
        let env = &resource(&t, f)["Properties"]["Environment"]["Variables"];
        assert_eq!(env["TRIPFLOW_LIVE_KPIS"], json!({ "Ref": "LiveKpis" }), "{f}");
    }
    let settings = tripflow::lambda::Settings::from_vars(|name| match name {
        "TRIPFLOW_STORE" => Some("dynamodb://trips".into()),
        "TRIPFLOW_LIVE_KPIS" => Some("true".into()),
        _ => None,
    })
    .unwrap();
    assert!(settings.live);

    // The KPI function publishes them on the LiveEvery rate, only when they are kept.
    let schedules = of_type(&t, "AWS::Scheduler::Schedule");
    let (_, live) = schedules
        .iter()
        .find(|(_, s)| s["Properties"]["Target"]["Input"] == json!(r#"{"live": true}"#))
        .expect("a schedule sends {\"live\": true}");
    let p = &live["Properties"];
    assert_eq!(p["ScheduleExpression"], json!({ "Ref": "LiveEvery" }));
    assert_eq!(p["State"], json!({ "Fn::If": ["KeepsLiveKpis", "ENABLED", "DISABLED"] }));
    assert_eq!(p["Target"]["Arn"], json!({ "Fn::GetAtt": ["KpiFunction", "Arn"] }));
    let default = t["Parameters"]["LiveEvery"]["Default"].as_str().unwrap();
    assert_eq!(default, "rate(1 minute)");

    // The ingest role reads the batch's trips before the live state's change.
    let ingest_role = serde_json::to_string(&resource(&t, "IngestRole")["Properties"]["Policies"]).unwrap();
    assert!(ingest_role.contains("dynamodb:BatchGetItem"), "{ingest_role}");

    // A nightly run of stack a with one mismatch raises a's alarm, not b's.
    let run = tripflow::observe::telemetry::KpiFigures { dates: 3, live: Some((3, 1)), ..Default::default() };
    let line: Value = serde_json::from_str(&tripflow::observe::telemetry::kpi_emf_line("a", &run, UNIX_EPOCH)).unwrap();
    assert_eq!((line["LiveDatesCompared"].as_u64(), line["LiveMismatches"].as_u64()), (Some(3), Some(1)));
    let published = series_of(&line);
    let alarm = &resource(&t, "LiveMismatchAlarm")["Properties"];
    assert_eq!(
        (alarm["Threshold"].as_f64(), alarm["ComparisonOperator"].as_str()),
        (Some(0.0), Some("GreaterThanThreshold"))
    );
    let watched = |stack: &str| watched_series(&t, "LiveMismatchAlarm", stack);
    assert!(published.contains(&watched("a")), "{published:?}");
    assert!(!published.contains(&watched("b")), "{published:?}");
    // A run over a table without live KPIs says nothing of them.
    let plain = tripflow::observe::telemetry::kpi_emf_line("a", &Default::default(), UNIX_EPOCH);
    assert!(!plain.contains("LiveMismatches"), "{plain}");
}
