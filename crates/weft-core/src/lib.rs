//! What weft's proxy, controller and CLI share.

#[cfg(feature = "admin")]
pub mod admin;
pub mod identity;
pub mod iptables;
pub mod log;
#[cfg(feature = "mesh")]
pub mod mesh;
#[cfg(feature = "netns")]
pub mod netns;
#[cfg(feature = "outbound-ext")]
pub mod outbound_ext;
#[cfg(feature = "mesh")]
pub mod pods;
pub mod policy;
#[cfg(feature = "prom")]
pub mod prom;
#[cfg(feature = "watch")]
pub mod watch;
