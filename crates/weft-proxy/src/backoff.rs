//! Waits between attempts to reach the controller (certificates, destination streams):
//! exponential, capped, with jitter so that proxies that lost the controller together
//! do not all call it again in the same instant when it comes back.

use std::time::Duration;

use rand::Rng as _;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next attempt, between half and all of the current step
    /// ("equal jitter"); the step after it doubles.
    pub fn next_wait(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=step - half)
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500));
        for step in [100, 200, 400, 500, 500] {
            let wait = b.next_wait();
            assert!(
                wait >= ms(step / 2) && wait <= ms(step),
                "{wait:?} for {step}ms"
            );
        }
        b.reset();
        assert!(b.next_wait() <= ms(100));
    }
}
