//! The hardware edges of the appliance behind two small traits: [`nic::Nic`] (burst receive,
//! gathered transmit, driver-owned frame buffers) and [`storage::Storage`] (asynchronous block
//! reads into DMA buffers, polled completions). The fast path in `appliance` sees nothing else.
pub mod cycles;
pub mod nic;
pub mod storage;
