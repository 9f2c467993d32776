//! Proxy-wide state beside the pipeline, in front of the session: the login rate
//! (`max_logins_per_second`). A storm of new connections is spread over time instead of taking
//! every core at once (TLS handshakes and SCRAM proofs cost CPU); a login that would wait longer
//! than its login deadline is refused at once. The arithmetic is the generic cell rate
//! algorithm: one instant per proxy, advanced by one interval per admitted login.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a new connection is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Now,
    After(Duration),
    Refused,
}

/// One step of the algorithm: `tat` is when the bucket is next empty. `per_second` logins a
/// second, with bursts of up to `per_second` (one second's worth) admitted at once. Returns the
/// new `tat` (unchanged when refused).
pub fn admit(tat: Instant, now: Instant, per_second: u32, max_wait: Duration) -> (Instant, Admit) {
    let interval = Duration::from_secs(1) / per_second.max(1);
    let tolerance = interval * per_second.saturating_sub(1);
    let start = tat.max(now);
    let ahead = start - now;
    let wait = ahead.saturating_sub(tolerance);
    if wait > max_wait {
        return (tat, Admit::Refused);
    }
    let verdict = if wait.is_zero() {
        Admit::Now
    } else {
        Admit::After(wait)
    };
    (start + interval, verdict)
}

#[derive(Default)]
pub struct LoginRate {
    tat: Mutex<Option<Instant>>,
}

impl LoginRate {
    /// Admits one login now (`per_second` 0: no limit).
    pub fn admit(&self, per_second: u32, max_wait: Duration) -> Admit {
        if per_second == 0 {
            return Admit::Now;
        }
        let now = Instant::now();
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let (next, verdict) = admit(tat.unwrap_or(now), now, per_second, max_wait);
        *tat = Some(next);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate_then_refusal() {
        let t0 = Instant::now();
        let max_wait = Duration::from_millis(2500);
        let mut tat = t0;
        let mut verdicts = Vec::new();
        for _ in 0..10 {
            let (next, v) = admit(tat, t0, 4, max_wait);
            tat = next;
            verdicts.push(v);
        }
        let ms = |n| Admit::After(Duration::from_millis(n));
        assert_eq!(
            verdicts,
            [
                Admit::Now,
                Admit::Now,
                Admit::Now,
                Admit::Now,
                ms(250),
                ms(500),
                ms(750),
                ms(1000),
                ms(1250),
                ms(1500),
            ]
        );
        // Ten more at once: those past 2.5 s are refused and take no slot.
        let verdicts: Vec<_> = (0..6)
            .map(|_| {
                let (next, v) = admit(tat, t0, 4, max_wait);
                tat = next;
                v
            })
            .collect();
        assert_eq!(
            verdicts,
            [
                ms(1750),
                ms(2000),
                ms(2250),
                ms(2500),
                Admit::Refused,
                Admit::Refused
            ]
        );
        // Later, the bucket has drained again.
        let (_, v) = admit(tat, t0 + Duration::from_secs(10), 4, max_wait);
        assert_eq!(v, Admit::Now);
    }
}
