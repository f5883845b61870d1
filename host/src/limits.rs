//! The memory limit of a plugin instance (`limits.memory`), kept by its store.

use wasmtime::ResourceLimiter;

/// A plugin's memory limit (`limits.memory`), for the whole stage: the sum of every
/// linear memory and table of its store (a component has several core instances, and a
/// module may declare several memories), not each memory alone. Growing past it traps
/// with [`MemoryLimitExceeded`] rather than failing the allocation: a guest would abort on
/// a failed allocation anyway, and the trap lets the message name the limit.
pub struct MemoryLimiter {
    max: usize,
    /// Bytes of every memory and table of the store so far. Memories and tables are freed
    /// only with the store, so the sum only grows.
    used: usize,
}

/// What a table element is counted as (a reference; wasmtime stores one per word).
const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimiter {
    pub fn new(max: usize) -> MemoryLimiter {
        MemoryLimiter { max, used: 0 }
    }

    /// Bytes of memories and tables the store holds now.
    pub fn used(&self) -> usize {
        self.used
    }

    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        let total = self.used.saturating_add(more);
        if total > self.max {
            return Err(MemoryLimitExceeded {
                desired: total,
                max: self.max,
            }
            .into());
        }
        self.used = total;
        Ok(true)
    }
}

/// The trap of a plugin that tried to grow its memories and tables beyond its stage's limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: growing to {desired} bytes in all, limit {max} bytes")]
pub struct MemoryLimitExceeded {
    /// What the stage's memories and tables would have held together.
    pub desired: usize,
    pub max: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::{MemoryLimitExceeded, MemoryLimiter};

    /// A core module with two memories of one page each and a table of one element,
    /// exported as `a`, `b` and `t` (hand-encoded: the engine is built without `wat`).
    const TWO_MEMORIES: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x04, 0x04, 0x01, 0x70, 0x00, 0x01, // table section: funcref, min 1
        0x05, 0x05, 0x02, 0x00, 0x01, 0x00, 0x01, // memory section: two, min 1 page
        0x07, 0x0d, 0x03, // export section, three exports
        0x01, b'a', 0x02, 0x00, // "a": memory 0
        0x01, b'b', 0x02, 0x01, // "b": memory 1
        0x01, b't', 0x01, 0x00, // "t": table 0
    ];

    const PAGE: usize = 64 << 10;

    #[test]
    fn the_memory_limit_holds_for_all_memories_and_tables_together() {
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, TWO_MEMORIES).unwrap();
        // 4 MiB for the whole store.
        let mut store = wasmtime::Store::new(&engine, MemoryLimiter::new(64 * PAGE));
        store.limiter(|l| l);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let a = instance.get_memory(&mut store, "a").unwrap();
        let b = instance.get_memory(&mut store, "b").unwrap();
        // Two pages and one table element at the start.
        assert_eq!(store.data().used(), 2 * PAGE + 8);
        // 40 + 1 pages in `a`: under the limit.
        a.grow(&mut store, 40).unwrap();
        // `b` alone would stay under the limit (1 + 30 pages), the two together do not.
        let err = b.grow(&mut store, 30).unwrap_err();
        let hit = err
            .chain()
            .find_map(|e| e.downcast_ref::<MemoryLimitExceeded>())
            .unwrap_or_else(|| panic!("not the limit: {err:#}"));
        assert_eq!(hit.max, 64 * PAGE);
        assert!(hit.desired > 64 * PAGE, "{}", hit.desired);
        assert_eq!(b.size(&store), 1, "the refused growth did not happen");
        // What is left still can be used.
        b.grow(&mut store, 20).unwrap();
        // Tables count too: a million elements is 8 MiB.
        let t = instance.get_table(&mut store, "t").unwrap();
        let err = t
            .grow(&mut store, 1 << 20, wasmtime::Ref::Func(None))
            .unwrap_err();
        assert!(
            err.chain()
                .any(|e| e.downcast_ref::<MemoryLimitExceeded>().is_some()),
            "{err:#}"
        );
    }
}
