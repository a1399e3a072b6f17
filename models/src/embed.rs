//! Sentence embeddings: the [`Embedder`] trait that knowledge bases index and search with, and
//! (with the `candle` feature) [`BertEmbedder`], which runs a BERT sentence-transformer such as
//! all-MiniLM-L6-v2 in-process on the CPU.

use crate::error::ModelError;

#[cfg(feature = "candle")]
mod bert;

#[cfg(feature = "candle")]
pub use bert::BertEmbedder;

/// Turns texts into unit-length vectors (cosine similarity = dot product).
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// Names the model, e.g. `all-minilm-l6-v2`; vectors from different models never mix.
    fn model_id(&self) -> &str;

    /// The length of every vector, e.g. 384.
    fn dimensions(&self) -> usize;

    /// One unit-length vector per text, in order. An empty slice gives an empty vector; an empty
    /// string is a valid text.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// The dot product of two vectors; for [`Embedder`] outputs this is their cosine similarity.
pub fn dot(left: &[f32], right: &[f32]) -> f32 {
    left.iter().zip(right).map(|(left, right)| left * right).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_of_unit_vectors_is_cosine() {
        let x = [1.0_f32, 0.0];
        let diagonal = [std::f32::consts::FRAC_1_SQRT_2, std::f32::consts::FRAC_1_SQRT_2];
        assert!((dot(&x, &x) - 1.0).abs() < 1e-6);
        assert!((dot(&x, &diagonal) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(dot(&x, &[0.0, 1.0]), 0.0);
    }
}
