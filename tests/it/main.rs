//! tripflow's integration tests, in one binary so they link once.
//!
//! The conformance suites (`stream_suite`, `store_suite`, `deadletter_suite`) hold one body per behaviour,
//! written against the traits; each backend's tests call them. The AWS backends' tests
//! need the emulator (`moto`): `bash .ci/run` starts it, and without it they fail. The
//! `lambda` tests run the real `tripflow-lambda` binary against a Runtime API served here.

mod bad_records;
mod cli;
mod common;
mod counts;
mod crash;
mod deadletter_suite;
mod edge_values;
mod emulators;
mod end_to_end;
mod faults;
mod fuzz_corpus;
mod golden;
mod lambda;
mod lambda_iam;
mod late_events;
mod live;
mod merge_props;
mod moto;
mod on_aws;
mod redrive;
mod report;
mod reshard;
mod sql;
mod store_suite;
mod stream_suite;
mod template;
mod undeclared;
