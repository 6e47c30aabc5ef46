//! Which queue of the batcher a request waits in; its own module so that
//! the batcher and the errors (which name a full queue) both use it
//! without importing each other.

/// Interactive requests (searches) are served before bulk ones (uploads,
/// rebuilds) whenever both wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Interactive,
    Bulk,
}
