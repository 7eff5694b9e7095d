//! The whole server pipeline over the simulated link, frames from the fuzz input injected
//! toward it between rounds (see `appliance_fuzz::net`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| appliance_fuzz::net::run(data));
