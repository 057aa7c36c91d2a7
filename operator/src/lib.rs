//! The Relay operator: reconciles `RelayChannel` resources into NATS JetStream streams and
//! consumers and Redis channel settings.
//!
//! Module map:
//! - [`crd`]: the resource types (the CRD is generated from them);
//! - [`plan`]: pure functions from a spec to the desired JetStream and Redis state, and from
//!   desired vs observed to actions; table-tested;
#![forbid(unsafe_code)]

pub mod crd;
pub mod plan;
