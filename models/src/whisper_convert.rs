//! Converts a CTranslate2 Whisper model (`model.bin` + `tokenizer.json`) into the ggml file
//! whisper.cpp loads, so the speech-to-text engine can run a model that only ships in
//! CTranslate2 form.
//!
//! The conversion streams: a first pass reads the variable index of `model.bin` (names, shapes,
//! data offsets), a second pass reads one variable at a time and writes its tensors. The output
//! goes to a temporary file beside the target that is renamed into place once complete, so a
//! failed or interrupted conversion never leaves a half-written model. A truncated or corrupt
//! input is an [`ModelError::InvalidModel`] naming the file, never a panic.
//!
//! The ggml layout: magic `ggml`, eleven i32 hyperparameters, the 80-band mel filterbank
//! (computed here, see [`mel_filters`]), the vocabulary as raw bytes, then each tensor as
//! `(n_dims, name length, ftype, dims reversed, name, data)` with OpenAI's checkpoint names.
//! Matrices are f16; vectors, convolution biases (as `(n, 1)`) and positional embeddings are f32.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::f16;

use crate::error::ModelError;

/// The ggml file magic (`ggml` as a little-endian u32).
pub const GGML_MAGIC: u32 = 0x6767_6d6c;

/// The sample rate Whisper's features are computed at.
pub const SAMPLE_RATE: u32 = 16_000;
/// The FFT size of Whisper's features (25 ms at 16 kHz).
pub const N_FFT: usize = 400;

/// Longest name or string the CTranslate2 reader accepts (names are short paths).
const MAX_NAME_LEN: usize = 1024;
/// Most dimensions a CTranslate2 variable may have.
const MAX_RANK: u8 = 8;

/// The hyperparameters written into a ggml Whisper file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperHparams {
    /// Rows of the token embedding (the full vocabulary including special tokens).
    pub n_vocab: u32,
    /// Audio positions (1500 for 30 s windows).
    pub n_audio_ctx: u32,
    /// Encoder width.
    pub n_audio_state: u32,
    /// Encoder attention heads.
    pub n_audio_head: u32,
    /// Encoder layers.
    pub n_audio_layer: u32,
    /// Text positions (448).
    pub n_text_ctx: u32,
    /// Decoder width.
    pub n_text_state: u32,
    /// Decoder attention heads.
    pub n_text_head: u32,
    /// Decoder layers.
    pub n_text_layer: u32,
    /// Mel bands of the input features.
    pub n_mels: u32,
    /// 1: matrices stored as f16.
    pub ftype: u32,
}

impl WhisperHparams {
    /// The values in the order the ggml header stores them.
    pub fn as_array(&self) -> [u32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }

    /// How many tensors a complete ggml Whisper file with these hyperparameters holds.
    pub fn expected_tensors(&self) -> usize {
        // Per encoder layer: attn_ln (2), query (2), key (1), value (2), out (2), mlp_ln (2),
        // mlp.0 (2), mlp.2 (2); a decoder layer adds cross_attn_ln (2), query (2), key (1),
        // value (2), out (2); globals: conv1/conv2 (4), two positional embeddings, ln_post (2),
        // token embedding, decoder ln (2).
        15 * self.n_audio_layer as usize + 24 * self.n_text_layer as usize + 11
    }
}

/// What [`convert_ct2_to_ggml`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// The model's hyperparameters.
    pub hparams: WhisperHparams,
    /// Tensors written.
    pub tensors: usize,
    /// Vocabulary entries written (regular tokens; whisper.cpp adds the special ones).
    pub vocab: usize,
    /// Size of the ggml file in bytes.
    pub bytes: u64,
}

/// Converts the CTranslate2 Whisper model in `ct2_dir` (`model.bin`, `tokenizer.json`) into a
/// ggml file at `output`, written through a temporary file renamed into place.
pub fn convert_ct2_to_ggml(ct2_dir: &Path, output: &Path) -> Result<ConvertSummary, ModelError> {
    let model_path = ct2_dir.join("model.bin");
    let tokenizer_path = ct2_dir.join("tokenizer.json");
    for path in [&model_path, &tokenizer_path] {
        if !path.is_file() {
            return Err(ModelError::MissingModelFile { path: path.clone() });
        }
    }
    let vocab = read_vocab(&tokenizer_path)?;

    let file = File::open(&model_path).map_err(|error| ModelError::io(&model_path, error))?;
    let file_len = file.metadata().map_err(|error| ModelError::io(&model_path, error))?.len();
    let mut reader = Ct2Reader { inner: BufReader::new(file), path: &model_path, len: file_len };
    let index = reader.read_index()?;
    let hparams = hparams_from_index(&index, &model_path)?;

    let parent = output.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|error| ModelError::io(parent, error))?;
    let file_name = output.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temp_path = parent.join(format!(".{file_name}.partial-{}", std::process::id()));
    let result = write_ggml(&mut reader, &index, &hparams, &vocab, &temp_path);
    match result {
        Ok(tensors) => {
            fs::rename(&temp_path, output).map_err(|error| {
                let _ = fs::remove_file(&temp_path);
                ModelError::io(output, error)
            })?;
            let bytes = fs::metadata(output).map_err(|error| ModelError::io(output, error))?.len();
            tracing::info!(output = %output.display(), tensors, bytes, "converted Whisper model to ggml");
            Ok(ConvertSummary { hparams, tensors, vocab: vocab.len(), bytes })
        }
        Err(error) => {
            let _ = fs::remove_file(&temp_path);
            Err(error)
        }
    }
}

fn write_ggml(
    reader: &mut Ct2Reader<'_>,
    index: &[Ct2Var],
    hparams: &WhisperHparams,
    vocab: &[Vec<u8>],
    temp_path: &Path,
) -> Result<usize, ModelError> {
    let io_err = |error: io::Error| ModelError::io(temp_path, error);
    let file = File::create(temp_path).map_err(io_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);

    out.write_all(&GGML_MAGIC.to_le_bytes()).map_err(io_err)?;
    for value in hparams.as_array() {
        out.write_all(&value.to_le_bytes()).map_err(io_err)?;
    }
    let n_mels = hparams.n_mels as usize;
    let filters = mel_filters(SAMPLE_RATE, N_FFT, n_mels);
    out.write_all(&(n_mels as u32).to_le_bytes()).map_err(io_err)?;
    out.write_all(&((N_FFT / 2 + 1) as u32).to_le_bytes()).map_err(io_err)?;
    for value in &filters {
        out.write_all(&value.to_le_bytes()).map_err(io_err)?;
    }
    out.write_all(&(vocab.len() as u32).to_le_bytes()).map_err(io_err)?;
    for token in vocab {
        out.write_all(&(token.len() as u32).to_le_bytes()).map_err(io_err)?;
        out.write_all(token).map_err(io_err)?;
    }

    let mut written: HashSet<String> = HashSet::new();
    for var in index {
        let Some(targets) = targets_for(&var.name) else {
            continue;
        };
        let data = reader.read_data(var)?;
        let values = decode_values(&data, var, reader.path)?;
        drop(data);
        let rows = var.dims.first().copied().unwrap_or(1) as usize;
        let chunks = targets.len();
        if !rows.is_multiple_of(chunks) {
            return Err(invalid(reader.path, format!("{}: {rows} rows cannot be split in {chunks}", var.name)));
        }
        let per_chunk = values.len() / chunks;
        for (chunk, target) in targets.into_iter().enumerate() {
            let part = &values[chunk * per_chunk..(chunk + 1) * per_chunk];
            let Some(name) = target else {
                // A fused key bias: always zero in Whisper, and whisper.cpp has no tensor for it.
                if part.iter().any(|value| *value != 0.0) {
                    return Err(invalid(reader.path, format!("{}: the key bias is not zero", var.name)));
                }
                continue;
            };
            let mut dims: Vec<u64> = var.dims.iter().map(|&dim| dim as u64).collect();
            if let Some(first) = dims.first_mut() {
                *first /= chunks as u64;
            }
            if name == "encoder.conv1.bias" || name == "encoder.conv2.bias" {
                dims.push(1);
            }
            let as_f32 = dims.len() < 2 || name.ends_with(".bias") || name.ends_with("positional_embedding");
            write_tensor(&mut out, &name, &dims, part, as_f32).map_err(io_err)?;
            written.insert(name);
        }
    }
    let expected = hparams.expected_tensors();
    if written.len() != expected {
        return Err(invalid(
            reader.path,
            format!("found {} of the {expected} tensors a Whisper model needs", written.len()),
        ));
    }
    let file = out.into_inner().map_err(|error| io_err(error.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(written.len())
}

fn write_tensor(out: &mut impl Write, name: &str, dims: &[u64], values: &[f32], as_f32: bool) -> io::Result<()> {
    out.write_all(&(dims.len() as i32).to_le_bytes())?;
    out.write_all(&(name.len() as i32).to_le_bytes())?;
    out.write_all(&(if as_f32 { 0i32 } else { 1i32 }).to_le_bytes())?;
    for dim in dims.iter().rev() {
        out.write_all(&(*dim as i32).to_le_bytes())?;
    }
    out.write_all(name.as_bytes())?;
    let mut buffer = Vec::with_capacity(values.len() * if as_f32 { 4 } else { 2 });
    for value in values {
        if as_f32 {
            buffer.extend_from_slice(&value.to_le_bytes());
        } else {
            buffer.extend_from_slice(&f16::from_f32(*value).to_le_bytes());
        }
    }
    out.write_all(&buffer)
}

/// The ggml tensors a CTranslate2 variable becomes: one name per row chunk (`None` drops a
/// zero key bias), or `None` for variables whisper.cpp does not use (flags, head counts).
fn targets_for(name: &str) -> Option<Vec<Option<String>>> {
    let one = |target: &str| Some(vec![Some(target.to_owned())]);
    match name {
        "encoder/conv1/weight" => return one("encoder.conv1.weight"),
        "encoder/conv1/bias" => return one("encoder.conv1.bias"),
        "encoder/conv2/weight" => return one("encoder.conv2.weight"),
        "encoder/conv2/bias" => return one("encoder.conv2.bias"),
        "encoder/position_encodings/encodings" => return one("encoder.positional_embedding"),
        "encoder/layer_norm/gamma" => return one("encoder.ln_post.weight"),
        "encoder/layer_norm/beta" => return one("encoder.ln_post.bias"),
        "decoder/embeddings/weight" => return one("decoder.token_embedding.weight"),
        "decoder/position_encodings/encodings" => return one("decoder.positional_embedding"),
        "decoder/layer_norm/gamma" => return one("decoder.ln.weight"),
        "decoder/layer_norm/beta" => return one("decoder.ln.bias"),
        _ => {}
    }
    let (side, rest) = name.split_once('/')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let rest = rest.strip_prefix("layer_")?;
    let (layer, rest) = rest.split_once('/')?;
    let layer: usize = layer.parse().ok()?;
    let block = format!("{side}.blocks.{layer}");
    let (module, param) = rest.rsplit_once('/')?;
    let suffix = match param {
        "gamma" | "weight" => "weight",
        "beta" | "bias" => "bias",
        _ => return None,
    };
    let single = |module: &str| Some(vec![Some(format!("{block}.{module}.{suffix}"))]);
    match module {
        "self_attention/layer_norm" => single("attn_ln"),
        "self_attention/linear_0" => Some(vec![
            Some(format!("{block}.attn.query.{suffix}")),
            (suffix == "weight").then(|| format!("{block}.attn.key.{suffix}")),
            Some(format!("{block}.attn.value.{suffix}")),
        ]),
        "self_attention/linear_1" => single("attn.out"),
        "attention/layer_norm" if side == "decoder" => single("cross_attn_ln"),
        "attention/linear_0" if side == "decoder" => single("cross_attn.query"),
        "attention/linear_1" if side == "decoder" => Some(vec![
            (suffix == "weight").then(|| format!("{block}.cross_attn.key.{suffix}")),
            Some(format!("{block}.cross_attn.value.{suffix}")),
        ]),
        "attention/linear_2" if side == "decoder" => single("cross_attn.out"),
        "ffn/layer_norm" => single("mlp_ln"),
        "ffn/linear_0" => single("mlp.0"),
        "ffn/linear_1" => single("mlp.2"),
        _ => None,
    }
}

/// One variable of a CTranslate2 `model.bin`: where its data is and how to read it.
#[derive(Debug, Clone)]
struct Ct2Var {
    name: String,
    dims: Vec<u32>,
    dtype: u8,
    offset: u64,
    len: u64,
    /// The data of scalars and other tiny variables, read during indexing.
    small: Option<Vec<u8>>,
}

impl Ct2Var {
    fn scalar_int(&self) -> Option<i64> {
        let data = self.small.as_deref()?;
        match (self.dtype, data.len()) {
            (1, 1) => Some(data[0] as i8 as i64),
            (2, 2) => Some(i16::from_le_bytes([data[0], data[1]]) as i64),
            (3, 4) => Some(i32::from_le_bytes([data[0], data[1], data[2], data[3]]) as i64),
            _ => None,
        }
    }
}

struct Ct2Reader<'a> {
    inner: BufReader<File>,
    path: &'a Path,
    len: u64,
}

impl Ct2Reader<'_> {
    fn truncated(&self, what: &str) -> ModelError {
        invalid(self.path, format!("the file ends early while reading {what} (truncated or not a CTranslate2 model)"))
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>, ModelError> {
        let mut buffer = vec![0; n];
        self.inner.read_exact(&mut buffer).map_err(|error| match error.kind() {
            io::ErrorKind::UnexpectedEof => self.truncated(what),
            _ => ModelError::io(self.path, error),
        })?;
        Ok(buffer)
    }

    fn u8(&mut self, what: &str) -> Result<u8, ModelError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, ModelError> {
        let bytes = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        let bytes = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.u16(what)? as usize;
        if len > MAX_NAME_LEN {
            return Err(invalid(self.path, format!("{what} is {len} bytes long (corrupt file)")));
        }
        let bytes = self.bytes(len, what)?;
        let trimmed = bytes.split(|byte| *byte == 0).next().unwrap_or_default();
        String::from_utf8(trimmed.to_vec())
            .map_err(|_| invalid(self.path, format!("{what} is not UTF-8 (corrupt file)")))
    }

    fn position(&mut self) -> Result<u64, ModelError> {
        self.inner.stream_position().map_err(|error| ModelError::io(self.path, error))
    }

    /// Reads the header and every variable's metadata, skipping over the data.
    fn read_index(&mut self) -> Result<Vec<Ct2Var>, ModelError> {
        let version = self.u32("the format version")?;
        if !(1..=100).contains(&version) {
            return Err(invalid(self.path, format!("format version {version} is not a CTranslate2 model version")));
        }
        let spec = self.string("the model spec name")?;
        if spec != "WhisperSpec" {
            return Err(invalid(self.path, format!("the model is a {spec:?}, not a Whisper model")));
        }
        let _revision = self.u32("the spec revision")?;
        let count = self.u32("the variable count")?;
        if count > 100_000 {
            return Err(invalid(self.path, format!("{count} variables (corrupt file)")));
        }
        let mut vars = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name = self.string("a variable name")?;
            let rank = self.u8("a variable rank")?;
            if rank > MAX_RANK {
                return Err(invalid(self.path, format!("{name}: rank {rank} (corrupt file)")));
            }
            let mut dims = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                dims.push(self.u32("a variable shape")?);
            }
            let dtype = self.u8("a variable type")?;
            let len = self.u32("a variable size")? as u64;
            let width = match dtype {
                0 | 3 => 4,
                1 => 1,
                2 | 4 | 5 => 2,
                other => return Err(invalid(self.path, format!("{name}: unknown data type {other}"))),
            };
            let elements = dims.iter().map(|&dim| dim as u64).product::<u64>();
            if elements * width != len {
                return Err(invalid(
                    self.path,
                    format!(
                        "{name}: shape {dims:?} of type {dtype} needs {} bytes, the file says {len}",
                        elements * width
                    ),
                ));
            }
            let offset = self.position()?;
            if offset + len > self.len {
                return Err(self.truncated(&format!("variable {name}")));
            }
            let small = if len <= 16 {
                Some(self.bytes(len as usize, &name)?)
            } else {
                self.inner.seek_relative(len as i64).map_err(|error| ModelError::io(self.path, error))?;
                None
            };
            vars.push(Ct2Var { name, dims, dtype, offset, len, small });
        }
        Ok(vars)
    }

    fn read_data(&mut self, var: &Ct2Var) -> Result<Vec<u8>, ModelError> {
        if let Some(small) = &var.small {
            return Ok(small.clone());
        }
        self.inner.seek(SeekFrom::Start(var.offset)).map_err(|error| ModelError::io(self.path, error))?;
        self.bytes(var.len as usize, &var.name)
    }
}

/// The values of a floating-point variable as f32.
fn decode_values(data: &[u8], var: &Ct2Var, path: &Path) -> Result<Vec<f32>, ModelError> {
    match var.dtype {
        0 => Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        4 => Ok(data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        5 => Ok(data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
        other => Err(invalid(
            path,
            format!(
                "{}: data type {other} is quantised; only float models (f32, f16, bf16) can be converted",
                var.name
            ),
        )),
    }
}

fn hparams_from_index(index: &[Ct2Var], path: &Path) -> Result<WhisperHparams, ModelError> {
    let by_name: HashMap<&str, &Ct2Var> = index.iter().map(|var| (var.name.as_str(), var)).collect();
    let dims = |name: &str, rank: usize| -> Result<Vec<u32>, ModelError> {
        let var = by_name.get(name).ok_or_else(|| invalid(path, format!("no variable {name}")))?;
        if var.dims.len() != rank {
            return Err(invalid(path, format!("{name} has shape {:?}, expected rank {rank}", var.dims)));
        }
        Ok(var.dims.clone())
    };
    let heads = |name: &str| -> Result<u32, ModelError> {
        let var = by_name.get(name).ok_or_else(|| invalid(path, format!("no variable {name}")))?;
        match var.scalar_int() {
            Some(value) if value > 0 && value < 1024 => Ok(value as u32),
            _ => Err(invalid(path, format!("{name} is not a positive integer"))),
        }
    };
    let layers = |side: &str| -> u32 {
        let prefix = format!("{side}/layer_");
        let layers: HashSet<&str> = index
            .iter()
            .filter_map(|var| var.name.strip_prefix(&prefix))
            .filter_map(|rest| rest.split_once('/').map(|(layer, _)| layer))
            .filter(|layer| layer.parse::<u32>().is_ok())
            .collect();
        layers.len() as u32
    };
    let conv1 = dims("encoder/conv1/weight", 3)?;
    let embeddings = dims("decoder/embeddings/weight", 2)?;
    let audio_positions = dims("encoder/position_encodings/encodings", 2)?;
    let text_positions = dims("decoder/position_encodings/encodings", 2)?;
    let hparams = WhisperHparams {
        n_vocab: embeddings[0],
        n_audio_ctx: audio_positions[0],
        n_audio_state: conv1[0],
        n_audio_head: heads("encoder/num_heads")?,
        n_audio_layer: layers("encoder"),
        n_text_ctx: text_positions[0],
        n_text_state: embeddings[1],
        n_text_head: heads("decoder/num_heads")?,
        n_text_layer: layers("decoder"),
        n_mels: conv1[1],
        ftype: 1,
    };
    if hparams.n_audio_layer == 0 || hparams.n_text_layer == 0 {
        return Err(invalid(path, "the model has no encoder or no decoder layers".to_owned()));
    }
    if !matches!(hparams.n_mels, 80 | 128) {
        return Err(invalid(path, format!("{} mel bands; Whisper models use 80 or 128", hparams.n_mels)));
    }
    Ok(hparams)
}

/// The vocabulary of `tokenizer.json` (byte-level BPE) as raw bytes, ordered by token id.
fn read_vocab(path: &Path) -> Result<Vec<Vec<u8>>, ModelError> {
    #[derive(serde::Deserialize)]
    struct Tokenizer {
        model: TokenizerModel,
    }
    #[derive(serde::Deserialize)]
    struct TokenizerModel {
        vocab: BTreeMap<String, u32>,
    }
    let file = File::open(path).map_err(|error| ModelError::io(path, error))?;
    let tokenizer: Tokenizer = serde_json::from_reader(BufReader::new(file))
        .map_err(|error| invalid(path, format!("not a tokenizer.json with a model vocabulary: {error}")))?;
    let mut entries: Vec<(u32, String)> = tokenizer.model.vocab.into_iter().map(|(token, id)| (id, token)).collect();
    entries.sort_unstable();
    for (position, (id, token)) in entries.iter().enumerate() {
        if *id as usize != position {
            return Err(invalid(
                path,
                format!("token ids are not contiguous: {token:?} has id {id} at position {position}"),
            ));
        }
    }
    let decoder = byte_decoder();
    entries
        .into_iter()
        .map(|(_, token)| {
            token
                .chars()
                .map(|ch| decoder.get(&ch).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| invalid(path, format!("token {token:?} is not in byte-level BPE form")))
        })
        .collect()
}

/// The inverse of byte-level BPE's byte-to-character table: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes are shifted to U+0100 upwards in byte order.
fn byte_decoder() -> HashMap<char, u8> {
    let printable = |byte: u8| matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for byte in 0..=255u8 {
        let ch = if printable(byte) {
            char::from(byte)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(ch, byte);
    }
    map
}

/// Slaney's mel scale (linear below 1 kHz, logarithmic above), as librosa computes it by default.
fn hz_to_mel(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// The mel filterbank Whisper's features use: `n_mels` triangular filters over the
/// `n_fft / 2 + 1` FFT bins from 0 Hz to Nyquist, centres evenly spaced on the Slaney mel scale,
/// each scaled to unit area (Slaney normalisation). Row-major `n_mels × (n_fft / 2 + 1)`.
pub fn mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let nyquist = sample_rate as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..bins).map(|bin| nyquist * bin as f64 / (bins - 1) as f64).collect();
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let points = n_mels + 2;
    let mel_freqs: Vec<f64> =
        (0..points).map(|i| mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (points - 1) as f64)).collect();
    let mut weights = Vec::with_capacity(n_mels * bins);
    for band in 0..n_mels {
        let (left, centre, right) = (mel_freqs[band], mel_freqs[band + 1], mel_freqs[band + 2]);
        let norm = 2.0 / (right - left);
        for &freq in &fft_freqs {
            let lower = (freq - left) / (centre - left);
            let upper = (right - freq) / (right - centre);
            let weight = lower.min(upper).max(0.0) as f32;
            weights.push((weight as f64 * norm) as f32);
        }
    }
    weights
}

fn invalid(path: &Path, reason: String) -> ModelError {
    ModelError::InvalidModel { path: PathBuf::from(path), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips_and_has_its_knee_at_1khz() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(200.0 / 3.0) - 1.0).abs() < 1e-12);
        for hz in [0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
    }

    /// Values of the 80-band filterbank Whisper's own tooling ships (`mel_80`), read from that file.
    #[test]
    fn mel_filters_match_whispers_filterbank() {
        let filters = mel_filters(SAMPLE_RATE, N_FFT, 80);
        assert_eq!(filters.len(), 80 * 201);
        let known = [
            (0, 1, 0.024_862_595_f64),
            (0, 2, 0.0),
            (1, 1, 0.001_990_821_9),
            (1, 2, 0.022_871_772),
            (10, 10, 0.019_908_218),
            (10, 11, 0.004_954_375),
            (40, 42, 0.005_411_105),
            (40, 43, 0.014_735_566),
            (40, 44, 0.006_518_19),
            (79, 186, 0.000_366_741_7),
            (79, 188, 0.001_299_398_4),
            (79, 200, 0.0),
        ];
        for (band, bin, expected) in known {
            let actual = filters[band * 201 + bin] as f64;
            assert!(
                (actual - expected).abs() <= 1e-7 + expected * 1e-5,
                "band {band} bin {bin}: {actual} != {expected}"
            );
        }
        let total: f64 = filters.iter().map(|&value| value as f64).sum();
        assert!((total - 1.999_024_092).abs() < 1e-5, "{total}");
    }

    #[test]
    fn ctranslate2_names_map_to_whisper_cpp_tensors() {
        let names = |name: &str| targets_for(name).map(|targets| targets.into_iter().collect::<Vec<_>>());
        let some = |name: &str| Some(name.to_owned());
        assert_eq!(
            names("encoder/layer_2/self_attention/linear_0/bias"),
            Some(vec![some("encoder.blocks.2.attn.query.bias"), None, some("encoder.blocks.2.attn.value.bias")])
        );
        assert_eq!(
            names("decoder/layer_0/attention/linear_1/weight"),
            Some(vec![
                some("decoder.blocks.0.cross_attn.key.weight"),
                some("decoder.blocks.0.cross_attn.value.weight")
            ])
        );
        assert_eq!(names("decoder/layer_1/ffn/layer_norm/gamma"), Some(vec![some("decoder.blocks.1.mlp_ln.weight")]));
        assert_eq!(names("encoder/layer_norm/beta"), Some(vec![some("encoder.ln_post.bias")]));
        assert_eq!(names("encoder/layer_0/attention/linear_0/weight"), None, "the encoder has no cross-attention");
        assert_eq!(names("decoder/num_heads"), None);
        assert_eq!(names("decoder/scale_embeddings"), None);
    }

    /// A CTranslate2 Whisper model with the given shape and every variable a real one has, its
    /// values small and its key biases zero, written as `model.bin` into `dir`.
    fn write_ct2_model(dir: &Path, n_vocab: u32, n_state: u32, heads: i32, encoder_layers: u32, decoder_layers: u32) {
        fn string(out: &mut Vec<u8>, text: &str) {
            out.extend_from_slice(&(text.len() as u16 + 1).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
            out.push(0);
        }
        let mut vars: Vec<(String, Vec<u32>)> = Vec::new();
        let mut add = |name: String, dims: &[u32]| vars.push((name, dims.to_vec()));
        let s = n_state;
        add("encoder/conv1/weight".into(), &[s, 80, 3]);
        add("encoder/conv1/bias".into(), &[s]);
        add("encoder/conv2/weight".into(), &[s, s, 3]);
        add("encoder/conv2/bias".into(), &[s]);
        add("encoder/position_encodings/encodings".into(), &[1500, s]);
        add("encoder/layer_norm/gamma".into(), &[s]);
        add("encoder/layer_norm/beta".into(), &[s]);
        add("decoder/embeddings/weight".into(), &[n_vocab, s]);
        add("decoder/position_encodings/encodings".into(), &[448, s]);
        add("decoder/layer_norm/gamma".into(), &[s]);
        add("decoder/layer_norm/beta".into(), &[s]);
        for (side, layers) in [("encoder", encoder_layers), ("decoder", decoder_layers)] {
            for layer in 0..layers {
                let mut linear = |module: &str, rows: u32, columns: u32| {
                    add(format!("{side}/layer_{layer}/{module}/weight"), &[rows, columns]);
                    add(format!("{side}/layer_{layer}/{module}/bias"), &[rows]);
                };
                linear("self_attention/linear_0", 3 * s, s);
                linear("self_attention/linear_1", s, s);
                linear("ffn/linear_0", 4 * s, s);
                linear("ffn/linear_1", s, 4 * s);
                if side == "decoder" {
                    linear("attention/linear_0", s, s);
                    linear("attention/linear_1", 2 * s, s);
                    linear("attention/linear_2", s, s);
                }
                let mut modules = vec!["self_attention/layer_norm", "ffn/layer_norm"];
                if side == "decoder" {
                    modules.push("attention/layer_norm");
                }
                for module in modules {
                    add(format!("{side}/layer_{layer}/{module}/gamma"), &[s]);
                    add(format!("{side}/layer_{layer}/{module}/beta"), &[s]);
                }
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(vars.len() as u32 + 2).to_le_bytes());
        for side in ["encoder", "decoder"] {
            string(&mut out, &format!("{side}/num_heads"));
            out.push(0);
            out.push(3);
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&heads.to_le_bytes());
        }
        for (name, dims) in &vars {
            string(&mut out, name);
            out.push(dims.len() as u8);
            for dim in dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.push(4);
            let elements: u32 = dims.iter().product();
            out.extend_from_slice(&(elements * 2).to_le_bytes());
            // Biases are zero (the fused key bias must be); everything else a small constant.
            let value = if name.ends_with("/bias") { 0.0 } else { 0.25 };
            for _ in 0..elements {
                out.extend_from_slice(&f16::from_f32(value).to_le_bytes());
            }
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        fs::write(dir.join("model.bin"), out).unwrap();
    }

    /// A byte-level BPE `tokenizer.json` with `tokens` as ids 0, 1, …
    fn write_tokenizer(dir: &Path, tokens: &[&str]) {
        let vocab: serde_json::Map<String, serde_json::Value> =
            tokens.iter().enumerate().map(|(id, token)| ((*token).to_owned(), serde_json::json!(id))).collect();
        let tokenizer = serde_json::json!({ "model": { "type": "BPE", "vocab": vocab } });
        fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    }

    fn i32_at(bytes: &[u8], at: &mut usize) -> i32 {
        let value = i32::from_le_bytes(bytes[*at..*at + 4].try_into().unwrap());
        *at += 4;
        value
    }

    /// The header, vocabulary and tensor count of a ggml file, checking that the tensors fill it.
    fn read_ggml(bytes: &[u8]) -> (Vec<i32>, Vec<Vec<u8>>, usize) {
        let mut at = 0;
        assert_eq!(i32_at(bytes, &mut at) as u32, GGML_MAGIC);
        let hparams: Vec<i32> = (0..11).map(|_| i32_at(bytes, &mut at)).collect();
        let (mels, bins) = (i32_at(bytes, &mut at) as usize, i32_at(bytes, &mut at) as usize);
        at += mels * bins * 4;
        let count = i32_at(bytes, &mut at);
        let vocab = (0..count)
            .map(|_| {
                let len = i32_at(bytes, &mut at) as usize;
                at += len;
                bytes[at - len..at].to_vec()
            })
            .collect();
        let mut tensors = 0;
        while at < bytes.len() {
            let dims = i32_at(bytes, &mut at) as usize;
            let name_len = i32_at(bytes, &mut at) as usize;
            let ftype = i32_at(bytes, &mut at);
            let elements: usize = (0..dims).map(|_| i32_at(bytes, &mut at) as usize).product();
            at += name_len + elements * if ftype == 0 { 4 } else { 2 };
            tensors += 1;
        }
        assert_eq!(at, bytes.len(), "the tensors fill the file exactly");
        (hparams, vocab, tensors)
    }

    #[test]
    fn hparams_and_vocabulary_come_from_the_model_for_english_and_multilingual_shapes() {
        // tiny.en's and base's vocabulary sizes; base's vocabulary holds an empty token (id 50256)
        // and `<|endoftext|>` as a regular entry.
        let cases = [(51_864, 8, 2, 1, 2), (51_865, 16, 4, 2, 3)];
        for (n_vocab, n_state, heads, encoder_layers, decoder_layers) in cases {
            let dir = tempfile::tempdir().unwrap();
            write_ct2_model(dir.path(), n_vocab, n_state, heads, encoder_layers, decoder_layers);
            write_tokenizer(dir.path(), &["!", "\u{120}the", "\u{c3}\u{a9}t\u{c3}\u{a9}", "", "<|endoftext|>"]);
            let output = dir.path().join("ggml.bin");
            let summary = convert_ct2_to_ggml(dir.path(), &output).unwrap();
            let n_state = n_state as i32;
            let expected = [
                n_vocab as i32,
                1500,
                n_state,
                heads,
                encoder_layers as i32,
                448,
                n_state,
                heads,
                decoder_layers as i32,
                80,
                1,
            ];
            assert_eq!(summary.hparams.as_array().map(|value| value as i32), expected);
            assert_eq!(summary.vocab, 5);
            assert_eq!(summary.tensors, summary.hparams.expected_tensors());
            let (hparams, vocab, tensors) = read_ggml(&fs::read(&output).unwrap());
            assert_eq!(hparams, expected);
            let expected_vocab: [&[u8]; 5] = [b"!", b" the", "été".as_bytes(), b"", b"<|endoftext|>"];
            assert_eq!(vocab, expected_vocab);
            assert_eq!(tensors, 15 * encoder_layers as usize + 24 * decoder_layers as usize + 11);
        }
    }

    #[test]
    fn a_gapped_vocabulary_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        write_ct2_model(dir.path(), 51_865, 8, 2, 1, 1);
        let tokenizer = serde_json::json!({ "model": { "vocab": { "!": 0, "\"": 2 } } });
        fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let error = convert_ct2_to_ggml(dir.path(), &dir.path().join("ggml.bin")).unwrap_err();
        assert!(error.to_string().contains("not contiguous"), "{error}");
        assert!(!dir.path().join("ggml.bin").exists());
    }

    #[test]
    fn byte_decoder_covers_every_byte_once() {
        let decoder = byte_decoder();
        assert_eq!(decoder.len(), 256);
        let bytes: HashSet<u8> = decoder.values().copied().collect();
        assert_eq!(bytes.len(), 256);
        assert_eq!(decoder[&'A'], b'A');
        // The space byte is the 33rd non-printable byte: U+0120 'Ġ'.
        assert_eq!(decoder[&'\u{120}'], b' ');
        assert_eq!(decoder[&'\u{100}'], 0);
    }
}
