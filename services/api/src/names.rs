//! The rule for collection names, shared by the gateway (which refuses a
//! bad name before calling the index) and the index (which stores them).
//!
//! A name is a path segment of the REST API (`/api/collections/{name}`):
//! names made only of dots are refused because clients and proxies
//! normalise `.` and `..` segments away, so such a collection could never
//! be reached again, and other characters that a URL changes (slashes,
//! control characters, spaces, `%`) are refused with them.

/// Longest collection name, in bytes.
pub const MAX_COLLECTION_NAME: usize = 128;

/// At most this much of a caller's name is quoted back in a message.
const QUOTED: usize = 64;

/// `name` for an error message: whole when short, cut (on a character
/// boundary) and marked otherwise, so that a message never grows with the
/// input (a long one does not fit in a gRPC status header).
pub fn quoted(name: &str) -> String {
    if name.len() <= QUOTED {
        return format!("{name:?}");
    }
    let mut end = QUOTED;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &name[..end], name.len())
}

/// Checks a name used to look a collection up: only its length, so that a
/// collection stored under an older, looser rule can still be reached and
/// deleted.
pub fn check_lookup(name: &str) -> Result<(), String> {
    if name.len() > MAX_COLLECTION_NAME {
        return Err(format!(
            "a collection name has at most {MAX_COLLECTION_NAME} bytes; this one has {}",
            name.len()
        ));
    }
    Ok(())
}

/// Checks the name of a collection being created.
pub fn check_new(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!(
            "a collection needs a name of 1 to {MAX_COLLECTION_NAME} characters"
        ));
    }
    check_lookup(name)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "collection name {} may hold only letters, digits, '-', '_' and '.'",
            quoted(name)
        ));
    }
    if name.chars().all(|c| c == '.') {
        return Err(format!(
            "collection name {name:?} is only dots, which URLs cannot address: add a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_urls_break_are_refused() {
        for ok in [
            "holiday",
            "a.b",
            "x_1-2",
            ".hidden",
            "v1.",
            &"a".repeat(128),
        ] {
            assert_eq!(check_new(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", ".", "..", "...", "a/b", "a b", "tab\t", "nl\n", "%2e", "é", "a?b", "a#b",
        ] {
            assert!(check_new(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(129);
        let e = check_new(&long).expect_err("too long");
        assert!(e.contains("at most 128 bytes; this one has 129"), "{e}");
        assert!(check_lookup("...").is_ok(), "old names stay reachable");
        assert!(check_lookup(&long).is_err());
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quoted("ab"), "\"ab\"");
        let q = quoted(&"é".repeat(10_000));
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("(20000 bytes)"), "{q}");
    }
}
