//! Go byte-compatibility: numbers, durations, sizes, times, tables and `--format` templates written (and read) exactly as buildctl's Go code does.
//!
//! Users compare bkrun's output with buildctl's byte for byte, and flags such as
//! `--keep-duration 48h` take Go's grammar, so every place that prints or reads these forms
//! goes through here. The module depends on nothing of bkrun's: it is the bottom of the tree.

pub mod durations;
pub mod jsonstr;
pub mod numbers;
pub mod sizes;
pub mod tabwriter;
pub mod template;
pub mod times;
