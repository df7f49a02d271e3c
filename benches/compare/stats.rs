//! One measure's samples: medians, ranges, and the runs that hung or failed, left out of the median but counted.

use std::fmt::Write as _;

use anyhow::Result;

use crate::procs::Lost;

/// One measure's samples, and how many runs hung or failed (left out of the median).
#[derive(Default)]
pub struct Series {
    v: Vec<f64>,
    hung: usize,
    failed: usize,
}

impl Series {
    pub fn push(&mut self, v: f64) {
        self.v.push(v);
    }
    pub fn push_opt(&mut self, v: Option<f64>) {
        if let Some(v) = v {
            self.v.push(v);
        }
    }
    /// A run's result; a hung or failed build is counted here instead of ending the bench.
    pub fn survive<T>(&mut self, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e) => match e.downcast_ref::<Lost>() {
                Some(lost) => {
                    eprintln!("compare: {e}");
                    match lost {
                        Lost::Hung(..) => self.hung += 1,
                        Lost::Failed(_) => self.failed += 1,
                    }
                    Ok(None)
                }
                None => Err(e),
            },
        }
    }
    /// "(min–max)", for measures whose spread matters to reading the median.
    pub fn range(&self) -> String {
        let lo = self.v.iter().copied().reduce(f64::min);
        let hi = self.v.iter().copied().reduce(f64::max);
        match lo.zip(hi) {
            Some((lo, hi)) => format!("({lo:.0}–{hi:.0})"),
            None => String::new(),
        }
    }
    /// The median with the counts of lost runs, as a table cell.
    pub fn cell(&self, unit: &Unit) -> String {
        let mut m = fmt(self.median(), unit);
        let n = self.v.len() + self.hung + self.failed;
        for (k, what) in [(self.hung, "hung"), (self.failed, "failed")] {
            if k > 0 {
                let _ = write!(m, " ({k} of {n} {what})");
            }
        }
        m
    }
    pub fn median(&self) -> Option<f64> {
        median(&self.v)
    }
    pub fn values(&self) -> &[f64] {
        &self.v
    }
    /// "(IQR lo–hi)": the middle half of the samples, less swayed by one slow run than min–max.
    pub fn iqr(&self) -> String {
        match (quantile(&self.v, 0.25), quantile(&self.v, 0.75)) {
            (Some(lo), Some(hi)) => format!("(IQR {lo:.1}–{hi:.1})"),
            _ => String::new(),
        }
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

/// The `q` quantile, interpolated between the two nearest samples.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// A 95% bootstrap interval of median(a) ÷ median(b): both resampled with replacement 2,000
/// times (a fixed seed, so a run is reproducible from its samples), the 2.5th and 97.5th
/// percentiles of the ratios. Says how far another run of the same length may land.
pub fn bootstrap_ratio(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut ratios = Vec::with_capacity(2000);
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    for _ in 0..2000 {
        for x in ra.iter_mut() {
            *x = a[next(a.len())];
        }
        for x in rb.iter_mut() {
            *x = b[next(b.len())];
        }
        if let (Some(ma), Some(mb)) = (median(&ra), median(&rb)) {
            if mb > 0.0 {
                ratios.push(ma / mb);
            }
        }
    }
    Some((quantile(&ratios, 0.025)?, quantile(&ratios, 0.975)?))
}

pub enum Unit {
    Ms,
    S,
    MBps,
    MiB,
}

pub fn fmt(v: Option<f64>, u: &Unit) -> String {
    match v {
        None => "n/a".into(),
        Some(v) => match u {
            Unit::Ms => format!("{v:.1} ms"),
            Unit::S => format!("{v:.2} s"),
            Unit::MBps => format!("{v:.0} MB/s"),
            Unit::MiB => format!("{v:.1} MiB"),
        },
    }
}
