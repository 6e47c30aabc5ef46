//! Integration tests of the training service: a real `cbir-training`
//! process, killed during a job.

mod kill;
