//! What the CLI shows: results on stdout (text, or exactly one JSON
//! document with `--json`), and on stderr notes and progress — bars only
//! when stderr is a terminal and neither `--quiet` nor `--json` is given.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
    pub quiet: bool,
    /// Bars and spinners on stderr.
    pub bars: bool,
}

impl Out {
    pub fn new(json: bool, quiet: bool) -> Self {
        Self {
            json,
            quiet,
            bars: !json && !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// A command's result: `value` with `--json`, else the text.
    pub fn result(&self, value: &Value, text: impl FnOnce() -> String) {
        let mut stdout = std::io::stdout().lock();
        let line = if self.json { value.to_string() } else { text() };
        if !line.is_empty() {
            let _ = writeln!(stdout, "{}", line.trim_end_matches('\n'));
        }
    }

    /// One NDJSON line (streaming commands with `--json`).
    pub fn json_line(&self, value: &Value) {
        let _ = writeln!(std::io::stdout().lock(), "{value}");
    }

    /// A line of progress on stderr (not with `--quiet` or `--json`).
    pub fn note(&self, text: &str) {
        if !self.quiet && !self.json {
            eprintln!("{text}");
        }
    }

    /// Live output of remote work, as it comes (stderr, so stdout stays
    /// the result).
    pub fn live(&self, text: &str) {
        if !self.quiet && !self.json {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }

    pub fn progress(&self) -> Progress {
        Progress { out: *self }
    }
}

/// Progress of a transfer: a bar on a terminal, nothing otherwise.
pub struct Progress {
    out: Out,
}

impl Progress {
    pub fn bar(&self, what: &str, total: u64, bytes: bool) -> ProgressBar {
        if !self.out.bars || total == 0 {
            return ProgressBar::hidden();
        }
        let template = if bytes {
            "{msg:>11} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}"
        } else {
            "{msg:>11} {wide_bar} {pos}/{len}"
        };
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar
    }

    pub fn spinner(&self, what: &str) -> ProgressBar {
        if !self.out.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    }

    pub fn note(&self, text: &str) {
        self.out.note(text);
    }
}

/// USD as the API shows it (6 decimals).
pub fn usd(value: &Value) -> String {
    format!("${:.6}", value.as_f64().unwrap_or(0.0))
}

/// A plain table: a header row and rows, columns padded to fit.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns() {
        let t = table(
            &["criterion", "weight"],
            &[
                vec!["read-spec".into(), "2".into()],
                vec!["x".into(), "10".into()],
            ],
        );
        assert_eq!(t, "criterion  weight\nread-spec  2\nx          10");
    }

    #[test]
    fn money_has_six_decimals() {
        assert_eq!(usd(&serde_json::json!(0.10308)), "$0.103080");
        assert_eq!(usd(&Value::Null), "$0.000000");
    }
}
