//! Log output that never takes a process down.
//!
//! A log line that cannot be written (a full disk under a redirected stderr, a closed
//! pipe) is dropped and counted. The default path would report the failure with
//! `eprintln!`, which panics when stderr itself fails, and with `panic = "abort"` a
//! full disk would end every proxy.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because stderr could not take them, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Standard error that drops (and counts) what it cannot write instead of failing.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_never_fail() {
        let mut out = LossyStderr;
        assert_eq!(out.write(b"").unwrap(), 0);
        assert!(out.flush().is_ok());
    }
}
