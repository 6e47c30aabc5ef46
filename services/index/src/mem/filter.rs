//! Which entries a search may rank. Checked inside the scan, before an
//! entry is offered to the top k, so that a filtered search still fills
//! its k results whenever k entries match (a post-filter would not).

use super::Meta;

/// Every condition set must hold; the default admits everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The label is one of these ("" is an unlabelled entry); empty: any.
    pub labels_in: Vec<String>,
    /// The label is none of these.
    pub labels_not_in: Vec<String>,
    /// The stored path starts with this; empty: any.
    pub path_prefix: String,
    /// Created at or after this Unix millisecond; 0: no lower bound.
    pub created_from_ms: i64,
    /// Created before this Unix millisecond; 0: no upper bound.
    pub created_to_ms: i64,
}

impl Filter {
    /// True when it admits everything: the scan then skips the checks.
    pub fn is_empty(&self) -> bool {
        self.labels_in.is_empty()
            && self.labels_not_in.is_empty()
            && self.path_prefix.is_empty()
            && self.created_from_ms == 0
            && self.created_to_ms == 0
    }

    pub fn admits(&self, m: &Meta) -> bool {
        let label = m.label();
        (self.labels_in.is_empty() || self.labels_in.iter().any(|l| l == label))
            && !self.labels_not_in.iter().any(|l| l == label)
            && m.path().starts_with(&self.path_prefix)
            && (self.created_from_ms == 0 || m.created_at_ms >= self.created_from_ms)
            && (self.created_to_ms == 0 || m.created_at_ms < self.created_to_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(label: &str, path: &str, at: i64) -> Meta {
        Meta::new("", "", path, label, at)
    }

    #[test]
    fn every_condition_must_hold() {
        let all = Filter::default();
        assert!(all.is_empty());
        assert!(all.admits(&meta("", "", 0)));
        let f = Filter {
            labels_in: vec!["cat".into(), String::new()],
            labels_not_in: vec!["dog".into()],
            path_prefix: "a/".into(),
            created_from_ms: 100,
            created_to_ms: 200,
        };
        assert!(!f.is_empty());
        assert!(f.admits(&meta("cat", "a/x.jpg", 100)));
        assert!(f.admits(&meta("", "a/x.jpg", 199)), "\"\" is unlabelled");
        assert!(
            !f.admits(&meta("cats", "a/x.jpg", 150)),
            "labels match exactly"
        );
        assert!(
            !f.admits(&meta("cat", "b/a/x.jpg", 150)),
            "a prefix, not a substring"
        );
        assert!(!f.admits(&meta("cat", "a/x.jpg", 99)), "from is inclusive");
        assert!(!f.admits(&meta("cat", "a/x.jpg", 200)), "to is exclusive");
        let not = Filter {
            labels_not_in: vec![String::new()],
            ..Filter::default()
        };
        assert!(!not.admits(&meta("", "", 0)));
        assert!(not.admits(&meta("x", "", 0)));
    }
}
