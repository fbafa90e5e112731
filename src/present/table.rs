//! Tables whose columns are as wide as their widest cell, and the BCC tools'
//! log2 histograms.

use anyhow::Result;

use crate::present::output::Output;

/// A table printed with columns as wide as their widest cell; the last
/// column is not padded (it may be long, a file name say).
pub struct Table {
    headers: Vec<&'static str>,
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns named with a leading `>` are right-aligned (numbers).
    pub fn new(columns: &[&'static str]) -> Table {
        Table {
            headers: columns.iter().map(|c| c.trim_start_matches('>')).collect(),
            right_aligned: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self, out: &mut Output) -> Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let render = |cells: &mut dyn Iterator<Item = &str>| {
            let mut line = String::new();
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                let width = widths[i];
                let last = i + 1 == widths.len();
                match (self.right_aligned[i], last) {
                    (true, _) => line.push_str(&format!("{cell:>width$}")),
                    (false, true) => line.push_str(cell),
                    (false, false) => line.push_str(&format!("{cell:<width$}")),
                }
            }
            line
        };
        out.line(&render(&mut self.headers.iter().copied()))?;
        for row in &self.rows {
            out.line(&render(&mut row.iter().map(String::as_str)))?;
        }
        Ok(())
    }
}

/// A log2 histogram as the BCC tools print it: bucket 0 holds 0 and 1, bucket
/// i (i > 0) the values from 2^i to 2^(i+1) - 1; empty buckets at the ends are left out.
pub fn log2_histogram(unit: &str, buckets: &[u64]) -> Vec<String> {
    const BAR: u64 = 40;
    let Some(last) = buckets.iter().rposition(|&c| c > 0) else {
        return Vec::new();
    };
    let max = buckets.iter().copied().max().unwrap_or(1).max(1);
    let mut lines = vec![format!("{:>24} : {:<8} distribution", unit, "count")];
    for (i, &count) in buckets.iter().enumerate().take(last + 1) {
        let (low, high) = if i == 0 {
            (0, 1)
        } else {
            (1u64 << i, (1u64 << (i + 1)) - 1)
        };
        let stars = (count * BAR).div_ceil(max) as usize;
        lines.push(format!(
            "{:>10} -> {:<10} : {:<8} |{:<40}|",
            low,
            high,
            count,
            "*".repeat(stars)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_histogram_buckets() {
        assert!(log2_histogram("usecs", &[0, 0, 0]).is_empty());
        let lines = log2_histogram("usecs", &[1, 0, 4, 0, 0]);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].trim_start().starts_with("usecs : count"));
        assert!(lines[1].contains("0 -> 1 ") && lines[1].contains("|**********"));
        assert!(lines[2].contains("2 -> 3 ") && lines[2].contains(": 0 "));
        assert!(lines[3].contains("4 -> 7 ") && lines[3].contains(&"*".repeat(40)));
    }
}
