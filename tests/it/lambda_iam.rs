//! Each Lambda function under exactly the permissions of its role in the template, on a
//! moto that enforces IAM (a moto of its own: enforcing is a switch global to a server).
//!
//! The roles' inline policies are read from the *translated* template (what `sam deploy`
//! would create; `.ci/run` writes it and names it in `TRIPFLOW_TEST_TEMPLATE`), not from a
//! copy here. Each becomes the policy of an IAM user whose keys the function runs with.
//! moto checks S3 requests against the statements' actions and resources, and other
//! services' requests against their actions only, asking for resource `*`: so the
//! resources of non-S3 statements become `*` here, and their actions are still checked.
//! moto does not evaluate `StringLike` conditions (the listing's `s3:prefix`); it checks
//! the rest of such a statement.
//!
//! That the check can fail is shown too: a policy without one action its function needs
//! makes that function fail.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tripflow::backend::aws::Aws;
use tripflow::store::TripStore;
use tripflow::store::dynamodb::DynamoStore;

use crate::emulators::iam_moto_endpoint;
use crate::lambda::{
    Function, Outcome, RuntimeApi, cli_run, failures, kinesis_event, kinesis_event_from, produced_records, records_of,
};
use crate::moto::unique;
use crate::on_aws::s3_tree;

/// Enforcing IAM is a switch of the whole server: one test at a time turns it.
static IAM_SWITCH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The translated template, as `.ci/run` writes it.
pub fn translated_template() -> Value {
    let Some(path) = std::env::var_os("TRIPFLOW_TEST_TEMPLATE").map(PathBuf::from) else {
        panic!(
            "TRIPFLOW_TEST_TEMPLATE is not set: translate the template with \
             `python deploy/sam_translate.py deploy/template.yaml /tmp/template.json` (in a virtualenv with \
             aws-sam-translator; bash .ci/run does this) and point TRIPFLOW_TEST_TEMPLATE at the output"
        )
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// One IAM Query API call to moto before it enforces IAM (so the signature is not
/// checked; the credential scope names the service). Returns the XML answer.
async fn iam(endpoint: &str, action: &str, params: &[(&str, &str)]) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action).append_pair("Version", "2010-05-08");
    for (k, v) in params {
        form.append_pair(k, v);
    }
    let body = form.finish();
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         X-Amz-Date: 20260101T000000Z\r\nAuthorization: AWS4-HMAC-SHA256 \
         Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host;x-amz-date, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_http(host, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "IAM {action} failed:\n{answer}");
    answer
}

async fn raw_http(host: &str, request: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// From now on moto checks every request against the caller's IAM policies (`0`), or
/// no longer (`inf`).
async fn enforce_iam(endpoint: &str, enforce: bool) {
    let body = if enforce { "0" } else { "inf" };
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let request = format!(
        "POST /moto-api/reset-auth HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_http(host, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "reset-auth failed:\n{answer}");
}

fn xml_field<'a>(xml: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let from = xml.find(&open).unwrap_or_else(|| panic!("no <{tag}> in {xml}")) + open.len();
    &xml[from..from + xml[from..].find('<').unwrap()]
}

/// An IAM user with `policies` inline, and its keys.
async fn user(endpoint: &str, name: &str, policies: &[(String, Value)]) -> (String, String) {
    iam(endpoint, "CreateUser", &[("UserName", name)]).await;
    for (policy, document) in policies {
        let document = document.to_string();
        iam(endpoint, "PutUserPolicy", &[("UserName", name), ("PolicyName", policy), ("PolicyDocument", &document)])
            .await;
    }
    let keys = iam(endpoint, "CreateAccessKey", &[("UserName", name)]).await;
    (xml_field(&keys, "AccessKeyId").to_owned(), xml_field(&keys, "SecretAccessKey").to_owned())
}

/// Resolves the intrinsic functions of an S3 statement with `names` (`Ref` targets and
/// `Resource.Attribute`s).
fn resolve(value: &Value, names: &BTreeMap<&str, String>) -> Value {
    let name = |n: &str| names.get(n).cloned().unwrap_or_else(|| panic!("the test cannot resolve {n}"));
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key("Fn::Sub") => {
            let mut text = map["Fn::Sub"].as_str().expect("Fn::Sub with a string").to_owned();
            while let Some(at) = text.find("${") {
                let end = at + text[at..].find('}').unwrap();
                let value = name(&text[at + 2..end]);
                text.replace_range(at..=end, &value);
            }
            Value::String(text)
        }
        Value::Object(map) if map.len() == 1 && map.contains_key("Fn::GetAtt") => {
            let parts: Vec<&str> = map["Fn::GetAtt"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
            Value::String(name(&parts.join(".")))
        }
        Value::Object(map) if map.len() == 1 && map.contains_key("Ref") => {
            Value::String(name(map["Ref"].as_str().unwrap()))
        }
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), resolve(v, names))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, names)).collect()),
        other => other.clone(),
    }
}

fn actions(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(a) => vec![a.clone()],
        Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
        other => panic!("a statement without actions: {other}"),
    }
}

/// `policies` as moto can check them: S3 statements as they are, the others' resources
/// `*` (moto checks their actions only).
fn checkable(policies: &[(String, Value)]) -> Vec<(String, Value)> {
    policies
        .iter()
        .map(|(name, document)| {
            let mut document = document.clone();
            for statement in document["Statement"].as_array_mut().unwrap() {
                if !actions(statement).iter().all(|a| a.starts_with("s3:")) {
                    statement["Resource"] = json!("*");
                }
            }
            (name.clone(), document)
        })
        .collect()
}

/// The inline policies of role `role` in the translated template, as moto can check
/// them: S3 statements resolved for `bucket`, the others' resources `*`.
fn role_policies(template: &Value, role: &str, bucket: &str) -> Vec<(String, Value)> {
    let prefix = template["Parameters"]["OutputPrefix"]["Default"].as_str().unwrap().to_owned();
    let names: BTreeMap<&str, String> = [
        ("OutputBucket", bucket.to_owned()),
        ("OutputBucket.Arn", format!("arn:aws:s3:::{bucket}")),
        ("OutputPrefix", prefix),
        ("AWS::Partition", "aws".to_owned()),
    ]
    .into_iter()
    .collect();
    let resource = &template["Resources"][role];
    assert_eq!(resource["Type"], "AWS::IAM::Role", "{role} is not a role in the translated template");
    resource["Properties"]["Policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut document = p["PolicyDocument"].clone();
            for statement in document["Statement"].as_array_mut().unwrap() {
                let actions = actions(statement);
                let s3 = actions.iter().filter(|a| a.starts_with("s3:")).count();
                assert!(s3 == 0 || s3 == actions.len(), "a statement mixes S3 and other actions: {statement}");
                if s3 > 0 {
                    *statement = resolve(statement, &names);
                } else {
                    statement["Resource"] = json!("*");
                }
            }
            (p["PolicyName"].as_str().unwrap().to_owned(), document)
        })
        .collect()
}

/// Sets every mark in the table of changed dates `marks` to a time long past; returns
/// their dates, in order. The ledger's items there (`fields…`) are no marks.
async fn backdate_marks(admin: &Aws, marks: &str) -> Vec<String> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let client = admin.dynamodb();
    let items = client.scan().table_name(marks).consistent_read(true).send().await.unwrap();
    let mut dates = Vec::new();
    for item in items.items() {
        let date = item["trip_date"].as_s().unwrap().clone();
        if date.starts_with("fields") {
            continue;
        }
        let old = AttributeValue::S("2000-01-01T00:00:00.000000Z".into());
        let put = client.put_item().table_name(marks).item("trip_date", AttributeValue::S(date.clone()));
        put.item("marked_at", old).send().await.unwrap();
        dates.push(date);
    }
    dates.sort();
    dates
}

/// `policies` without `action`, and whether they had it.
fn without(policies: &[(String, Value)], action: &str) -> (Vec<(String, Value)>, bool) {
    let mut found = false;
    let policies = policies
        .iter()
        .map(|(name, document)| {
            let mut document = document.clone();
            let statements = document["Statement"].as_array_mut().unwrap();
            for statement in statements.iter_mut() {
                let mut kept = actions(statement);
                let before = kept.len();
                kept.retain(|a| a != action);
                found |= kept.len() < before;
                statement["Action"] = json!(kept);
            }
            statements.retain(|s| !s["Action"].as_array().unwrap().is_empty());
            (name.clone(), document)
        })
        .collect();
    (policies, found)
}

/// The environment of a function running as `keys` against `endpoint`.
fn as_user<'a>(endpoint: &str, keys: &(String, String), vars: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
    let mut env = vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", keys.0.clone()),
        ("AWS_SECRET_ACCESS_KEY", keys.1.clone()),
    ];
    env.extend_from_slice(vars);
    env
}

fn error_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Error(e) => e.to_string(),
        Outcome::Response(r) => panic!("the function succeeded without the action: {r}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_works_under_exactly_its_role_and_fails_without_one_of_its_actions() {
    let _switch = IAM_SWITCH.lock().await;
    let endpoint = iam_moto_endpoint();
    let template = translated_template();
    // A moto that enforced IAM in an earlier run starts open again.
    enforce_iam(&endpoint, false).await;
    let admin = Aws::for_endpoint(&endpoint);
    let table = unique("bolt");
    let bucket = unique("iam").to_lowercase();
    assert!(DynamoStore::new(&admin, &table).create_if_missing().await.unwrap());
    assert!(admin.create_bucket_if_missing(&bucket).await.unwrap());

    let ingest_policies = role_policies(&template, "IngestRole", &bucket);
    let kpi_policies = role_policies(&template, "KpiRole", &bucket);
    let id = unique("u");
    let ingest_keys = user(&endpoint, &format!("ingest-{id}"), &ingest_policies).await;
    let kpi_keys = user(&endpoint, &format!("kpi-{id}"), &kpi_policies).await;
    // Checked after the roles' own runs, so that a role missing one of these fails there,
    // with the function's own error.
    let (ingest_short, ingest_had) = without(&ingest_policies, "dynamodb:UpdateItem");
    let (kpi_short, kpi_had) = without(&kpi_policies, "s3:GetObject");
    let ingest_short = user(&endpoint, &format!("ingest-short-{id}"), &ingest_short).await;
    let kpi_short = user(&endpoint, &format!("kpi-short-{id}"), &kpi_short).await;
    let admin_keys = admin_user(&endpoint, &id).await;
    enforce_iam(&endpoint, true).await;
    let admin = Aws::for_endpoint_as(&endpoint, &admin_keys.0, &admin_keys.1);

    // The ingest function: a batch of data/'s first records, and two that go to dead letters.
    let tmp = tempfile::tempdir().unwrap();
    let records = produced_records(tmp.path()).await;
    let first: Vec<_> = records.iter().filter(|(s, _, _)| s == "shardId-000000000000").take(400).cloned().collect();
    let mut batch = first.clone();
    // One end carries an undeclared field: the role must let the ledger be kept.
    let end = batch.iter_mut().find(|(_, _, data)| data.windows(10).any(|w| w == b"\"trip_end\"")).unwrap();
    end.2.pop();
    end.2.extend_from_slice(br#","surge_multiplier":1.5}"#);
    batch.push(("shardId-000000000000".into(), "bad-1".into(), b"not json".to_vec()));
    batch.push(("shardId-000000000000".into(), "bad-2".into(), b"{\"trip_id\":\"x\"}".to_vec()));
    let (event, _) = kinesis_event(&batch, 1);
    let ingest_vars = [
        ("TRIPFLOW_STORE", format!("dynamodb://{table}")),
        ("TRIPFLOW_DEAD_LETTER", format!("s3://{bucket}/tripflow")),
    ];
    let api = RuntimeApi::start().await;
    let function = Function::start(&api, "ingest", &as_user(&endpoint, &ingest_keys, &ingest_vars));
    let outcome = api.invoke_now(&event).await;
    assert!(failures(&outcome).is_empty(), "{outcome:?}\n{}", function.log());
    drop(function);
    let letters = s3_tree(&admin, &bucket, "tripflow/dead_letters").await;
    assert_eq!(letters.len(), 2, "{:?}", letters.keys());
    let seen = DynamoStore::new(&admin, &table).seen_fields().await.unwrap();
    assert_eq!(seen.iter().map(|f| (f.name.as_str(), f.events)).collect::<Vec<_>>(), [("surge_multiplier", 1)]);

    // The KPI function, with Parquet, for every date the batch's events name.
    let mut dates: Vec<String> = first
        .iter()
        .filter_map(|(_, _, data)| serde_json::from_slice::<Value>(data).ok())
        .flat_map(|v| ["pickup_datetime", "dropoff_datetime"].map(|f| v[f].as_str().map(|t| t[..10].to_owned())))
        .flatten()
        .collect();
    dates.sort();
    dates.dedup();
    let kpi_vars = [
        ("TRIPFLOW_STORE", format!("dynamodb://{table}")),
        ("TRIPFLOW_OUT", format!("s3://{bucket}/tripflow")),
        ("TRIPFLOW_PARQUET", "true".into()),
    ];
    // The nightly run: its window, and the dates the ingest function marked, backdated
    // here past the time a batch may take, so that the run clears them.
    let marks = tripflow::store::dynamodb::changed_dates_table(&table);
    let marked = backdate_marks(&admin, &marks).await;
    assert!(!marked.is_empty() && marked.iter().all(|d| dates.contains(d)), "{marked:?}");
    let api = RuntimeApi::start().await;
    let function = Function::start(&api, "kpi", &as_user(&endpoint, &kpi_keys, &kpi_vars));
    let outcome = api.invoke_now(&json!({ "scheduled_time": "2024-07-01T23:59:00Z" })).await;
    let Outcome::Response(summary) = &outcome else { panic!("{outcome:?}\n{}", function.log()) };
    assert!(!summary["dates"].as_array().unwrap().is_empty(), "{summary}");
    assert_eq!(summary["changed"], json!(marked), "{summary}");
    drop(function);
    assert_eq!(backdate_marks(&admin, &marks).await, Vec::<String>::new(), "the run cleared the marks it read");
    let written = s3_tree(&admin, &bucket, "tripflow").await;
    let has = |suffix: &str| written.keys().any(|k| k.starts_with("kpi_output/") && k.ends_with(suffix));
    assert!(has("/kpi.json") && has(".parquet") && has("report.html"), "{:?}", written.keys());
    assert!(written.keys().any(|k| k.starts_with("snapshots/")), "{:?}", written.keys());

    // Without one action each needs, each fails, saying S3 or DynamoDB refused.
    assert!(ingest_had && kpi_had, "the roles grant dynamodb:UpdateItem and s3:GetObject");
    let api = RuntimeApi::start().await;
    let function = Function::start(&api, "kpi", &as_user(&endpoint, &kpi_short, &kpi_vars));
    let error = error_text(&api.invoke_now(&json!({ "dates": dates })).await);
    assert!(error.contains("403") || error.contains("AccessDenied"), "{error}\n{}", function.log());
    drop(function);

    let api = RuntimeApi::start().await;
    let function = Function::start(&api, "ingest", &as_user(&endpoint, &ingest_short, &ingest_vars));
    let (event, _) = kinesis_event(&first[..10], 500);
    let error = error_text(&api.invoke_now(&event).await);
    assert!(error.contains("AccessDenied") || error.contains("not authorized"), "{error}\n{}", function.log());
    drop(function);
    enforce_iam(&endpoint, false).await;
}

/// Named policy documents.
type Policies = Vec<(String, Value)>;

/// An IAM user allowed everything, and its keys: the test's own hands once IAM is
/// enforced.
async fn admin_user(endpoint: &str, id: &str) -> (String, String) {
    let everything = [(
        "all".to_owned(),
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
    )];
    user(endpoint, &format!("admin-{id}"), &everything).await
}

/// `env` as a function's variables.
fn vars(env: &[(String, String)]) -> Vec<(&str, String)> {
    env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
}

/// The stack `.ci/run` created from the translated template on this moto, as deployed
/// (`deploy/stack_on_moto.py`): each function's environment and its role's policies as
/// the services hold them, and the stack's stream and bucket.
fn deployed_stack() -> Value {
    let Some(path) = std::env::var_os("TRIPFLOW_TEST_STACK").map(PathBuf::from) else {
        panic!(
            "TRIPFLOW_TEST_STACK is not set: create the stack on the IAM moto with `python deploy/stack_on_moto.py \
             $TRIPFLOW_TEST_IAM_ENDPOINT /tmp/template.json tripflow-ci /tmp/deployed.json` (moto's virtualenv has \
             boto3; bash .ci/run does this) and point TRIPFLOW_TEST_STACK at the last file"
        )
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_s_functions_run_as_deployed_under_its_roles() {
    let _switch = IAM_SWITCH.lock().await;
    let endpoint = iam_moto_endpoint();
    let stack = deployed_stack();
    enforce_iam(&endpoint, false).await;
    let tmp = tempfile::tempdir().unwrap();
    let expected = cli_run(tmp.path()).await;

    // One IAM user per function, with its role's policies as IAM holds them.
    let id = unique("deployed");
    let function = |logical: &str| -> (Vec<(String, String)>, Policies) {
        let f = &stack["functions"][logical];
        let env =
            f["env"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
        let policies = f["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].clone()))
            .collect();
        (env, policies)
    };
    let (ingest_env, ingest_policies) = function("IngestFunction");
    let (kpi_env, kpi_policies) = function("KpiFunction");
    let ingest_keys = user(&endpoint, &format!("ingest-{id}"), &checkable(&ingest_policies)).await;
    let kpi_keys = user(&endpoint, &format!("kpi-{id}"), &checkable(&kpi_policies)).await;
    let admin_keys = admin_user(&endpoint, &id).await;

    // data/ in through the stack's stream, as a producer would put it.
    let open = Aws::for_endpoint(&endpoint);
    let stream = tripflow::stream::kinesis::KinesisStream::new(&open, stack["stream"].as_str().unwrap());
    let report = crate::common::produce_dir(&stream, &crate::common::data_dir()).await;
    assert!(report.not_sent.is_empty(), "{:?}", report.not_sent);
    let records = records_of(&stream).await;
    assert_eq!(records.len() as u64, report.sent);
    enforce_iam(&endpoint, true).await;
    let admin = Aws::for_endpoint_as(&endpoint, &admin_keys.0, &admin_keys.1);

    // Exactly the stack's environment; the endpoint and the role's keys are what Lambda adds.

    let api = RuntimeApi::start().await;
    let ingest = Function::start(&api, "ingest", &as_user(&endpoint, &ingest_keys, &vars(&ingest_env)));
    let stream_arn = stack["stream_arn"].as_str().unwrap();
    let shards: std::collections::BTreeSet<&String> = records.iter().map(|(s, _, _)| s).collect();
    for shard in shards {
        let of_shard: Vec<_> = records.iter().filter(|(s, _, _)| s == shard).cloned().collect();
        for (n, chunk) in of_shard.chunks(500).enumerate() {
            let (event, _) = kinesis_event_from(chunk, 1 + 500 * n as u64, stream_arn);
            let outcome = api.invoke_now(&event).await;
            assert!(failures(&outcome).is_empty(), "{outcome:?}\n{}", ingest.log());
        }
    }
    let log = ingest.log();
    assert!(
        log.contains(&format!("\"stack\":\"{}\"", stack["stack"].as_str().unwrap())),
        "EMF by the stack's name:\n{log}"
    );
    drop(ingest);

    // The KPI function writes the CLI's files into the stack's bucket.
    let dates: Vec<String> = expected
        .keys()
        .filter_map(|k| k.strip_prefix("kpi_output/date=")?.strip_suffix("/kpi.json").map(str::to_owned))
        .collect();
    let out = kpi_env.iter().find(|(k, _)| k == "TRIPFLOW_OUT").map(|(_, v)| v.clone()).unwrap();
    let (bucket, prefix) = out.trim_start_matches("s3://").split_once('/').unwrap();
    assert_eq!(bucket, stack["bucket"].as_str().unwrap(), "the stack's bucket");
    // The bucket's policy refuses plain HTTP, which is all the emulator speaks: the
    // function is refused, whatever its role grants; without the policy, it works.
    let api = RuntimeApi::start().await;
    let kpi = Function::start(&api, "kpi", &as_user(&endpoint, &kpi_keys, &vars(&kpi_env)));
    let refused = error_text(&api.invoke_now(&json!({ "dates": dates })).await);
    assert!(refused.contains("privileges") || refused.contains("AccessDenied"), "{refused}\n{}", kpi.log());
    enforce_iam(&endpoint, false).await;
    open.s3_client().delete_bucket_policy().bucket(bucket).send().await.unwrap();
    enforce_iam(&endpoint, true).await;
    let outcome = api.invoke_now(&json!({ "dates": dates })).await;
    assert!(matches!(outcome, Outcome::Response(_)), "{outcome:?}\n{}", kpi.log());
    // The live schedule's payload, under the same role: the live files of every date.
    let outcome = api.invoke_now(&json!({ "live": true })).await;
    let Outcome::Response(summary) = &outcome else { panic!("{outcome:?}\n{}", kpi.log()) };
    assert_eq!(summary["live"]["written"].as_array().unwrap().len(), dates.len(), "{summary}");
    drop(kpi);
    let written = s3_tree(&admin, bucket, &format!("{prefix}/kpi_output")).await;
    let kpis: Vec<(&String, &Vec<u8>)> = expected.iter().filter(|(k, _)| k.starts_with("kpi_output/date=")).collect();
    assert!(kpis.len() >= 3, "{:?}", expected.keys());
    for (path, bytes) in kpis {
        let got = written.get(path.strip_prefix("kpi_output/").unwrap());
        assert!(got == Some(bytes), "{path} differs from the CLI's, or is missing: {:?}", written.keys());
    }
    enforce_iam(&endpoint, false).await;
}
