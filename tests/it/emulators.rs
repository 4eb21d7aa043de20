//! The second, independent AWS emulators, beside moto: kinesalite (Kinesis) and dynalite
//! (DynamoDB), both from npm, which differ from moto where it matters (kinesalite
//! reshards as Kinesis does; dynalite does not return the stored item of a failed
//! condition). And a moto of its own for the IAM-enforced tests, since enforcing IAM is
//! a switch global to a moto server. `bash .ci/run` installs and starts all three; when
//! one is not there its tests fail, saying how to start it.

use tripflow::backend::aws::Aws;

use crate::moto::require_at;

fn from_env(variable: &str, default: &str) -> String {
    std::env::var(variable).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

/// kinesalite's endpoint (`TRIPFLOW_TEST_KINESALITE_ENDPOINT`).
pub fn kinesalite_endpoint() -> String {
    let url = from_env("TRIPFLOW_TEST_KINESALITE_ENDPOINT", "http://127.0.0.1:4567");
    require_at(&url, "kinesalite", "`npx kinesalite --port 4567`", "TRIPFLOW_TEST_KINESALITE_ENDPOINT")
}

/// dynalite's endpoint (`TRIPFLOW_TEST_DYNALITE_ENDPOINT`).
pub fn dynalite_endpoint() -> String {
    let url = from_env("TRIPFLOW_TEST_DYNALITE_ENDPOINT", "http://127.0.0.1:4568");
    require_at(&url, "dynalite", "`npx dynalite --port 4568`", "TRIPFLOW_TEST_DYNALITE_ENDPOINT")
}

/// The IAM-enforcing moto's endpoint (`TRIPFLOW_TEST_IAM_ENDPOINT`).
pub fn iam_moto_endpoint() -> String {
    let url = from_env("TRIPFLOW_TEST_IAM_ENDPOINT", "http://127.0.0.1:5001");
    require_at(&url, "the IAM-enforcing moto", "`moto_server -H 127.0.0.1 -p 5001`", "TRIPFLOW_TEST_IAM_ENDPOINT")
}

/// Kinesis on kinesalite.
pub fn kinesalite() -> Aws {
    Aws::for_endpoint(&kinesalite_endpoint())
}

/// DynamoDB on dynalite.
pub fn dynalite() -> Aws {
    Aws::for_endpoint(&dynalite_endpoint())
}
