//! [`BertEmbedder`]: a BERT sentence-transformer (e.g. all-MiniLM-L6-v2) run with candle on the
//! CPU. Loads `config.json`, `tokenizer.json`, `model.safetensors` and `1_Pooling/config.json`
//! from an installed model directory; embeds with masked mean pooling and L2 normalisation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::Embedder;
use crate::error::ModelError;

/// Texts longer than this many tokens (special tokens included) are truncated.
pub const MAX_TOKENS: usize = 256;

/// At most this many texts go through the model at once.
pub const MAX_BATCH: usize = 32;

const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const POOLING_FILE: &str = "1_Pooling/config.json";

/// A BERT sentence-embedding model and its tokenizer. Immutable once loaded, so one copy is
/// shared (`Arc<BertEmbedder>`) by every caller and thread.
pub struct BertEmbedder {
    model_id: String,
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimensions: usize,
}

// Sharing one loaded model between threads is the point; fail the build if that ever breaks.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<BertEmbedder>();
};

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BertEmbedder")
            .field("model_id", &self.model_id)
            .field("dimensions", &self.dimensions)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// `1_Pooling/config.json` as sentence-transformers writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolingConfig {
    word_embedding_dimension: Option<usize>,
    pooling_mode: Option<String>,
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

impl PoolingConfig {
    /// Checks that the model asks for plain mean pooling, the only mode implemented.
    fn require_mean(&self) -> Result<(), String> {
        if let Some(mode) = &self.pooling_mode {
            return if mode == "mean" {
                Ok(())
            } else {
                Err(format!("pooling mode `{mode}` is not supported, only `mean`"))
            };
        }
        let others = [
            ("pooling_mode_cls_token", self.pooling_mode_cls_token),
            ("pooling_mode_max_tokens", self.pooling_mode_max_tokens),
            ("pooling_mode_mean_sqrt_len_tokens", self.pooling_mode_mean_sqrt_len_tokens),
            ("pooling_mode_weightedmean_tokens", self.pooling_mode_weightedmean_tokens),
            ("pooling_mode_lasttoken", self.pooling_mode_lasttoken),
        ];
        let set: Vec<&str> = others.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect();
        if !set.is_empty() {
            return Err(format!(
                "{} is set; only mean pooling (pooling_mode_mean_tokens alone) is supported",
                set.join(", ")
            ));
        }
        if !self.pooling_mode_mean_tokens {
            return Err("pooling_mode_mean_tokens is not set; only mean pooling is supported".to_owned());
        }
        Ok(())
    }
}

impl BertEmbedder {
    /// Loads the model in `model_dir` (as [`crate::packages::installed_dir`] returns it) onto the
    /// CPU. Its id is the directory's name.
    pub fn load(model_dir: &Path) -> Result<Self, ModelError> {
        let file = |name: &str| -> Result<PathBuf, ModelError> {
            let path = model_dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ModelError::MissingModelFile { path })
            }
        };
        let config_path = file(CONFIG_FILE)?;
        let tokenizer_path = file(TOKENIZER_FILE)?;
        let weights_path = file(WEIGHTS_FILE)?;
        let pooling_path = file(POOLING_FILE)?;

        let pooling: PoolingConfig = read_json(&pooling_path)?;
        pooling.require_mean().map_err(|reason| ModelError::InvalidModel { path: pooling_path.clone(), reason })?;
        let config: Config = read_json(&config_path)?;
        if let Some(dimension) = pooling.word_embedding_dimension {
            if dimension != config.hidden_size {
                return Err(ModelError::InvalidModel {
                    path: pooling_path,
                    reason: format!(
                        "word_embedding_dimension {dimension} differs from hidden_size {} in {CONFIG_FILE}",
                        config.hidden_size
                    ),
                });
            }
        }

        let tokenizer = load_tokenizer(&tokenizer_path, &config)?;

        let device = Device::Cpu;
        let invalid_weights = |reason: String| ModelError::InvalidModel { path: weights_path.clone(), reason };
        let bytes = std::fs::read(&weights_path).map_err(|error| ModelError::io(&weights_path, error))?;
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(&bytes, &device)
            .map_err(|error| invalid_weights(error.to_string()))?;
        drop(bytes);
        let weights = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(weights, &config).map_err(|error| invalid_weights(error.to_string()))?;

        let model_id = model_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "bert".to_owned());
        tracing::info!(model = %model_id, dimensions = config.hidden_size, "embedding model loaded");
        Ok(Self { model_id, model, tokenizer, device, dimensions: config.hidden_size })
    }

    /// Embeds at most [`MAX_BATCH`] texts in one forward pass.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let inference = |reason: String| ModelError::Inference { model: self.model_id.clone(), reason };
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|error| inference(format!("tokenizing: {error}")))?;
        let rows = encodings.len();
        let columns = encodings.iter().map(|encoding| encoding.len()).max().unwrap_or(0);
        if encodings.iter().any(|encoding| encoding.len() != columns) {
            return Err(inference("the tokenizer did not pad the batch to one length".to_owned()));
        }
        let mut ids = Vec::with_capacity(rows * columns);
        let mut type_ids = Vec::with_capacity(rows * columns);
        let mut mask = Vec::with_capacity(rows * columns);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            type_ids.extend_from_slice(encoding.get_type_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        self.run(ids, type_ids, mask, (rows, columns)).map_err(|error| inference(error.to_string()))
    }

    /// The forward pass, masked mean pooling and L2 normalisation on `(rows, columns)` token ids.
    fn run(
        &self,
        ids: Vec<u32>,
        type_ids: Vec<u32>,
        mask: Vec<u32>,
        shape: (usize, usize),
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let type_ids = Tensor::from_vec(type_ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        // (rows, columns, hidden)
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        // Mean over the real tokens only: padding is masked out of the sum and the count.
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
        let counts = weights.sum(1)?.maximum(1e-9)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

impl Embedder for BertEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        // Batch texts of similar length together so little compute goes into padding; the
        // results go back in the caller's order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&index| texts[index].len());
        let mut vectors = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(MAX_BATCH) {
            let batch: Vec<&str> = chunk.iter().map(|&index| texts[index]).collect();
            for (&index, vector) in chunk.iter().zip(self.embed_batch(&batch)?) {
                vectors[index] = vector;
            }
        }
        Ok(vectors)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|error| ModelError::io(path, error))?;
    serde_json::from_str(&text)
        .map_err(|error| ModelError::InvalidModel { path: path.to_path_buf(), reason: error.to_string() })
}

/// Loads the tokenizer and sets truncation to [`MAX_TOKENS`] (or the model's position limit, if
/// lower) and padding to the longest text in each batch, whatever `tokenizer.json` says.
fn load_tokenizer(path: &Path, config: &Config) -> Result<Tokenizer, ModelError> {
    let invalid = |reason: String| ModelError::InvalidModel { path: path.to_path_buf(), reason };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|error| invalid(error.to_string()))?;
    let max_length = MAX_TOKENS.min(config.max_position_embeddings);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length, ..TruncationParams::default() }))
        .map_err(|error| invalid(format!("cannot truncate to {max_length} tokens: {error}")))?;
    let padding = match tokenizer.get_padding() {
        Some(existing) => {
            PaddingParams { strategy: PaddingStrategy::BatchLongest, pad_to_multiple_of: None, ..existing.clone() }
        }
        None => {
            let pad_token = "[PAD]".to_owned();
            let pad_id = tokenizer.token_to_id(&pad_token).unwrap_or(u32::try_from(config.pad_token_id).unwrap_or(0));
            PaddingParams { strategy: PaddingStrategy::BatchLongest, pad_id, pad_token, ..PaddingParams::default() }
        }
    };
    tokenizer.with_padding(Some(padding));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooling(json: &str) -> PoolingConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn mean_pooling_is_accepted() {
        let config = pooling(
            r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true,
                "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false}"#,
        );
        assert_eq!(config.require_mean(), Ok(()));
        assert_eq!(pooling(r#"{"pooling_mode": "mean"}"#).require_mean(), Ok(()));
    }

    #[test]
    fn other_pooling_modes_are_refused_by_name() {
        let cls = pooling(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#);
        assert!(cls.require_mean().unwrap_err().contains("pooling_mode_cls_token"));
        let both = pooling(r#"{"pooling_mode_max_tokens": true, "pooling_mode_mean_tokens": true}"#);
        assert!(both.require_mean().unwrap_err().contains("pooling_mode_max_tokens"));
        assert!(pooling("{}").require_mean().unwrap_err().contains("pooling_mode_mean_tokens"));
        assert!(pooling(r#"{"pooling_mode": "cls"}"#).require_mean().unwrap_err().contains("cls"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = BertEmbedder::load(dir.path()).unwrap_err();
        match &error {
            ModelError::MissingModelFile { path } => assert_eq!(path, &dir.path().join(CONFIG_FILE)),
            other => panic!("expected MissingModelFile, got {other:?}"),
        }
        assert!(error.to_string().contains("config.json"), "{error}");

        for name in [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        let error = BertEmbedder::load(dir.path()).unwrap_err();
        assert!(error.to_string().contains("1_Pooling/config.json"), "{error}");
    }

    #[test]
    fn a_non_mean_pooling_model_is_refused_before_loading_weights() {
        let dir = tempfile::tempdir().unwrap();
        for name in [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(dir.path().join(POOLING_FILE), r#"{"pooling_mode_cls_token": true}"#).unwrap();
        let error = BertEmbedder::load(dir.path()).unwrap_err();
        assert!(matches!(error, ModelError::InvalidModel { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("1_Pooling/config.json") && message.contains("mean pooling"), "{message}");
    }
}
