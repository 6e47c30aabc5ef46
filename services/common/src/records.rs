//! The text of an image record (file name, path, label): the limits the
//! index enforces, in one place, so that the gateway can check each file of
//! an upload before the Upsert and fail the bad one alone.

/// Longest text fields of a record, in bytes (UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    pub max_file_name: usize,
    pub max_path: usize,
    pub max_label: usize,
}

/// The index's defaults (`limits.max_name_len`, `max_path_len`,
/// `max_label_len`); the database columns are sized for them.
pub const DEFAULT_TEXT_LIMITS: TextLimits = TextLimits {
    max_file_name: 1024,
    max_path: 4096,
    max_label: 512,
};

/// Why the record's text is refused, naming the field and the file: over
/// its length limit, or holding a control character (NUL, newline...),
/// which breaks listings, logs and the UI.
pub fn check_text(
    file_name: &str,
    path: &str,
    label: &str,
    limits: &TextLimits,
) -> Result<(), String> {
    for (what, value, max) in [
        ("file_name", file_name, limits.max_file_name),
        ("path", path, limits.max_path),
        ("label", label, limits.max_label),
    ] {
        if value.len() > max {
            return Err(format!(
                "{what} of {:?} is {} bytes, the limit is {max}",
                shorten(file_name),
                value.len()
            ));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(format!(
                "{what} of {:?} holds the control character {:?}: rename the file or its folder",
                shorten(file_name),
                c
            ));
        }
    }
    Ok(())
}

/// A file name short enough to quote in an error.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_control_characters_are_refused_by_field() {
        let l = DEFAULT_TEXT_LIMITS;
        assert!(check_text("a.jpg", "x/a.jpg", "x", &l).is_ok());
        assert!(check_text("é.jpg", "dossier/é.jpg", "étiquette ✓", &l).is_ok());
        let e = check_text("a.jpg", "a.jpg", &"x".repeat(513), &l).unwrap_err();
        assert!(
            e.starts_with("label of \"a.jpg\" is 513 bytes, the limit is 512"),
            "{e}"
        );
        let long = "n".repeat(1025);
        let e = check_text(&long, "p", "", &l).unwrap_err();
        assert!(e.starts_with("file_name of \"nnn"), "{e}");
        assert!(e.len() < 200, "the name is shortened: {e}");
        let e = check_text("a.jpg", &"p".repeat(4097), "", &l).unwrap_err();
        assert!(e.contains("path"), "{e}");
        let e = check_text("a\0.jpg", "a.jpg", "", &l).unwrap_err();
        assert!(e.contains("control character"), "{e}");
        let e = check_text("a.jpg", "a.jpg", "two\nlines", &l).unwrap_err();
        assert!(e.starts_with("label"), "{e}");
    }
}
