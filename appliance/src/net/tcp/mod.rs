//! TCP: the per-connection state machine ([`conn`]), its congestion control
//! ([`congestion`]: NewReno or CUBIC) and pacing ([`pacing`]), SYN cookies ([`cookie`]), the
//! fixed-capacity connection table ([`table`]) and the timer wheel ([`timer`]).
//!
//! There is no send buffer. A connection tracks offsets into its outgoing byte stream; when
//! it may send, it asks a [`conn::DataSource`] how many bytes at a stream offset are ready,
//! and the caller then gathers exactly those bytes from wherever they live (a storage DMA
//! buffer) behind the headers. A retransmission asks again.
pub mod congestion;
pub mod conn;
pub mod cookie;
pub mod pacing;
pub mod seq;
pub mod table;
pub mod timer;

pub use congestion::CongestionControl;
pub use conn::{Config, DataSource, Ready, RxOutcome, Segment, SegmentIn, State, TcpConn, TcpCounters};
