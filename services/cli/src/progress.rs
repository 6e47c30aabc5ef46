//! Progress bars on stderr. indicatif hides a bar when stderr is not a
//! terminal, so logs and pipes get no `\r` frames, only the lines printed
//! before and after the bar.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn with `template` (indicatif's syntax).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#.");
    ProgressBar::new(len).with_style(style)
}
