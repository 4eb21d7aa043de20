//! The parts of the deployed stack that keep failures from going unseen and data from
//! being lost, checked in the *translated* template (what `sam deploy` creates; `.ci/run`
//! writes it and names it in `TRIPFLOW_TEST_TEMPLATE`), where SAM's shorthands have
//! become the resources CloudFormation makes.

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
        serde_json::from_str(&tripflow::observe::telemetry::kpi_emf_line(1, 1, Duration::ZERO, UNIX_EPOCH)).unwrap();
    let metrics = &emitted["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(missed["Namespace"], metrics["Namespace"]);
    assert!(metrics["Metrics"].as_array().unwrap().iter().any(|m| m["Name"] == missed["MetricName"]));
    assert_eq!(missed["Dimensions"], json!([{ "Name": "function", "Value": emitted["function"] }]));
    assert_eq!(emitted[missed["MetricName"].as_str().unwrap()], 1);
    let hours = missed["Period"].as_u64().unwrap() * missed["DatapointsToAlarm"].as_u64().unwrap() / 3600;
    assert_eq!((hours, missed["EvaluationPeriods"].as_u64()), (25, missed["DatapointsToAlarm"].as_u64()));
    assert_eq!(missed["TreatMissingData"], "breaching", "no run at all must fire it");
    assert_eq!((&missed["Statistic"], &missed["ComparisonOperator"]), (&json!("Sum"), &json!("LessThanThreshold")));
    for alarm in of_type(&t, "AWS::CloudWatch::Alarm") {
        assert_eq!(alarm.1["Properties"]["AlarmActions"], json!([{ "Ref": "AlarmTopic" }]), "{}", alarm.0);
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
