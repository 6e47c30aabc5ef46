//! Which index shard owns a class partition. The gateway routes writes by
//! it and every index service loads only its own partitions by it, so the
//! function is part of the storage format: changing it moves partitions
//! (see the resharding procedure in docs/OPERATIONS.md).

use serde::{Deserialize, Serialize};

/// Shard `id` of `count`; the default, 0 of 1, owns everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shard {
    pub id: u32,
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Self { id: 0, count: 1 }
    }
}

/// Most shards one collection may be spread over.
pub const MAX_SHARDS: u32 = 1024;

impl Shard {
    pub fn check(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_SHARDS {
            return Err(format!(
                "shard.count must be 1 to {MAX_SHARDS}, got {}",
                self.count
            ));
        }
        if self.id >= self.count {
            return Err(format!(
                "shard.id must be below shard.count ({}), got {}: shards are numbered from 0",
                self.count, self.id
            ));
        }
        Ok(())
    }

    /// True when this shard holds the partition of `class`.
    pub fn owns(&self, class: i32) -> bool {
        self.count <= 1 || shard_of(class, self.count) == self.id
    }

    /// True for the one shard of an unsharded deployment.
    pub fn is_whole(&self) -> bool {
        self.count <= 1
    }
}

/// The shard of `count` that owns class partition `class`: SplitMix64 of
/// the class, so that neighbouring class numbers (look-alike classes are
/// often numbered together) spread over the shards.
pub fn shard_of(class: i32, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let mut z = (class as u32 as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_exactly_one_owner_and_the_function_is_stable() {
        for count in [1, 2, 3, 7] {
            for class in -5..2000 {
                let owners = (0..count)
                    .filter(|&id| Shard { id, count }.owns(class))
                    .count();
                assert_eq!(owners, 1, "class {class} of {count} shards");
            }
        }
        // Written down: a change here moves stored partitions.
        let firsts: Vec<u32> = (0..8).map(|c| shard_of(c, 3)).collect();
        assert_eq!(firsts, [1, 2, 1, 0, 1, 2, 2, 0]);
    }

    #[test]
    fn classes_spread_evenly() {
        let mut per = [0usize; 3];
        for class in 0..1000 {
            per[shard_of(class, 3) as usize] += 1;
        }
        assert!(per.iter().all(|&n| (280..=390).contains(&n)), "{per:?}");
    }

    #[test]
    fn bad_shards_are_refused() {
        assert!(Shard { id: 0, count: 0 }.check().is_err());
        assert!(Shard { id: 2, count: 2 }.check().is_err());
        assert!(Shard { id: 1, count: 2 }.check().is_ok());
    }
}
