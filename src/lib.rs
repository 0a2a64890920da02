//! mlguard: a Kubernetes admission webhook that enforces ML and GPU resource policy, with the
//! policies written in Rego and evaluated in-process.

pub mod admission;
pub mod audit;
pub mod bench;
pub mod casefile;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod decision_log;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod reload;
pub mod server;
pub mod tls;
