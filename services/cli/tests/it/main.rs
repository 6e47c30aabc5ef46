//! System tests: several real services in one process, real network, real
//! images from ../shared/data.

mod access;
mod adversarial;
mod backup;
mod browse;
mod browser;
mod cli;
mod concurrency;
mod datasets;
mod deploy;
mod dupes;
mod filters;
mod gateway;
mod images;
mod index_jobs;
mod internal;
mod openapi;
mod python_client;
mod rebuild;
mod refined;
mod requests;
mod reupload;
mod shards;
mod system;
mod tls;
mod traces;
mod training;
mod uploads;
