//! Scoring findings against ground truth (`wallscope eval` and the accuracy test): per fault,
//! how many labelled (device, fault) pairs the pack found (recall) and how many of its
//! findings a label backs (precision), plus every finding on a device that carries no label.
//!
//! Only findings of severity minor and above count (info findings are context, not a
//! diagnosis). A finding the labels do not name is not a false positive when DOMAIN.md §8
//! says the labelled fault causes it on the same device: a breaker trip (F13) reboots the
//! unit (F22); trips and failed starts wear the contactor (F26).

use std::collections::{BTreeMap, BTreeSet};

use crate::rules::{Finding, Severity};

/// One ground-truth label: `device` shows `fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub device: String,
    pub fault: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{0}: the header must be device_id,fault,onset,end")]
    Header(String),
    #[error("{0}:{1}: expected device_id,fault,onset,end with a fault code F00–F26")]
    Line(String, usize),
}

/// Parses the simulator's `labels.csv` (`device_id,fault,onset,end`). `source` names the
/// text in errors.
pub fn parse_labels(text: &str, source: &str) -> Result<Vec<Label>, LabelError> {
    let mut lines = text.lines();
    if !lines
        .next()
        .is_some_and(|h| h.starts_with("device_id,fault"))
    {
        return Err(LabelError::Header(source.into()));
    }
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() < 2 || crate::rules::faults::fault(cols[1]).is_none() {
            return Err(LabelError::Line(source.into(), i + 2));
        }
        out.push(Label {
            device: cols[0].to_string(),
            fault: cols[1].to_string(),
        });
    }
    Ok(out)
}

/// Effects that follow from a cause on the same device (DOMAIN.md §8): (cause, effect).
pub const IMPLIED: [(&str, &str); 4] = [
    ("F13", "F22"),
    ("F01", "F26"),
    ("F09", "F26"),
    ("F12", "F26"),
];

/// Counts for one fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
}

impl Counts {
    pub fn precision(&self) -> Option<f64> {
        let d = self.tp + self.fp;
        (d > 0).then(|| self.tp as f64 / d as f64)
    }
    pub fn recall(&self) -> Option<f64> {
        let d = self.tp + self.fn_;
        (d > 0).then(|| self.tp as f64 / d as f64)
    }
}

/// The outcome of scoring.
#[derive(Debug, Clone, Default)]
pub struct Score {
    /// Per labelled fault (faults with labels, or with findings of a labelled kind).
    pub faults: BTreeMap<String, Counts>,
    /// Findings that a labelled cause on the same device implies.
    pub implied: u64,
    /// Findings of faults no label names, by fault.
    pub unlabelled: BTreeMap<String, u64>,
    /// "device fault" for every finding on a device without any label.
    pub healthy_hits: BTreeSet<String>,
    /// (device, fault) pairs found (minor and above).
    pub found: usize,
}

impl Score {
    /// The lowest precision or recall over all faults (1.0 when there is nothing to score).
    pub fn worst(&self) -> f64 {
        self.faults
            .values()
            .flat_map(|c| [c.precision(), c.recall()])
            .flatten()
            .fold(1.0, f64::min)
    }
}

/// Scores `findings` against `labels`.
pub fn score(labels: &[Label], findings: &[Finding]) -> Score {
    let truth: BTreeSet<(&str, &str)> = labels
        .iter()
        .map(|l| (l.device.as_str(), l.fault.as_str()))
        .collect();
    let labelled: BTreeSet<&str> = labels.iter().map(|l| l.device.as_str()).collect();
    let labelled_faults: BTreeSet<&str> = labels.iter().map(|l| l.fault.as_str()).collect();
    let found: BTreeSet<(&str, &str)> = findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .map(|f| (f.device_id.as_str(), f.fault.as_str()))
        .collect();
    let mut s = Score {
        found: found.len(),
        ..Score::default()
    };
    for (d, f) in &truth {
        let c = s.faults.entry((*f).to_string()).or_default();
        if found.contains(&(*d, *f)) {
            c.tp += 1;
        } else {
            c.fn_ += 1;
        }
    }
    for (d, f) in &found {
        if truth.contains(&(*d, *f)) {
            continue;
        }
        if IMPLIED
            .iter()
            .any(|(cause, effect)| effect == f && truth.contains(&(*d, *cause)))
        {
            s.implied += 1;
            continue;
        }
        if !labelled.contains(d) {
            s.healthy_hits.insert(format!("{d} {f}"));
        }
        if labelled_faults.contains(f) {
            s.faults.entry((*f).to_string()).or_default().fp += 1;
        } else {
            *s.unlabelled.entry((*f).to_string()).or_default() += 1;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(device: &str, fault: &str, severity: Severity) -> Finding {
        Finding {
            rule: "r".into(),
            fault: fault.into(),
            device_id: device.into(),
            first_ms: 0,
            last_ms: 1,
            severity,
            class: String::new(),
            owner: String::new(),
            title: String::new(),
            summary: String::new(),
            evidence: Vec::new(),
            steps: Vec::new(),
            detected_ms: 1,
        }
    }

    #[test]
    fn counts_hits_misses_implied_and_healthy_findings() {
        let labels = parse_labels(
            "device_id,fault,onset,end\na,F01,0,1\nb,F13,0,1\nc,F01,0,1\n",
            "labels.csv",
        )
        .unwrap();
        let findings = vec![
            finding("a", "F01", Severity::Major),
            finding("a", "F26", Severity::Minor), // implied by F01
            finding("b", "F22", Severity::Minor), // implied by F13, but F13 itself missed
            finding("d", "F01", Severity::Major), // healthy device
            finding("d", "F20", Severity::Minor), // healthy, unlabelled fault
            finding("c", "F01", Severity::Info),  // info does not count
        ];
        let s = score(&labels, &findings);
        assert_eq!(
            s.faults["F01"],
            Counts {
                tp: 1,
                fp: 1,
                fn_: 1
            }
        );
        assert_eq!(
            s.faults["F13"],
            Counts {
                tp: 0,
                fp: 0,
                fn_: 1
            }
        );
        assert_eq!(s.implied, 2);
        assert_eq!(s.unlabelled["F20"], 1);
        assert_eq!(
            s.healthy_hits.iter().cloned().collect::<Vec<_>>(),
            ["d F01", "d F20"]
        );
        assert_eq!(s.worst(), 0.0);
        assert_eq!(s.faults["F01"].precision(), Some(0.5));
    }

    #[test]
    fn rejects_a_file_that_is_not_labels() {
        assert!(matches!(
            parse_labels("ts,topic\n", "x.csv"),
            Err(LabelError::Header(_))
        ));
        assert!(matches!(
            parse_labels("device_id,fault,onset,end\na,F99,0,1\n", "x.csv"),
            Err(LabelError::Line(_, 2))
        ));
    }
}
