//! What weft's proxy, controller and CLI share.

pub mod identity;
pub mod log;
pub mod mesh;
pub mod pods;
pub mod prom;
