//! The sans-IO network stack: Ethernet, ARP, IPv4, ICMP echo and TCP.
//!
//! Received frames are parsed with `smoltcp::wire` views (zero copy, checked); headers we
//! send are emitted by [`headers`] into small per-segment header buffers, so that a payload
//! slice (a storage DMA buffer) is gathered behind them without a copy. Nothing here touches
//! a device or reads the clock: [`iface::Stack`] takes frames and `now`, and hands frames to
//! a [`drivers::nic::Nic`] it is given.
pub mod arp;
pub use drivers::nic::checksum;
pub mod headers;
pub mod iface;
pub mod tcp;

/// Monotonic time in nanoseconds since an arbitrary start, passed into every state machine.
pub type Instant = u64;

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;
