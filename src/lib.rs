//! mlguard: a Kubernetes admission webhook that enforces ML and GPU resource policy, with the
//! policies written in Rego and evaluated in-process.

pub mod admission;
pub mod casefile;
pub mod cluster;
pub mod pipeline;
pub mod policy;
