//! Scenario tests of the simulators over real HTTP on loopback (one test binary, so the
//! machine links it once).

mod amp;
mod common;
mod control;
mod faults;
mod snow;
mod xdr;
