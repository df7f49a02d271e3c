//! Scaled integers written as Go writes them: `whole.frac` with the fraction's trailing zeros, and a bare point, left out.
//!
//! Go's duration and time printers both work from integers (nanoseconds), never floats, so
//! neither rounds; the shared rule is only how the fraction is trimmed.

/// `frac` (out of `scale`, a power of ten) as `.ddd` with trailing zeros dropped; empty for 0.
pub fn fraction(frac: u64, scale: u64) -> String {
    if frac == 0 {
        return String::new();
    }
    let digits = scale.ilog10() as usize;
    let f = format!("{frac:0digits$}");
    format!(".{}", f.trim_end_matches('0'))
}

/// `whole.frac` with the fraction's trailing zeros (and a bare point) left out.
pub fn decimal(whole: u64, frac: u64, scale: u64) -> String {
    format!("{whole}{}", fraction(frac, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_drop_trailing_zeros() {
        assert_eq!(fraction(0, 1_000_000_000), "");
        assert_eq!(fraction(5, 1_000), ".005");
        assert_eq!(fraction(250_000_000, 1_000_000_000), ".25");
        assert_eq!(fraction(1, 1_000_000_000), ".000000001");
        assert_eq!(decimal(3, 0, 1_000), "3");
        assert_eq!(decimal(1, 500, 1_000), "1.5");
    }
}
