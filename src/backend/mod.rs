//! What the backends share beneath the stages: the AWS configuration and clients
//! ([`aws`]), the one parser of backend URLs ([`location`]), and the SQLite connection of
//! the older embedded stream and table (`sqlite`).

pub mod aws;
pub mod location;
pub(crate) mod sqlite;
