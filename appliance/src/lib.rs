//! The appliance: a sans-IO network stack, HTTP/1.1, media volumes, the per-core pipeline
//! that ties them to a NIC and a storage backend, and the management console.
pub mod stats;
pub mod boot;
