//! WAL positions as PostgreSQL prints them (`16/B374D848`), for lag and read-your-writes.

use std::fmt;
use std::str::FromStr;

/// A WAL position (pg_lsn): bytes since the start of WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WAL position like '0/3000060'")]
pub struct LsnError(pub String);

impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(s: &str) -> Result<Self, LsnError> {
        let bad = || LsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl Lsn {
    /// Bytes `self` is ahead of `other` (0 when behind).
    pub fn ahead_of(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_postgres() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert!(" 0/3000060 ".parse::<Lsn>().is_ok());
    }

    #[test]
    fn rejects_what_postgres_rejects() {
        for bad in ["", "0", "/1", "1/", "x/1", "0/123456789", "1/2/3", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_across_the_high_word() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.ahead_of(a), 1);
        assert_eq!(a.ahead_of(b), 0);
    }
}
