//! Prompt starts already run through the model, kept with the model's state after them (the
//! KV cache holds their keys and values), so a prompt that begins the same way (Parley's rules
//! and an agent's persona open every prompt of that agent) skips computing them again.
//!
//! Which starts are worth keeping is learnt from the prompts themselves: the longest common
//! start of a prompt and the one before it, cut down to a chunk boundary, is kept once it is at
//! least one chunk long. No knowledge of the prompt's layout is needed.
//!
//! Every prompt is fed in the same chunks, whether it resumes from a kept start or not: 64
//! tokens at a time up to 256, then 256 at a time ([`chunk_end`]); starts are kept only at
//! those boundaries. This matters: candle's quantised matrix products take another kernel (and
//! quantise the activations in other blocks) depending on how many rows a pass has, so the same
//! prompt cut differently gives logits up to about 1 apart. Cut the same way, a resumed prompt
//! runs exactly the passes it would have run from scratch and its answer is the same bit for
//! bit. The small chunks at the start cost a little (three more passes) and let a common start
//! of a few hundred tokens, Parley's rules and a persona, be kept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use candle_transformers::models::quantized_llama::ModelWeights;

/// Prompt tokens per forward pass from [`FINE_UNTIL`] on (bounds the attention matrix's memory).
const PREFILL_CHUNK: usize = 256;
/// Prompt tokens per forward pass before [`FINE_UNTIL`], where common starts end.
const FINE_CHUNK: usize = 64;
const FINE_UNTIL: usize = 256;

/// Where the forward pass that starts at `position` of a prompt of `len` tokens ends.
pub(super) fn chunk_end(position: usize, len: usize) -> usize {
    let step = if position < FINE_UNTIL { FINE_CHUNK } else { PREFILL_CHUNK };
    ((position / step + 1) * step).min(len)
}

/// The last chunk boundary at or before `tokens`.
fn boundary_before(tokens: usize) -> usize {
    let step = if tokens < FINE_UNTIL { FINE_CHUNK } else { PREFILL_CHUNK };
    tokens / step * step
}

/// Tokens of kept starts held at most, over all of them: about 47 MB for SmolLM2-135M, whose
/// keys and values take 46 KB a token (30 layers × 2 × 192 floats).
const MAX_KEPT_TOKENS: usize = 1_024;

/// Kept starts, most recently used last, and the previous prompt.
pub(super) struct PrefixCache {
    enabled: bool,
    state: Mutex<State>,
    reused_tokens: AtomicU64,
}

#[derive(Default)]
struct State {
    kept: VecDeque<Kept>,
    previous: Vec<u32>,
}

struct Kept {
    tokens: Vec<u32>,
    /// The model after `tokens`: its KV cache holds them.
    model: ModelWeights,
}

/// Where a prompt starts computing, and where its state is worth keeping.
pub(super) struct Start {
    /// The model to continue with: a kept state, or a clone of the empty model.
    pub model: ModelWeights,
    /// Prompt tokens already in `model`'s KV cache.
    pub position: usize,
    /// Keep the model's state once the prompt has been fed this far.
    pub keep_at: Option<usize>,
}

impl PrefixCache {
    /// A cache; a disabled one keeps nothing and always starts from the beginning.
    pub(super) fn new(enabled: bool) -> Self {
        Self { enabled, state: Mutex::new(State::default()), reused_tokens: AtomicU64::new(0) }
    }

    /// The longest kept start of `prompt` (shorter than the prompt: the last token must be fed
    /// to get the next token's logits), else `empty` from the beginning.
    pub(super) fn start(&self, prompt: &[u32], empty: &ModelWeights) -> Start {
        if !self.enabled {
            return Start { model: empty.clone(), position: 0, keep_at: None };
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let best = state
            .kept
            .iter()
            .enumerate()
            .filter(|(_, kept)| kept.tokens.len() < prompt.len() && prompt.starts_with(&kept.tokens))
            .max_by_key(|(_, kept)| kept.tokens.len())
            .map(|(index, _)| index);
        let (model, position) = match best.and_then(|index| state.kept.remove(index)) {
            Some(kept) => {
                let found = (kept.model.clone(), kept.tokens.len());
                state.kept.push_back(kept);
                found
            }
            None => (empty.clone(), 0),
        };
        let common = prompt.iter().zip(&state.previous).take_while(|(a, b)| a == b).count();
        let boundary = boundary_before(common.min(MAX_KEPT_TOKENS));
        let keep_at = (boundary > position && boundary <= prompt.len()).then_some(boundary);
        state.previous.clear();
        state.previous.extend_from_slice(prompt);
        self.reused_tokens.fetch_add(position as u64, Ordering::Relaxed);
        Start { model, position, keep_at }
    }

    /// Keeps `model`, the state after `tokens`, dropping the least recently used starts beyond
    /// [`MAX_KEPT_TOKENS`].
    pub(super) fn keep(&self, tokens: &[u32], model: ModelWeights) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.kept.iter().any(|kept| kept.tokens == tokens) {
            return;
        }
        state.kept.push_back(Kept { tokens: tokens.to_vec(), model });
        while state.kept.iter().map(|kept| kept.tokens.len()).sum::<usize>() > MAX_KEPT_TOKENS {
            state.kept.pop_front();
        }
    }

    /// Prompt tokens taken from kept starts instead of being computed, since load.
    pub(super) fn reused_tokens(&self) -> u64 {
        self.reused_tokens.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_fine_at_the_start_then_coarse() {
        let mut cuts = Vec::new();
        let mut position = 0;
        while position < 700 {
            position = chunk_end(position, 700);
            cuts.push(position);
        }
        assert_eq!(cuts, [64, 128, 192, 256, 512, 700]);
        assert_eq!(chunk_end(0, 10), 10);
        // Every boundary a start is kept at is one the chunks stop at.
        for tokens in [0, 63, 64, 200, 255, 256, 300, 511, 512, 2_048] {
            let boundary = boundary_before(tokens);
            assert!(boundary <= tokens);
            assert!(boundary == 0 || cuts.contains(&boundary) || boundary.is_multiple_of(PREFILL_CHUNK), "{tokens}");
        }
        assert_eq!((boundary_before(230), boundary_before(300)), (192, 256));
    }
}
