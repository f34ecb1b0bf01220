//! TCP sequence numbers: arithmetic and comparison modulo 2^32.
//!
//! Sequence numbers wrap, so "before" is defined over a half-circle (RFC 9293 §3.4, RFC 1982):
//! `a` is before `b` iff `(a - b) as i32 < 0`, i.e. `b` is at most 2^31 - 1 ahead of `a`. That
//! relation is not transitive (0 < 0x6000_0000 < 0xc000_0000 < 0 all hold), so [`SeqNumber`]
//! implements neither `Ord` nor `PartialOrd`, whose contracts require transitivity (sorting or a
//! `BTreeMap` would silently misbehave). Compare with the methods [`lt`](SeqNumber::lt),
//! [`le`](SeqNumber::le), [`gt`](SeqNumber::gt), [`ge`](SeqNumber::ge) instead, which are
//! meaningful for numbers less than 2^31 apart (at exactly 2^31 apart, each is before the other).

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// A TCP sequence number (or anything else on a 2^32 circle, such as a TCP timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// Whether `self` comes strictly before `other` on the circle.
    pub const fn lt(self, other: Self) -> bool {
        (self.0.wrapping_sub(other.0) as i32) < 0
    }

    /// Whether `self` is `other` or comes before it.
    pub const fn le(self, other: Self) -> bool {
        self.0 == other.0 || self.lt(other)
    }

    /// Whether `self` comes strictly after `other`.
    pub const fn gt(self, other: Self) -> bool {
        other.lt(self)
    }

    /// Whether `self` is `other` or comes after it.
    pub const fn ge(self, other: Self) -> bool {
        other.le(self)
    }

    /// Signed distance from `other` to `self` (`self - other`), in -2^31..2^31.
    pub const fn distance(self, other: Self) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
}

impl Add<u32> for SeqNumber {
    type Output = Self;
    fn add(self, rhs: u32) -> Self {
        Self(self.0.wrapping_add(rhs))
    }
}

impl Add<i32> for SeqNumber {
    type Output = Self;
    fn add(self, rhs: i32) -> Self {
        Self(self.0.wrapping_add_signed(rhs))
    }
}

impl Sub<u32> for SeqNumber {
    type Output = Self;
    fn sub(self, rhs: u32) -> Self {
        Self(self.0.wrapping_sub(rhs))
    }
}

impl Sub<i32> for SeqNumber {
    type Output = Self;
    fn sub(self, rhs: i32) -> Self {
        // Two's complement: subtracting the reinterpreted value is subtracting the signed one.
        Self(self.0.wrapping_sub(rhs as u32))
    }
}

/// `a - b` is the signed distance, as [`SeqNumber::distance`].
impl Sub for SeqNumber {
    type Output = i32;
    fn sub(self, rhs: Self) -> i32 {
        self.distance(rhs)
    }
}

impl AddAssign<u32> for SeqNumber {
    fn add_assign(&mut self, rhs: u32) {
        *self = *self + rhs;
    }
}

impl AddAssign<i32> for SeqNumber {
    fn add_assign(&mut self, rhs: i32) {
        *self = *self + rhs;
    }
}

impl SubAssign<u32> for SeqNumber {
    fn sub_assign(&mut self, rhs: u32) {
        *self = *self - rhs;
    }
}

impl SubAssign<i32> for SeqNumber {
    fn sub_assign(&mut self, rhs: i32) {
        *self = *self - rhs;
    }
}

impl From<u32> for SeqNumber {
    fn from(value: u32) -> Self {
        Self(value)
    }
}

impl From<SeqNumber> for u32 {
    fn from(value: SeqNumber) -> Self {
        value.0
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: SeqNumber = SeqNumber(u32::MAX);

    #[test]
    fn wraps() {
        assert_eq!(MAX + 1u32, SeqNumber(0));
        assert_eq!(SeqNumber(0) - 1u32, MAX);
        assert_eq!(SeqNumber(5) + (-10i32), SeqNumber(u32::MAX - 4));
        assert_eq!(SeqNumber(5) - (-10i32), SeqNumber(15));
        assert_eq!(SeqNumber(5) - i32::MIN, SeqNumber(0x8000_0005));
        let mut s = MAX;
        s += 2u32;
        assert_eq!(s, SeqNumber(1));
        s -= 2u32;
        assert_eq!(s, MAX);
        s += -1i32;
        assert_eq!(s, SeqNumber(u32::MAX - 1));
        s -= -2i32;
        assert_eq!(s, SeqNumber(0));
        assert_eq!(u32::from(SeqNumber::from(7)), 7);
        assert_eq!(SeqNumber(42).to_string(), "42");
    }

    #[test]
    fn compares_across_wrap() {
        assert!(MAX.lt(SeqNumber(0)));
        assert!(SeqNumber(0).gt(MAX));
        assert!(MAX.le(MAX) && MAX.ge(MAX));
        assert!(!MAX.lt(MAX) && !MAX.gt(MAX));
        assert!(SeqNumber(0xffff_fff0).lt(SeqNumber(0x10)));
        assert_eq!(SeqNumber(0x10) - SeqNumber(0xffff_fff0), 0x20);
        assert_eq!(SeqNumber(0xffff_fff0) - SeqNumber(0x10), -0x20);
    }

    #[test]
    fn comparison_is_not_transitive() {
        // The reason there is no Ord: a cycle of three "less than"s.
        let (a, b, c) = (SeqNumber(0), SeqNumber(0x6000_0000), SeqNumber(0xc000_0000));
        assert!(a.lt(b) && b.lt(c) && c.lt(a));
        // At exactly half the circle, each is before the other.
        let (x, y) = (SeqNumber(0), SeqNumber(0x8000_0000));
        assert!(x.lt(y) && y.lt(x));
    }

    proptest! {
        #[test]
        fn ahead_by_less_than_half_is_after(a in any::<u32>(), n in 1u32..0x8000_0000) {
            let (a, b) = (SeqNumber(a), SeqNumber(a) + n);
            prop_assert!(a.lt(b) && a.le(b) && b.gt(a) && b.ge(a));
            prop_assert!(!b.lt(a) && !a.gt(b) && !a.ge(b) && !b.le(a));
            prop_assert_eq!(b - a, n as i32);
            prop_assert_eq!(b - n, a);
        }

        #[test]
        fn signed_and_unsigned_agree(a in any::<u32>(), n in any::<i32>()) {
            prop_assert_eq!(SeqNumber(a) + n, SeqNumber(a) + n as u32);
            prop_assert_eq!(SeqNumber(a) - n, SeqNumber(a) - n as u32);
            prop_assert_eq!(SeqNumber(a) + n - n, SeqNumber(a));
        }
    }
}
