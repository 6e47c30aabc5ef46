//! The `adversarial` group: attacks found by trying the running system as an
//! attacker would (issue 13, items 2-4), replayed against real services on
//! loopback. Each test performs one attack, asserts that it is refused and
//! prints one report line, so that
//!
//! ```sh
//! cargo nextest run -p cbir-cli --no-capture -E 'test(/^adversarial::/)'
//! ```
//!
//! lists every attack with its outcome (the reliability tables of docs/OPERATIONS.md).

/// Prints the report line of one refused attack.
#[allow(dead_code)]
pub fn report(attack: &str, outcome: &str) {
    println!("ADVERSARIAL | {attack} | refused: {outcome}");
}

mod internal;
mod resources;
mod web;
