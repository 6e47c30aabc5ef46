//! Integration tests of the training service.
