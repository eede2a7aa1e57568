//! What weft's proxy, controller and CLI share.

pub mod identity;
pub mod prom;
