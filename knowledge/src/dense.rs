//! Dense retrieval: each tenant's chunk vectors held in memory as int8 codes with a scale per
//! vector (a quarter of f32's size), searched by brute force, and kept in a cache bounded by
//! bytes so many tenants cannot exhaust memory.
//!
//! The vectors come from the database (full-precision f32, the source of truth). A loaded
//! tenant is updated in place on each published change; one that is not loaded is read afresh
//! on its next search. A version per tenant keeps a slow load from installing stale data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use lru::LruCache;
use uuid::Uuid;

use crate::storage::DenseRow;

/// One tenant's vectors.
#[derive(Debug, Default)]
pub struct DenseIndex {
    dimensions: usize,
    chunk_ids: Vec<Uuid>,
    document_ids: Vec<Uuid>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    agents: HashMap<Uuid, Vec<Uuid>>,
    /// Row of each chunk, so scoring one candidate does not scan every row.
    rows: HashMap<Uuid, usize>,
}

/// Quantises a vector to int8 with one scale: `value ≈ code * scale`.
fn quantize(vector: &[f32]) -> (Vec<i8>, f32) {
    let max = vector.iter().fold(0.0_f32, |max, value| max.max(value.abs()));
    if max == 0.0 {
        return (vec![0; vector.len()], 0.0);
    }
    let scale = max / 127.0;
    (vector.iter().map(|value| (value / scale).round().clamp(-127.0, 127.0) as i8).collect(), scale)
}

fn dot_i8(left: &[i8], right: &[i8]) -> i32 {
    // Widening multiply-add in fixed-size blocks, which the compiler vectorises.
    let mut total = 0_i32;
    let mut left_blocks = left.chunks_exact(32);
    let mut right_blocks = right.chunks_exact(32);
    for (left_block, right_block) in (&mut left_blocks).zip(&mut right_blocks) {
        let mut block = 0_i32;
        for index in 0..32 {
            block += i32::from(left_block[index]) * i32::from(right_block[index]);
        }
        total += block;
    }
    for (left_value, right_value) in left_blocks.remainder().iter().zip(right_blocks.remainder()) {
        total += i32::from(*left_value) * i32::from(*right_value);
    }
    total
}

impl DenseIndex {
    pub fn new(rows: Vec<DenseRow>, agents: HashMap<Uuid, Vec<Uuid>>) -> Self {
        let mut index = DenseIndex { agents, ..DenseIndex::default() };
        index.add_rows(rows);
        index
    }

    pub fn len(&self) -> usize {
        self.chunk_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunk_ids.is_empty()
    }

    /// Memory held, for the cache's budget: every allocation's capacity, the chunk-id map's
    /// buckets (key, value and control byte) included, plus each agent list.
    pub fn bytes(&self) -> usize {
        let id = std::mem::size_of::<Uuid>();
        let row_entry = id + std::mem::size_of::<usize>() + 1;
        let agent_entry = id + std::mem::size_of::<Vec<Uuid>>() + 1;
        let agent_lists: usize = self.agents.values().map(|agents| agents.capacity() * id).sum();
        std::mem::size_of::<Self>()
            + self.codes.capacity()
            + self.scales.capacity() * std::mem::size_of::<f32>()
            + (self.chunk_ids.capacity() + self.document_ids.capacity()) * id
            + self.rows.capacity() * row_entry
            + self.agents.capacity() * agent_entry
            + agent_lists
    }

    pub fn add_rows(&mut self, rows: Vec<DenseRow>) {
        for row in rows {
            if self.dimensions == 0 {
                self.dimensions = row.embedding.len();
            }
            if row.embedding.len() != self.dimensions || self.dimensions == 0 {
                tracing::warn!(chunk_id = %row.chunk_id, "skipping a vector of unexpected dimensions");
                continue;
            }
            let (codes, scale) = quantize(&row.embedding);
            self.rows.insert(row.chunk_id, self.chunk_ids.len());
            self.chunk_ids.push(row.chunk_id);
            self.document_ids.push(row.document_id);
            self.codes.extend(codes);
            self.scales.push(scale);
        }
    }

    /// Removes every vector of a document.
    pub fn remove_document(&mut self, document_id: Uuid) {
        let dimensions = self.dimensions;
        let keep: Vec<bool> = self.document_ids.iter().map(|id| *id != document_id).collect();
        if keep.iter().all(|kept| *kept) {
            return;
        }
        let mut row = 0;
        self.chunk_ids.retain(|_| {
            row += 1;
            keep[row - 1]
        });
        let mut row = 0;
        self.document_ids.retain(|_| {
            row += 1;
            keep[row - 1]
        });
        let mut row = 0;
        self.scales.retain(|_| {
            row += 1;
            keep[row - 1]
        });
        let mut position = 0;
        self.codes.retain(|_| {
            position += 1;
            keep[(position - 1) / dimensions]
        });
        self.agents.remove(&document_id);
        self.rows = self.chunk_ids.iter().enumerate().map(|(row, chunk_id)| (*chunk_id, row)).collect();
    }

    pub fn set_agents(&mut self, document_id: Uuid, agents: Vec<Uuid>) {
        self.agents.insert(document_id, agents);
    }

    /// The `limit` chunks of the agent most similar to the (unit-length) query: (chunk id, cosine).
    pub fn search(&self, query: &[f32], agent_id: Uuid, limit: usize) -> Vec<(Uuid, f32)> {
        if query.len() != self.dimensions || self.dimensions == 0 || limit == 0 {
            return Vec::new();
        }
        let (query_codes, query_scale) = quantize(query);
        let mut allowed: HashMap<Uuid, bool> = HashMap::new();
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(limit + 1);
        for (row, codes) in self.codes.chunks_exact(self.dimensions).enumerate() {
            let document = self.document_ids[row];
            let permitted = *allowed
                .entry(document)
                .or_insert_with(|| self.agents.get(&document).is_some_and(|agents| agents.contains(&agent_id)));
            if !permitted {
                continue;
            }
            let score = dot_i8(&query_codes, codes) as f32 * query_scale * self.scales[row];
            if best.len() < limit || score > best[best.len() - 1].0 {
                let position = best.partition_point(|(existing, _)| *existing >= score);
                best.insert(position, (score, row));
                best.truncate(limit);
            }
        }
        best.into_iter().map(|(score, row)| (self.chunk_ids[row], score)).collect()
    }

    /// Cosine of the query with one chunk, if it is here.
    pub fn score(&self, query: &[f32], chunk_id: Uuid) -> Option<f32> {
        let row = *self.rows.get(&chunk_id)?;
        let (query_codes, query_scale) = quantize(query);
        let codes = &self.codes[row * self.dimensions..(row + 1) * self.dimensions];
        Some(dot_i8(&query_codes, codes) as f32 * query_scale * self.scales[row])
    }
}

#[derive(Debug, Default)]
struct State {
    loaded: Option<LruCache<Uuid, Arc<RwLock<DenseIndex>>>>,
    bytes: usize,
    versions: HashMap<Uuid, u64>,
}

/// Tenants' dense indexes, bounded by bytes.
#[derive(Debug)]
pub struct DenseCache {
    budget_bytes: usize,
    state: Mutex<State>,
}

impl DenseCache {
    pub fn new(budget_bytes: usize) -> Self {
        Self { budget_bytes, state: Mutex::new(State { loaded: Some(LruCache::unbounded()), ..State::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The loaded index of a tenant, if any.
    pub fn get(&self, tenant_id: Uuid) -> Option<Arc<RwLock<DenseIndex>>> {
        self.lock().loaded.as_mut().and_then(|loaded| loaded.get(&tenant_id).cloned())
    }

    /// The tenant's change counter, read before loading from the database.
    pub fn version(&self, tenant_id: Uuid) -> u64 {
        self.lock().versions.get(&tenant_id).copied().unwrap_or(0)
    }

    /// Installs a freshly loaded index unless a change happened since `version` was read.
    pub fn install(&self, tenant_id: Uuid, version: u64, index: DenseIndex) -> Arc<RwLock<DenseIndex>> {
        let bytes = index.bytes();
        let index = Arc::new(RwLock::new(index));
        let mut state = self.lock();
        if state.versions.get(&tenant_id).copied().unwrap_or(0) != version {
            return index;
        }
        let State { loaded, bytes: total, .. } = &mut *state;
        let Some(loaded) = loaded.as_mut() else { return index };
        if let Some(previous) = loaded.put(tenant_id, index.clone()) {
            *total = total.saturating_sub(previous.read().map(|previous| previous.bytes()).unwrap_or(0));
        }
        *total += bytes;
        while *total > self.budget_bytes && loaded.len() > 1 {
            match loaded.pop_lru() {
                Some((_, evicted)) => {
                    *total = total.saturating_sub(evicted.read().map(|evicted| evicted.bytes()).unwrap_or(0))
                }
                None => break,
            }
        }
        index
    }

    /// Applies a published change to the tenant's loaded index (if loaded) and bumps its version.
    pub fn update(&self, tenant_id: Uuid, change: impl FnOnce(&mut DenseIndex)) {
        let mut state = self.lock();
        *state.versions.entry(tenant_id).or_insert(0) += 1;
        let Some(entry) = state.loaded.as_mut().and_then(|loaded| loaded.peek(&tenant_id).cloned()) else { return };
        let before;
        let after;
        {
            let mut index = entry.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            before = index.bytes();
            change(&mut index);
            after = index.bytes();
        }
        state.bytes = state.bytes.saturating_sub(before) + after;
    }

    /// Forgets a tenant's vectors (reindex, erasure).
    pub fn forget(&self, tenant_id: Uuid) {
        let mut state = self.lock();
        *state.versions.entry(tenant_id).or_insert(0) += 1;
        if let Some(removed) = state.loaded.as_mut().and_then(|loaded| loaded.pop(&tenant_id)) {
            let bytes = removed.read().map(|removed| removed.bytes()).unwrap_or(0);
            state.bytes = state.bytes.saturating_sub(bytes);
        }
    }

    pub fn loaded_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|value| value * value).sum::<f32>().sqrt();
        values.iter().map(|value| value / norm).collect()
    }

    fn row(document_id: Uuid, values: &[f32]) -> DenseRow {
        DenseRow { chunk_id: Uuid::now_v7(), document_id, embedding: unit(values) }
    }

    #[test]
    fn quantised_cosine_ranks_and_filters_by_agent() {
        let (agent, other_agent) = (Uuid::now_v7(), Uuid::now_v7());
        let (document, other_document) = (Uuid::now_v7(), Uuid::now_v7());
        let near = row(document, &[1.0, 0.1, 0.0, 0.0]);
        let far = row(document, &[0.0, 0.0, 1.0, 0.2]);
        let foreign = row(other_document, &[1.0, 0.1, 0.0, 0.0]);
        let agents = HashMap::from([(document, vec![agent]), (other_document, vec![other_agent])]);
        let mut index = DenseIndex::new(vec![near.clone(), far.clone(), foreign.clone()], agents);
        let query = unit(&[1.0, 0.0, 0.0, 0.0]);
        let hits = index.search(&query, agent, 10);
        assert_eq!(hits.iter().map(|hit| hit.0).collect::<Vec<_>>(), vec![near.chunk_id, far.chunk_id]);
        assert!((hits[0].1 - 0.995).abs() < 0.01, "{}", hits[0].1);
        assert!(hits[1].1.abs() < 0.02);
        assert_eq!(index.search(&query, other_agent, 10)[0].0, foreign.chunk_id);
        assert!((index.score(&query, far.chunk_id).unwrap() - hits[1].1).abs() < 1e-6);

        let bytes_before = index.bytes();
        index.remove_document(document);
        assert!(index.search(&query, agent, 10).is_empty());
        assert_eq!(index.len(), 1);
        // The chunk-id map follows the rows that remain.
        assert_eq!(index.score(&query, near.chunk_id), None);
        let foreign_score = index.score(&query, foreign.chunk_id).unwrap();
        assert!((foreign_score - index.search(&query, other_agent, 1)[0].1).abs() < 1e-6);
        assert!(index.bytes() < bytes_before);
        index.set_agents(other_document, vec![agent, other_agent]);
        assert_eq!(index.search(&query, agent, 10)[0].0, foreign.chunk_id);
    }

    /// The byte count the cache budgets with covers what the index really allocates, the
    /// chunk-id map included.
    #[test]
    fn bytes_cover_the_vectors_ids_and_row_map() {
        let document = Uuid::now_v7();
        let rows: Vec<DenseRow> = (0..1_000).map(|index| row(document, &[1.0, index as f32, 0.5, 2.0])).collect();
        let index = DenseIndex::new(rows, HashMap::from([(document, vec![Uuid::now_v7()])]));
        let allocated = index.codes.capacity()
            + index.scales.capacity() * 4
            + (index.chunk_ids.capacity() + index.document_ids.capacity()) * 16
            + index.rows.capacity() * (16 + 8);
        assert!(index.bytes() >= allocated, "{} < {allocated}", index.bytes());
        assert_eq!(index.rows.len(), 1_000);
    }

    #[test]
    fn quantisation_error_is_small() {
        let values: Vec<f32> = (0..384).map(|index| ((index * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let vector = unit(&values);
        let (codes, scale) = quantize(&vector);
        let self_dot = dot_i8(&codes, &codes) as f32 * scale * scale;
        assert!((self_dot - 1.0).abs() < 0.01, "{self_dot}");
    }

    #[test]
    fn cache_respects_its_byte_budget_and_versions() {
        let cache = DenseCache::new(3_000);
        let document = Uuid::now_v7();
        for _ in 0..5 {
            let tenant = Uuid::now_v7();
            let rows = (0..4).map(|_| row(document, &[1.0; 128])).collect();
            let version = cache.version(tenant);
            cache.install(tenant, version, DenseIndex::new(rows, HashMap::new()));
        }
        assert!(cache.loaded_bytes() <= 3_000, "{}", cache.loaded_bytes());
        // A change between reading the version and installing keeps the stale load out.
        let tenant = Uuid::now_v7();
        let version = cache.version(tenant);
        cache.update(tenant, |_| {});
        cache.install(tenant, version, DenseIndex::default());
        assert!(cache.get(tenant).is_none());
    }
}
