//! Integration tests of the training service: a real `cbir-training`
//! process, killed during a job; the store under concurrent writers.

mod kill;
mod store;
