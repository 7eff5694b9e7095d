//! The appliance: a sans-IO network stack, HTTP/1.1, media volumes, the per-core pipeline
//! that ties them to a NIC and a storage backend, and the management console.
pub mod accounting;
pub mod bench;
pub mod boot;
pub mod console;
pub mod http;
pub mod loopback;
pub mod net;
pub mod server;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod volume;
