//! System tests: several real services in one process, real network, real
//! images from ../shared/data.

mod rebuild;
