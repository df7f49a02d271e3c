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
                        Lost::Hung(_) => self.hung += 1,
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
        if self.v.is_empty() {
            return None;
        }
        let mut v = self.v.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
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
