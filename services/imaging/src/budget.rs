//! A process-wide bound on decoding: how many images are decoded at once and
//! how many bytes their pixels may hold together.
//!
//! A few hundred kilobytes of PNG can claim 8000x8000 16-bit pixels, over a
//! gigabyte once decoded and converted; a handful at once would take the
//! whole process down. Every decode first reads the header (cheap), takes
//! its estimated peak (`Header::peak_bytes`) from the budget, waiting up to
//! a deadline, and gives it back when its pixels are dropped. One image that
//! needs more than the whole budget is refused outright.
//!
//! The budget is per process, not per service: `cbir up` runs every service
//! in one process, and they share the machine's memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::{Error, Limits, Result};

/// Budget units are KiB: a semaphore takes at most `u32::MAX` permits at
/// once, and 4 TiB is out of reach.
const UNIT: u64 = 1024;

/// What one decode holds until its pixels are gone.
#[derive(Debug)]
pub struct Permit {
    _memory: Option<OwnedSemaphorePermit>,
    _slot: OwnedSemaphorePermit,
    /// Bytes taken from the budget.
    pub bytes: u64,
}

#[derive(Debug)]
pub struct Budget {
    memory: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    limits: Limits,
    units: u64,
    /// Decodes let through so far.
    granted: AtomicU64,
}

fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT)
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

impl Budget {
    /// A budget of `limits.decode_memory_bytes` and `limits.max_decodes`.
    pub fn new(limits: &Limits) -> Self {
        let slots = if limits.max_decodes == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            limits.max_decodes
        };
        let units = units(limits.decode_memory_bytes).min(Semaphore::MAX_PERMITS as u64);
        Self {
            memory: Arc::new(Semaphore::new(units as usize)),
            slots: Arc::new(Semaphore::new(slots)),
            limits: *limits,
            units,
            granted: AtomicU64::new(0),
        }
    }

    /// The budget of this process: made from the `limits` of the first
    /// service that asks; later callers get the same one (compare
    /// [`Budget::limits`] to see whether theirs were used).
    pub fn shared(limits: &Limits) -> Arc<Budget> {
        static SHARED: OnceLock<Arc<Budget>> = OnceLock::new();
        SHARED.get_or_init(|| Arc::new(Budget::new(limits))).clone()
    }

    /// Whether this budget was made from the same decode settings as
    /// `limits` (another service of the process may have set it first).
    pub fn made_from(&self, limits: &Limits) -> bool {
        (
            self.limits.decode_memory_bytes,
            self.limits.max_decodes,
            self.limits.decode_wait_ms,
        ) == (
            limits.decode_memory_bytes,
            limits.max_decodes,
            limits.decode_wait_ms,
        )
    }

    pub fn memory_bytes(&self) -> u64 {
        self.limits.decode_memory_bytes
    }

    /// Decodes let through since the start: one per decoded image.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Bytes held by decodes now.
    pub fn in_use(&self) -> u64 {
        (self.units - (self.memory.available_permits() as u64).min(self.units)) * UNIT
    }

    fn check(&self, bytes: u64) -> Result<u32> {
        let need = units(bytes);
        if need > self.units {
            return Err(Error::OverBudget {
                need_mib: mib(bytes),
                budget_mib: mib(self.limits.decode_memory_bytes),
            });
        }
        // `need <= units <= MAX_PERMITS < u32::MAX`.
        Ok(u32::try_from(need).unwrap_or(u32::MAX))
    }

    fn busy(&self) -> Error {
        Error::Busy {
            waited_ms: self.limits.decode_wait_ms,
        }
    }

    /// Takes `bytes` and a decode slot, waiting up to `decode_wait_ms`.
    pub async fn acquire(&self, bytes: u64) -> Result<Permit> {
        let need = self.check(bytes)?;
        let wait = Duration::from_millis(self.limits.decode_wait_ms);
        let take = async {
            let slot = self.slots.clone().acquire_owned().await;
            let memory = if need == 0 {
                None
            } else {
                Some(self.memory.clone().acquire_many_owned(need).await)
            };
            (slot, memory)
        };
        match tokio::time::timeout(wait, take).await {
            Ok((Ok(slot), memory)) => {
                let memory = memory.transpose().map_err(|_| self.busy())?;
                self.granted.fetch_add(1, Ordering::Relaxed);
                Ok(Permit {
                    _memory: memory,
                    _slot: slot,
                    bytes,
                })
            }
            // The semaphores are never closed.
            Ok((Err(_), _)) | Err(_) => Err(self.busy()),
        }
    }

    /// [`Budget::acquire`] for threads outside the async runtime (the
    /// training service's decoders): waits up to `wait`, for ever when
    /// `None`.
    pub fn acquire_blocking(&self, bytes: u64, wait: Option<Duration>) -> Result<Permit> {
        let need = self.check(bytes)?;
        let deadline = wait.map(|w| Instant::now() + w);
        let mut pause = Duration::from_millis(1);
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                let memory = if need == 0 {
                    Ok(None)
                } else {
                    self.memory.clone().try_acquire_many_owned(need).map(Some)
                };
                match memory {
                    Ok(memory) => {
                        self.granted.fetch_add(1, Ordering::Relaxed);
                        return Ok(Permit {
                            _memory: memory,
                            _slot: slot,
                            bytes,
                        });
                    }
                    Err(TryAcquireError::NoPermits) => drop(slot),
                    Err(TryAcquireError::Closed) => return Err(self.busy()),
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.busy());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: u64, decodes: usize, wait_ms: u64) -> Arc<Budget> {
        Arc::new(Budget::new(&Limits {
            decode_memory_bytes: bytes,
            max_decodes: decodes,
            decode_wait_ms: wait_ms,
            ..Limits::default()
        }))
    }

    #[tokio::test]
    async fn an_image_over_the_whole_budget_is_refused_at_once() {
        let b = budget(100 << 20, 4, 60_000);
        let started = Instant::now();
        let e = b.acquire(200 << 20).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            e,
            Error::OverBudget {
                need_mib: 200,
                budget_mib: 100
            }
        );
        assert!(e.to_string().contains("limits.decode_memory_bytes"), "{e}");
        assert!(b.acquire_blocking(200 << 20, None).is_err());
    }

    #[tokio::test]
    async fn a_full_budget_refuses_as_busy_after_the_wait_and_frees_on_drop() {
        let b = budget(100 << 20, 4, 200);
        let held = b.acquire(80 << 20).await.expect("fits");
        assert_eq!(b.in_use(), 80 << 20);
        let started = Instant::now();
        let e = b.acquire(30 << 20).await.unwrap_err();
        assert!(e.is_busy(), "{e}");
        assert!(e.to_string().contains("retry"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert!(b
            .acquire_blocking(30 << 20, Some(Duration::from_millis(50)))
            .unwrap_err()
            .is_busy());
        drop(held);
        assert_eq!(b.in_use(), 0);
        assert_eq!(b.granted(), 1, "refusals are not counted");
        let _again = b.acquire(30 << 20).await.expect("room again");
    }

    #[tokio::test]
    async fn waiters_get_in_as_room_frees_and_never_exceed_the_budget() {
        let b = budget(100 << 20, 3, 30_000);
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let running = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (b, peak, running) = (b.clone(), peak.clone(), running.clone());
                tokio::spawn(async move {
                    let _p = b.acquire(40 << 20).await?;
                    use std::sync::atomic::Ordering::SeqCst;
                    let n = running.fetch_add(1, SeqCst) + 1;
                    peak.fetch_max(n, SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, SeqCst);
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("acquired in time");
        }
        // 40 MiB each in 100 MiB: two at once at most.
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn decodes_at_once_are_bounded_too() {
        let b = budget(1 << 30, 2, 100);
        let _a = b.acquire(1).await.expect("one");
        let _b = b.acquire(1).await.expect("two");
        assert!(b.acquire(1).await.unwrap_err().is_busy());
    }
}
