//! The sample app role: `tether sample-app` as a child process.

use std::collections::BTreeMap;

use crate::proc::{Proc, Spawn};

/// A running `tether sample-app` and its region → URL map, from its
/// ready lines (`tether sample-app region=<r> listening on <url>`).
pub struct SampleApp {
    pub proc: Proc,
    pub urls: BTreeMap<String, String>,
}

impl SampleApp {
    /// Starts `tether sample-app <args>` and waits for its first
    /// `regions` stdout lines (20 s), each of which must be a ready line.
    pub fn start(args: &[&str], regions: usize) -> SampleApp {
        let started = Spawn::tether("sample-app")
            .arg("sample-app")
            .args(args)
            .ready_lines("", regions)
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let urls = started
            .ready
            .iter()
            .map(|line| {
                let rest = line
                    .strip_prefix("tether sample-app region=")
                    .unwrap_or_else(|| panic!("unexpected line {line:?}"));
                let (region, url) = rest
                    .split_once(" listening on ")
                    .unwrap_or_else(|| panic!("unexpected ready line {rest:?}"));
                (region.to_owned(), url.to_owned())
            })
            .collect();
        SampleApp {
            proc: started.proc,
            urls,
        }
    }
}
