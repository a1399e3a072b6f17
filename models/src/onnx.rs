//! The ONNX runtime shared by every ONNX engine (voice activity detection, speech synthesis).
//!
//! The runtime is the `libonnxruntime` shared library from the [`ONNX_RUNTIME_PACKAGE`] in the
//! model cache, loaded once per process by [`environment`] (nothing is downloaded at build or run
//! time, and no environment variable has to be set). [`load_session`] opens a model file in that
//! environment; [`expect_tensor`] checks a model's declared inputs and outputs at load so that a
//! different model file fails with a message naming what differs instead of at the first frame.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{Outlet, TensorElementType};

use crate::error::ModelError;
use crate::packages::{installed_dir, ONNX_RUNTIME_PACKAGE};

/// The library's file name inside the installed package directory.
pub const ONNX_RUNTIME_LIBRARY: &str = "libonnxruntime.so.1.32.0";

/// The process's ONNX runtime environment and the library it was loaded from.
static ENVIRONMENT: Mutex<Option<(Environment, PathBuf)>> = Mutex::new(None);

/// The ONNX runtime environment, loading the library from the model cache under `models_dir` on
/// first use. Later calls return the same environment (the library can be loaded only once per
/// process); a failed load is retried on the next call.
pub fn environment(models_dir: &Path) -> Result<Environment, ModelError> {
    let library = installed_dir(models_dir, &ONNX_RUNTIME_PACKAGE)?.join(ONNX_RUNTIME_LIBRARY);
    environment_from(&library)
}

/// The ONNX runtime environment, loading the library at `library` on first use.
pub fn environment_from(library: &Path) -> Result<Environment, ModelError> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((environment, loaded)) = slot.as_ref() {
        if loaded != library {
            tracing::debug!(loaded = %loaded.display(), asked = %library.display(), "the ONNX runtime is already loaded");
        }
        return Ok(environment.clone());
    }
    if !library.is_file() {
        return Err(ModelError::MissingModelFile { path: library.to_path_buf() });
    }
    let invalid = |reason: String| ModelError::InvalidModel { path: library.to_path_buf(), reason };
    let environment = ort::init_from(library)
        .map_err(|error| invalid(format!("cannot load the ONNX runtime: {error}")))?
        .with_name("parley")
        .build()
        .map_err(|error| invalid(format!("cannot start the ONNX runtime: {error}")))?;
    tracing::info!(library = %library.display(), "ONNX runtime loaded");
    *slot = Some((environment.clone(), library.to_path_buf()));
    Ok(environment)
}

/// Opens the ONNX model at `path` in `environment`, running on `threads` threads.
pub fn load_session(environment: &Environment, path: &Path, threads: usize) -> Result<Session, ModelError> {
    if !path.is_file() {
        return Err(ModelError::MissingModelFile { path: path.to_path_buf() });
    }
    let invalid = |reason: String| ModelError::InvalidModel { path: path.to_path_buf(), reason };
    Session::builder(environment)
        .map_err(|error| invalid(error.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|error| invalid(error.to_string()))?
        .with_inter_threads(1)
        .map_err(|error| invalid(error.to_string()))?
        .commit_from_file(path)
        .map_err(|error| invalid(format!("not a loadable ONNX model: {error}")))
}

/// Checks that `outlets` (a session's inputs or outputs) has a tensor called `name` of element
/// type `ty` and rank `rank`; the error names the model, the outlet and what was found.
pub fn expect_tensor(
    path: &Path,
    kind: &str,
    outlets: &[Outlet],
    name: &str,
    ty: TensorElementType,
    rank: usize,
) -> Result<(), ModelError> {
    let invalid = |reason: String| ModelError::InvalidModel { path: path.to_path_buf(), reason };
    let names = || outlets.iter().map(|outlet| outlet.name().to_owned()).collect::<Vec<_>>().join(", ");
    let outlet = outlets
        .iter()
        .find(|outlet| outlet.name() == name)
        .ok_or_else(|| invalid(format!("the model has no {kind} `{name}` (it has: {})", names())))?;
    let dtype = outlet.dtype();
    match (dtype.tensor_type(), dtype.tensor_shape()) {
        (Some(found), Some(shape)) if found == ty && shape.len() == rank => Ok(()),
        _ => Err(invalid(format!("{kind} `{name}` is {dtype}, expected a rank-{rank} {ty} tensor"))),
    }
}
