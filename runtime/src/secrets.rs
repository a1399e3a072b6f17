//! Secrets at rest and signed tokens, all from one 32-byte master key.
//!
//! Owns: loading the master key (inline from `secrets.key`, or from a key file, generating the
//! default `<data_dir>/secrets.key` on first start), sealing and opening secrets stored in the
//! database (tenant provider API keys, agent identity secrets, recorded call audio) and TURN
//! credentials in the settings with AES-256-GCM, signing and
//! verifying tokens (chat resume tokens) with HMAC-SHA256, and random tokens.
//!
//! Must not touch: storage (callers store the sealed strings), HTTP, or logs of anything
//! secret. Neither the master key nor a derived key ever appears in `Debug` output, error
//! messages or logs; a key is identified by its key id only.
//!
//! # Keys
//!
//! The master key is never used directly. Each use gets its own subkey, derived with
//! HMAC-SHA256 as a key-derivation function (a PRF keyed by the master key over a fixed label):
//!
//! - encryption key = HMAC-SHA256(master, `"parley/v1/encrypt"`)
//! - signing key for a purpose = HMAC-SHA256(master, `"parley/v1/sign/" + purpose`)
//!
//! so a signature made for one purpose never verifies for another, and the signing keys are
//! independent of the encryption key (and of each other). The key id is the first 8 bytes of SHA-256(`"parley key id"` ||
//! master), in lowercase hex (16 characters): it tells keys apart without revealing them.
//!
//! # Sealed format
//!
//! `v1.<key id>.<base64url without padding of (nonce (12 bytes) || ciphertext || tag (16 bytes))>`
//!
//! AES-256-GCM with a random 96-bit nonce per seal, and associated data `purpose` + NUL +
//! `context`: a secret sealed as tenant A's provider key cannot be opened as tenant B's, nor
//! under another purpose. Purposes are fixed names chosen in code (`"provider_api_key"`) and must
//! not contain NUL; contexts name the owner (a tenant or agent id) and may hold any text.
//!
//! Large values (recorded call audio, `seal_bytes`) use the same scheme without base64: the
//! ASCII bytes `v1.<key id>.` followed by the raw nonce, ciphertext and tag. TURN credentials in
//! the settings are sealed strings of purpose `turn_credential`, opened at start-up
//! (`open_turn_credentials`).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Length of the master key, in bytes.
pub const KEY_LEN: usize = 32;

/// Length of an HMAC-SHA256 tag, in bytes.
pub const TAG_LEN: usize = 32;

/// The version prefix of sealed strings this build writes and reads.
const SEALED_VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const KEY_ID_BYTES: usize = 8;
const KEY_ID_LABEL: &[u8] = b"parley key id";
const ENCRYPT_LABEL: &[u8] = b"parley/v1/encrypt";
const SIGN_LABEL_PREFIX: &[u8] = b"parley/v1/sign/";
/// The file name of the generated key in the data directory (see `Settings::secrets_key_file`).
const DEFAULT_KEY_FILE_NAME: &str = "secrets.key";
/// TURN credentials in the settings are sealed for this purpose, node-wide.
const TURN_CREDENTIAL_PURPOSE: &str = "turn_credential";
const TURN_CREDENTIAL_CONTEXT: &str = "webrtc.turn_servers";
/// Suggested in error messages as a way to make a key.
const KEY_RECIPE: &str = "32 random bytes in base64 (for example the output of `openssl rand -base64 32`)";

/// The node's keyring: the current master key, which seals and signs, and the previous keys a
/// rotation left behind, which still open what they sealed and verify what they signed until
/// everything is sealed again under the current key (`parley keys rotate`). Cheap enough to
/// clone into state.
#[derive(Clone)]
pub struct Secrets {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

/// One master key with its derived encryption cipher and its key id.
#[derive(Clone)]
struct MasterKey {
    master_key: [u8; KEY_LEN],
    cipher: Aes256Gcm,
    key_id: String,
}

impl MasterKey {
    fn new(key: [u8; KEY_LEN]) -> MasterKey {
        let encryption_key = derive_subkey(&key, &[ENCRYPT_LABEL]);
        let cipher = Aes256Gcm::new(&encryption_key.into());
        let key_id_digest = Sha256::new().chain_update(KEY_ID_LABEL).chain_update(key).finalize();
        let key_id = hex::encode(&key_id_digest[..KEY_ID_BYTES]);
        MasterKey { master_key: key, cipher, key_id }
    }

    fn signer(&self, purpose: &str) -> HmacSha256 {
        let signing_key = derive_subkey(&self.master_key, &[SIGN_LABEL_PREFIX, purpose.as_bytes()]);
        hmac_with_key(&signing_key)
    }
}

/// Why the key could not be loaded, or a sealed secret could not be opened. Messages name the
/// setting or file concerned and what to do; they never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "setting `secrets.key` (environment variable PARLEY_SECRETS__KEY) is not a valid secrets key: {reason}; \
         set it to {KEY_RECIPE}"
    )]
    InvalidInlineKey { reason: &'static str },
    #[error(
        "setting `secrets.previous_keys` entry {position} is not a valid secrets key: {reason}; each entry is \
         a key this node used before, {KEY_RECIPE}"
    )]
    InvalidPreviousKey { position: usize, reason: &'static str },
    #[error(
        "secrets key file {} is not a valid secrets key: {reason}; it must hold {KEY_RECIPE}. If secrets were \
         already sealed with this node's key, restore the original file from a backup rather than replacing it",
        .path.display()
    )]
    InvalidKeyFile { path: PathBuf, reason: &'static str },
    #[error(
        "secrets key file {} (setting `secrets.key_file`) does not exist; Parley generates a key only at the \
         default location in the data directory. Create the file holding {KEY_RECIPE} with mode 0600, point \
         `secrets.key_file` at the right file, or unset it",
        .path.display()
    )]
    MissingKeyFile { path: PathBuf },
    #[error("cannot {action} {}: {source}; check the path and its permissions", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "this secret was sealed under key {sealed_with}, but the running key is {running}; start Parley with the \
         key it was sealed under (settings `secrets.key` / `secrets.key_file`)"
    )]
    WrongKey { sealed_with: String, running: String },
    #[error(
        "the secrets key is set inline (setting `secrets.key`, environment variable PARLEY_SECRETS__KEY), where \
         Parley cannot store a new key: set the new key as `secrets.key`, the old one in `secrets.previous_keys`, \
         restart, then run `parley keys rotate --reseal-only`"
    )]
    InlineKey,
    #[error(
        "setting `webrtc.turn_servers` entry {position} (`credential`) is sealed but cannot be opened with this \
         node's secrets key: {source}. Seal the TURN credential again with `parley secrets seal-turn-credential` \
         on this node, or start with the key it was sealed under (as a previous key after a rotation)"
    )]
    TurnCredential {
        position: usize,
        #[source]
        source: Box<SecretsError>,
    },
    #[error("sealed secret is malformed: {reason}")]
    Malformed { reason: &'static str },
    #[error("sealed secret does not decrypt: it was altered, or it was sealed for another purpose or context")]
    Corrupt,
}

impl Secrets {
    /// Loads the master key the settings name: `secrets.key` inline if set, else the key file
    /// in effect (`Settings::secrets_key_file`). The default key file `<data_dir>/secrets.key`
    /// is created with a fresh random key (mode 0600 on Unix) when it does not exist yet; an
    /// explicitly configured `secrets.key_file` that does not exist is an error, so a typo in
    /// the path can never silently start the node with a new key.
    ///
    /// # Errors
    ///
    /// An invalid inline key or key file, a missing explicit key file, or a key file that
    /// cannot be read or created; each message names the setting or file and what to do.
    pub fn load(settings: &parley_config::Settings) -> Result<Secrets, SecretsError> {
        let mut previous = Vec::with_capacity(settings.secrets.previous_keys.len());
        for (index, text) in settings.secrets.previous_keys.iter().enumerate() {
            let key =
                decode_key(text).map_err(|reason| SecretsError::InvalidPreviousKey { position: index + 1, reason })?;
            previous.push(key);
        }
        if let Some(inline_key) = &settings.secrets.key {
            let key = decode_key(inline_key).map_err(|reason| SecretsError::InvalidInlineKey { reason })?;
            return Ok(Secrets::from_key(key).with_previous(previous));
        }
        let path = settings.secrets_key_file();
        if let Some(keys) = read_key_file(&path)? {
            let mut keys = keys.into_iter();
            let current = keys.next().ok_or(SecretsError::InvalidKeyFile { path, reason: "it holds no key" })?;
            return Ok(Secrets::from_key(current).with_previous(keys.chain(previous)));
        }
        if settings.secrets.key_file.is_some() {
            return Err(SecretsError::MissingKeyFile { path });
        }
        let key = create_key_file(&path)?;
        Ok(Secrets::from_key(key).with_previous(previous))
    }

    /// Uses `key` as the master key.
    #[must_use]
    pub fn from_key(key: [u8; KEY_LEN]) -> Secrets {
        Secrets { current: MasterKey::new(key), previous: Vec::new() }
    }

    /// Adds previous keys, which open and verify but never seal or sign; the current key and
    /// repeated keys are skipped.
    #[must_use]
    pub fn with_previous(mut self, keys: impl IntoIterator<Item = [u8; KEY_LEN]>) -> Secrets {
        for key in keys {
            let key = MasterKey::new(key);
            if key.key_id != self.current.key_id && self.previous.iter().all(|known| known.key_id != key.key_id) {
                self.previous.push(key);
            }
        }
        self
    }

    /// Generates a new master key and makes it current, keeping this keyring's keys as previous
    /// keys, and stores the new keyring in the key file before returning it: the file is
    /// replaced atomically (written beside it, flushed, renamed over it), so a crash leaves
    /// either the old keyring or the new one, never a keyring without a key that sealed
    /// something.
    ///
    /// # Errors
    ///
    /// `InlineKey` when the key is set inline (there is no file to store a new key in), or the
    /// key file cannot be written.
    pub fn rotate_key_file(&self, settings: &parley_config::Settings) -> Result<Secrets, SecretsError> {
        if settings.secrets.key.is_some() {
            return Err(SecretsError::InlineKey);
        }
        let mut key = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut key);
        let rotated = Secrets::from_key(key).with_previous(
            std::iter::once(self.current.master_key).chain(self.previous.iter().map(|old| old.master_key)),
        );
        let path = settings.secrets_key_file();
        let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file_name = path.file_name().map_or_else(|| DEFAULT_KEY_FILE_NAME.into(), |name| name.to_string_lossy());
        let temporary_path = directory.join(format!(".{file_name}.{}.tmp", Secrets::random_token(9)));
        let write_error =
            |source: io::Error| SecretsError::Io { action: "write the secrets key file", path: path.clone(), source };
        let mut content = String::from(
            "# Parley secrets keyring: the first key is current; the others are previous keys kept to open\n\
             # what they sealed until `parley keys rotate` has sealed everything again.\n",
        );
        for master in std::iter::once(&rotated.current).chain(&rotated.previous) {
            content.push_str(&STANDARD.encode(master.master_key));
            content.push('\n');
        }
        write_new_private_file(&temporary_path, content.as_bytes()).map_err(write_error)?;
        if let Err(error) = fs::rename(&temporary_path, &path) {
            let _ = fs::remove_file(&temporary_path);
            return Err(write_error(error));
        }
        sync_directory(directory);
        Ok(rotated)
    }

    /// Identifies the master key without revealing it: 16 lowercase hex digits.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.current.key_id
    }

    /// The ids of the previous keys, newest first.
    #[must_use]
    pub fn previous_key_ids(&self) -> Vec<String> {
        self.previous.iter().map(|key| key.key_id.clone()).collect()
    }

    /// How every string sealed under the current key begins (`v1.<key id>.`).
    #[must_use]
    pub fn sealed_prefix(&self) -> String {
        format!("{SEALED_VERSION}.{}.", self.current.key_id)
    }

    /// True when `sealed` was sealed under a key other than the current one (or is not a
    /// sealed string at all), so a rotation must seal it again.
    #[must_use]
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        sealed_key_id(sealed) != Some(self.current.key_id.as_str())
    }

    /// Encrypts `plaintext` for `purpose` (a fixed name such as `"provider_api_key"`, without
    /// NUL) and `context` (its owner, such as a tenant id). Only `open` with the same key,
    /// purpose and context returns the plaintext. Sealing the same plaintext twice gives
    /// different strings (the nonce is random).
    ///
    /// # Panics
    ///
    /// If `plaintext` is 64 GiB or longer, beyond what AES-GCM can encrypt under one nonce.
    #[must_use]
    pub fn seal(&self, purpose: &str, context: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        self.seal_with_nonce(purpose, context, plaintext, nonce)
    }

    fn seal_with_nonce(&self, purpose: &str, context: &str, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> String {
        let payload = self.encrypt(purpose, context, plaintext, nonce);
        format!("{}{}", self.sealed_prefix(), URL_SAFE_NO_PAD.encode(payload))
    }

    /// nonce || ciphertext || tag under the current key.
    fn encrypt(&self, purpose: &str, context: &str, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let associated_data = associated_data(purpose, context);
        let ciphertext = self
            .current
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &associated_data })
            .expect("AES-256-GCM encrypts any plaintext shorter than 64 GiB");
        let mut payload = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&ciphertext);
        payload
    }

    /// Decrypts a string made by `seal` with the same purpose and context. Checks the format
    /// version, the key id (`WrongKey` when another key sealed it), the encoding and the
    /// length before decrypting; any alteration of the data gives `Corrupt`. Never panics,
    /// whatever `sealed` holds.
    ///
    /// # Errors
    ///
    /// `Malformed` when `sealed` is not a v1 sealed string, `WrongKey` when another key sealed
    /// it, `Corrupt` when it was altered or sealed for another purpose or context.
    pub fn open(&self, purpose: &str, context: &str, sealed: &str) -> Result<Vec<u8>, SecretsError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(version), Some(key_id), Some(encoded_payload)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecretsError::Malformed { reason: "expected `v1.<key id>.<data>`" });
        };
        if version != SEALED_VERSION {
            return Err(SecretsError::Malformed { reason: "unknown format version (this build reads v1)" });
        }
        if !is_key_id(key_id) {
            return Err(SecretsError::Malformed { reason: "the key id is not 16 lowercase hex digits" });
        }
        let master = self.key_for(key_id)?;
        let payload = URL_SAFE_NO_PAD
            .decode(encoded_payload)
            .map_err(|_| SecretsError::Malformed { reason: "the data is not URL-safe base64 without padding" })?;
        decrypt(master, purpose, context, &payload)
    }

    /// Like `seal`, but binary, for large values such as recorded call audio:
    /// `v1.<key id>.` followed by the raw nonce, ciphertext and tag (no base64).
    ///
    /// # Panics
    ///
    /// If `plaintext` is 64 GiB or longer, beyond what AES-GCM can encrypt under one nonce.
    #[must_use]
    pub fn seal_bytes(&self, purpose: &str, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut sealed = self.sealed_prefix().into_bytes();
        sealed.extend_from_slice(&self.encrypt(purpose, context, plaintext, nonce));
        sealed
    }

    /// Opens what `seal_bytes` made with the same purpose and context, under the current key
    /// or a previous one. Never panics, whatever `sealed` holds.
    ///
    /// # Errors
    ///
    /// As `open`: `Malformed`, `WrongKey` or `Corrupt`.
    pub fn open_bytes(&self, purpose: &str, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let header_len = SEALED_VERSION.len() + 1 + KEY_ID_BYTES * 2 + 1;
        let Some((header, payload)) = sealed.split_at_checked(header_len) else {
            return Err(SecretsError::Malformed { reason: "expected `v1.<key id>.<data>`" });
        };
        let Some(key_id) = std::str::from_utf8(header).ok().and_then(|header| sealed_key_id_of_header(header)) else {
            return Err(SecretsError::Malformed { reason: "expected `v1.<key id>.<data>`" });
        };
        decrypt(self.key_for(key_id)?, purpose, context, payload)
    }

    /// The key id of a value made by `seal_bytes`, when it has that layout.
    #[must_use]
    pub fn sealed_bytes_key_id(sealed: &[u8]) -> Option<&str> {
        let header = sealed.get(..SEALED_VERSION.len() + 1 + KEY_ID_BYTES * 2 + 1)?;
        sealed_key_id_of_header(std::str::from_utf8(header).ok()?)
    }

    fn key_for(&self, key_id: &str) -> Result<&MasterKey, SecretsError> {
        std::iter::once(&self.current).chain(&self.previous).find(|master| master.key_id == key_id).ok_or_else(|| {
            SecretsError::WrongKey { sealed_with: key_id.to_owned(), running: self.current.key_id.clone() }
        })
    }

    /// Opens the sealed TURN credentials of `[webrtc] turn_servers` in place (current key or a
    /// previous one), so the WebRTC ICE configuration gets the credential itself; returns the
    /// 1-based positions of credentials that are not sealed (they still work, in the clear).
    ///
    /// # Errors
    ///
    /// `TurnCredential`, naming the entry, when a sealed credential does not open.
    pub fn open_turn_credentials(&self, servers: &mut [parley_config::TurnServer]) -> Result<Vec<usize>, SecretsError> {
        let mut plaintext = Vec::new();
        for (index, server) in servers.iter_mut().enumerate() {
            if sealed_key_id(&server.credential).is_none() {
                if !server.credential.is_empty() {
                    plaintext.push(index + 1);
                }
                continue;
            }
            let opened = self
                .open(TURN_CREDENTIAL_PURPOSE, TURN_CREDENTIAL_CONTEXT, &server.credential)
                .and_then(|bytes| {
                    String::from_utf8(bytes).map_err(|_| SecretsError::Malformed { reason: "it is not UTF-8 text" })
                })
                .map_err(|source| SecretsError::TurnCredential { position: index + 1, source: Box::new(source) })?;
            server.credential = opened;
        }
        Ok(plaintext)
    }

    /// Seals a TURN server's credential for `[webrtc] turn_servers[].credential`
    /// (`parley secrets seal-turn-credential`).
    #[must_use]
    pub fn seal_turn_credential(&self, credential: &str) -> String {
        self.seal(TURN_CREDENTIAL_PURPOSE, TURN_CREDENTIAL_CONTEXT, credential.as_bytes())
    }

    /// The HMAC-SHA256 tag of `message` under the current key's signing key of `purpose`.
    #[must_use]
    pub fn sign(&self, purpose: &str, message: &[u8]) -> [u8; TAG_LEN] {
        self.current.signer(purpose).chain_update(message).finalize().into_bytes().into()
    }

    /// True when `tag` is exactly `sign(purpose, message)` under the current key or a previous
    /// one (tokens signed before a rotation stay valid). The comparison takes the same time
    /// wherever the tags differ; a truncated or extended tag never verifies.
    #[must_use]
    pub fn verify(&self, purpose: &str, message: &[u8], tag: &[u8]) -> bool {
        // `verify_slice` compares in constant time and rejects any length other than 32.
        std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|master| master.signer(purpose).chain_update(message).verify_slice(tag).is_ok())
    }

    /// `bytes` random bytes from the operating system, as URL-safe base64 without padding.
    #[must_use]
    pub fn random_token(bytes: usize) -> String {
        let mut buffer = vec![0u8; bytes];
        OsRng.fill_bytes(&mut buffer);
        URL_SAFE_NO_PAD.encode(buffer)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Secrets")
            .field("key_id", &self.current.key_id)
            .field("previous_key_ids", &self.previous_key_ids())
            .finish_non_exhaustive()
    }
}

/// The key id a sealed string names, when it has the sealed layout.
fn sealed_key_id(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(SEALED_VERSION), Some(key_id), Some(_)) if is_key_id(key_id) => Some(key_id),
        _ => None,
    }
}

/// Decrypts nonce || ciphertext || tag with `master`.
fn decrypt(master: &MasterKey, purpose: &str, context: &str, payload: &[u8]) -> Result<Vec<u8>, SecretsError> {
    if payload.len() < NONCE_LEN + GCM_TAG_LEN {
        return Err(SecretsError::Malformed { reason: "the data is too short to hold a nonce and a tag" });
    }
    let (nonce, ciphertext) = payload.split_at(NONCE_LEN);
    let associated_data = associated_data(purpose, context);
    master
        .cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &associated_data })
        .map_err(|_| SecretsError::Corrupt)
}

/// The key id in a `v1.<key id>.` header.
fn sealed_key_id_of_header(header: &str) -> Option<&str> {
    let key_id = header.strip_prefix(SEALED_VERSION)?.strip_prefix('.')?.strip_suffix('.')?;
    is_key_id(key_id).then_some(key_id)
}

fn hmac_with_key(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// HMAC-SHA256(master, concatenation of `label_parts`).
fn derive_subkey(master_key: &[u8; KEY_LEN], label_parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut mac = hmac_with_key(master_key);
    for part in label_parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `purpose` + NUL + `context`. Unambiguous because purposes contain no NUL: the first NUL
/// always ends the purpose.
fn associated_data(purpose: &str, context: &str) -> Vec<u8> {
    debug_assert!(!purpose.contains('\0'), "a sealing purpose must not contain NUL");
    let mut associated_data = Vec::with_capacity(purpose.len() + 1 + context.len());
    associated_data.extend_from_slice(purpose.as_bytes());
    associated_data.push(0);
    associated_data.extend_from_slice(context.as_bytes());
    associated_data
}

fn is_key_id(text: &str) -> bool {
    text.len() == KEY_ID_BYTES * 2 && text.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// Decodes a key written as base64 (standard or URL-safe alphabet, with or without padding,
/// surrounding whitespace ignored). The reason never quotes the text, which is key material.
fn decode_key(text: &str) -> Result<[u8; KEY_LEN], &'static str> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("it is empty");
    }
    let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(trimmed).ok())
        .ok_or("it is not base64")?;
    <[u8; KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| "it does not decode to exactly 32 bytes")
}

/// Reads and decodes a key file, one key per line (the first is current; blank lines and
/// lines starting with `#` are skipped); `None` when it does not exist.
fn read_key_file(path: &Path) -> Result<Option<Vec<[u8; KEY_LEN]>>, SecretsError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SecretsError::Io { action: "read the secrets key file", path: path.to_owned(), source })
        }
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| SecretsError::InvalidKeyFile { path: path.to_owned(), reason: "it is not text" })?;
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        keys.push(decode_key(line).map_err(|reason| SecretsError::InvalidKeyFile { path: path.to_owned(), reason })?);
    }
    if keys.is_empty() {
        return Err(SecretsError::InvalidKeyFile { path: path.to_owned(), reason: "it is empty" });
    }
    warn_if_readable_by_others(path);
    Ok(Some(keys))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "secrets key file is accessible to other users; restrict it with chmod 600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Creates the key file with a fresh random key and returns the key. The key is written to a
/// uniquely named temporary file in the same directory, flushed to disk, then hard-linked to
/// `path`: the link appears atomically with its whole content, and fails instead of replacing
/// a file that exists. So when two processes start at once, exactly one key wins, and the
/// loser reads the winner's key rather than overwriting it.
fn create_key_file(path: &Path) -> Result<[u8; KEY_LEN], SecretsError> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(directory).map_err(|source| SecretsError::Io {
        action: "create the data directory",
        path: directory.to_owned(),
        source,
    })?;

    let mut key = [0u8; KEY_LEN];
    OsRng.fill_bytes(&mut key);
    let file_name = path.file_name().map_or_else(|| DEFAULT_KEY_FILE_NAME.into(), |name| name.to_string_lossy());
    let temporary_path = directory.join(format!(".{file_name}.{}.tmp", Secrets::random_token(9)));
    let write_error =
        |source: io::Error| SecretsError::Io { action: "write the secrets key file", path: path.to_owned(), source };
    write_new_private_file(&temporary_path, format!("{}\n", STANDARD.encode(key)).as_bytes()).map_err(write_error)?;

    let outcome = publish_without_replacing(&temporary_path, path);
    // After a hard link (or a failed publication) the temporary name is an extra link or
    // debris; after a rename it is already gone. Either way it must not stay behind.
    let _ = fs::remove_file(&temporary_path);
    match outcome {
        Ok(()) => {
            sync_directory(directory);
            Ok(key)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            // Another process created the key first: use its key.
            read_key_file(path)?.and_then(|keys| keys.first().copied()).ok_or_else(|| SecretsError::Io {
                action: "read the secrets key file",
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "it was removed while Parley created it"),
            })
        }
        Err(source) => Err(write_error(source)),
    }
}

/// Makes `final_path` name the content of `temporary_path`, failing with `AlreadyExists`
/// rather than replacing a file at `final_path`.
fn publish_without_replacing(temporary_path: &Path, final_path: &Path) -> io::Result<()> {
    match fs::hard_link(temporary_path, final_path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Err(error),
        Err(_) => {
            // The file system has no hard links. Fall back to a rename after a check; only a
            // start racing within this instant could then replace the other start's key.
            if final_path.try_exists()? {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the key file exists"));
            }
            fs::rename(temporary_path, final_path)
        }
    }
}

/// Writes `content` to a file that must not exist yet, readable by its owner only (Unix),
/// and flushes it to disk.
fn write_new_private_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

/// Flushes a directory entry to disk, so a crash cannot lose a key file that secrets in the
/// database were already sealed with. Some file systems cannot sync directories; the key
/// file itself is synced either way, so failure here is not fatal.
fn sync_directory(directory: &Path) {
    #[cfg(unix)]
    if let Ok(handle) = fs::File::open(directory) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = directory;
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use parley_config::Settings;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The bytes 0, 1, …, 31: the key of the known-answer vectors.
    fn counting_key() -> [u8; KEY_LEN] {
        std::array::from_fn(|index| index as u8)
    }

    fn secrets() -> Secrets {
        Secrets::from_key(counting_key())
    }

    fn settings_in(data_dir: &Path) -> Settings {
        Settings { data_dir: data_dir.to_owned(), ..Settings::default() }
    }

    fn settings_with_inline_key(key: &str) -> Settings {
        let mut settings = Settings::default();
        settings.secrets.key = Some(key.to_owned());
        settings
    }

    fn settings_with_key_file(path: &Path) -> Settings {
        let mut settings = Settings::default();
        settings.secrets.key_file = Some(path.to_owned());
        settings
    }

    fn load_error(settings: &Settings) -> String {
        Secrets::load(settings).unwrap_err().to_string()
    }

    // Known answers, computed independently with Python's hashlib, hmac and `cryptography`.
    // They pin the derivations and the sealed format, which must never change for v1.
    const COUNTING_KEY_ID: &str = "c6b8fa9a018d21d1";
    const COUNTING_KEY_SEALED: &str = "v1.c6b8fa9a018d21d1.ZGVmZ2hpamtsbW5v7gfP3qfzzkSyKo2pAADaa_KQIJ_7immeczJE";
    const COUNTING_KEY_TAG: &str = "f9ee377dd6df6172447dcdcf0a5d05c8a7a3ed91f808cb0c0af70f08ebfb29c7";

    #[test]
    fn key_id_matches_the_known_answer() {
        assert_eq!(secrets().key_id(), COUNTING_KEY_ID);
        assert!(is_key_id(Secrets::from_key([7; KEY_LEN]).key_id()));
        assert_ne!(Secrets::from_key([7; KEY_LEN]).key_id(), COUNTING_KEY_ID);
    }

    #[test]
    fn seal_matches_the_known_answer_and_opens_it() {
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|index| 100 + index as u8);
        let sealed = secrets().seal_with_nonce("provider_api_key", "tenant-1", b"sk-test-123", nonce);
        assert_eq!(sealed, COUNTING_KEY_SEALED);
        assert_eq!(secrets().open("provider_api_key", "tenant-1", COUNTING_KEY_SEALED).unwrap(), b"sk-test-123");
    }

    #[test]
    fn sign_matches_the_known_answer() {
        let tag = secrets().sign("resume_token", b"conversation 42");
        assert_eq!(hex::encode(tag), COUNTING_KEY_TAG);
    }

    #[test]
    fn seal_then_open_round_trips() {
        let secrets = secrets();
        for plaintext in [&b""[..], b"sk-live-abc", &[0u8, 255, 10, 13][..], &vec![42u8; 100_000][..]] {
            let sealed = secrets.seal("provider_api_key", "tenant-a", plaintext);
            assert!(sealed.starts_with(&format!("v1.{}.", secrets.key_id())), "{sealed}");
            assert_eq!(secrets.open("provider_api_key", "tenant-a", &sealed).unwrap(), plaintext);
        }
        // A clone holds the same key.
        let sealed = secrets.seal("identity", "agent-1", b"hello");
        assert_eq!(secrets.clone().open("identity", "agent-1", &sealed).unwrap(), b"hello");
    }

    #[test]
    fn sealed_string_has_the_documented_layout() {
        let sealed = secrets().seal("provider_api_key", "tenant-a", b"0123456789");
        let parts: Vec<&str> = sealed.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "v1");
        assert_eq!(parts[1], COUNTING_KEY_ID);
        let payload = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(payload.len(), NONCE_LEN + 10 + GCM_TAG_LEN);
    }

    #[test]
    fn sealing_the_same_plaintext_twice_differs() {
        let secrets = secrets();
        let first = secrets.seal("provider_api_key", "tenant-a", b"same");
        let second = secrets.seal("provider_api_key", "tenant-a", b"same");
        assert_ne!(first, second);
        assert_eq!(secrets.open("provider_api_key", "tenant-a", &first).unwrap(), b"same");
        assert_eq!(secrets.open("provider_api_key", "tenant-a", &second).unwrap(), b"same");
    }

    #[test]
    fn another_context_or_purpose_cannot_open() {
        let secrets = secrets();
        let sealed = secrets.seal("provider_api_key", "tenant-a", b"sk-live-abc");
        for (purpose, context) in [
            ("provider_api_key", "tenant-b"),
            ("provider_api_key", ""),
            ("provider_api_key", "tenant-a\0"),
            ("identity_secret", "tenant-a"),
            ("provider_api_ke", "ytenant-a"),
            ("", "provider_api_key\0tenant-a"),
        ] {
            let error = secrets.open(purpose, context, &sealed).unwrap_err();
            assert!(matches!(error, SecretsError::Corrupt), "{purpose:?}/{context:?}: {error}");
        }
    }

    #[test]
    fn tampered_data_is_corrupt() {
        let secrets = secrets();
        let sealed = secrets.seal("provider_api_key", "tenant-a", b"sk-live-abc");
        let (prefix, encoded) = sealed.rsplit_once('.').unwrap();
        let payload = URL_SAFE_NO_PAD.decode(encoded).unwrap();
        for index in 0..payload.len() {
            for flip in [0x01u8, 0x80] {
                let mut tampered = payload.clone();
                tampered[index] ^= flip;
                let tampered = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&tampered));
                let error = secrets.open("provider_api_key", "tenant-a", &tampered).unwrap_err();
                assert!(matches!(error, SecretsError::Corrupt), "byte {index}: {error}");
            }
        }
        // Dropping the last byte of the tag keeps the length plausible but breaks the tag.
        let shortened = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&payload[..payload.len() - 1]));
        assert!(matches!(secrets.open("provider_api_key", "tenant-a", &shortened), Err(SecretsError::Corrupt)));
    }

    #[test]
    fn another_key_is_wrong_key_naming_both_ids() {
        let sealed = secrets().seal("provider_api_key", "tenant-a", b"sk-live-abc");
        let other = Secrets::from_key([9; KEY_LEN]);
        let error = other.open("provider_api_key", "tenant-a", &sealed).unwrap_err();
        match &error {
            SecretsError::WrongKey { sealed_with, running } => {
                assert_eq!(sealed_with, COUNTING_KEY_ID);
                assert_eq!(running, other.key_id());
            }
            other_error => panic!("expected WrongKey, got {other_error:?}"),
        }
        let message = error.to_string();
        assert!(message.contains(&format!("sealed under key {COUNTING_KEY_ID}")), "{message}");
        assert!(message.contains(&format!("running key is {}", other.key_id())), "{message}");
    }

    #[test]
    fn malformed_strings_are_named_as_such() {
        let secrets = secrets();
        let valid = secrets.seal("p", "c", b"x");
        let (_, encoded) = valid.rsplit_once('.').unwrap();
        let cases = [
            String::new(),
            "v1".to_owned(),
            format!("v1.{COUNTING_KEY_ID}"),
            format!("v2.{COUNTING_KEY_ID}.{encoded}"),
            format!("V1.{COUNTING_KEY_ID}.{encoded}"),
            format!("v1.{}.{encoded}", COUNTING_KEY_ID.to_ascii_uppercase()),
            format!("v1.{}.{encoded}", &COUNTING_KEY_ID[..15]),
            format!("v1.{COUNTING_KEY_ID}.{encoded}="),
            format!("v1.{COUNTING_KEY_ID}.{}", encoded.replace(['-', '_'], "+")),
            format!("v1.{COUNTING_KEY_ID}.{encoded}.extra"),
            format!("v1.{COUNTING_KEY_ID}."),
            format!("v1.{COUNTING_KEY_ID}.{}", URL_SAFE_NO_PAD.encode([0u8; NONCE_LEN + GCM_TAG_LEN - 1])),
        ];
        for case in cases {
            match secrets.open("p", "c", &case) {
                Err(SecretsError::Malformed { .. }) => {}
                // Replacing `-`/`_` only changes anything when the encoding contains them.
                Ok(_) if case == valid => {}
                other => panic!("{case:?}: expected Malformed, got {other:?}"),
            }
        }
        // The shortest well-formed payload gets as far as decryption.
        let empty = format!("v1.{COUNTING_KEY_ID}.{}", URL_SAFE_NO_PAD.encode([0u8; NONCE_LEN + GCM_TAG_LEN]));
        assert!(matches!(secrets.open("p", "c", &empty), Err(SecretsError::Corrupt)));
    }

    #[test]
    fn open_never_panics_on_arbitrary_input() {
        let secrets = secrets();
        let valid = secrets.seal("provider_api_key", "tenant-a", b"sk-live-abcdefghijklmnop");
        // Every truncation, on character boundaries.
        for end in 0..valid.len() {
            let _ = secrets.open("provider_api_key", "tenant-a", &valid[..end]);
        }
        let mut random = StdRng::seed_from_u64(0x05ec_2e75);
        let alphabet: Vec<char> = "v1.0123456789abcdefABCDEF-_+/=é\0 \n💥".chars().collect();
        for _ in 0..5_000 {
            // Random strings over a hostile alphabet, and valid prefixes with random tails.
            let length = random.gen_range(0..80);
            let noise: String = (0..length).map(|_| alphabet[random.gen_range(0..alphabet.len())]).collect();
            let cut = random.gen_range(0..=valid.len());
            for candidate in
                [noise.clone(), format!("{}{noise}", &valid[..cut]), format!("v1.{COUNTING_KEY_ID}.{noise}")]
            {
                let result = secrets.open("provider_api_key", "tenant-a", &candidate);
                assert!(result.is_err() || candidate == valid, "{candidate:?} opened");
            }
            // Random bytes behind a valid header reach decryption and fail there.
            let mut payload = vec![0u8; random.gen_range(0..64)];
            random.fill(&mut payload[..]);
            let candidate = format!("v1.{COUNTING_KEY_ID}.{}", URL_SAFE_NO_PAD.encode(&payload));
            assert!(secrets.open("provider_api_key", "tenant-a", &candidate).is_err());
        }
    }

    #[test]
    fn sign_then_verify() {
        let secrets = secrets();
        let message = b"conversation 42 expires 1700000000";
        let tag = secrets.sign("resume_token", message);
        assert_eq!(tag, secrets.sign("resume_token", message), "signing is deterministic");
        assert!(secrets.verify("resume_token", message, &tag));
        assert!(!secrets.verify("other_token", message, &tag), "purposes have separate keys");
        assert!(!secrets.verify("resume_token", b"conversation 43 expires 1700000000", &tag));
        assert!(!secrets.verify("resume_token", message, &tag[..TAG_LEN - 1]), "truncated tag");
        assert!(!secrets.verify("resume_token", message, &tag[..16]), "half a tag");
        assert!(!secrets.verify("resume_token", message, &[]), "empty tag");
        let mut extended = tag.to_vec();
        extended.push(0);
        assert!(!secrets.verify("resume_token", message, &extended), "extended tag");
        let mut flipped = tag;
        flipped[TAG_LEN - 1] ^= 1;
        assert!(!secrets.verify("resume_token", message, &flipped));
        assert!(!Secrets::from_key([9; KEY_LEN]).verify("resume_token", message, &tag), "another key");
        assert_ne!(secrets.sign("a", b"bc"), secrets.sign("ab", b"c"));
    }

    #[test]
    fn signing_keys_are_separate_from_the_master_and_encryption_keys() {
        let master = counting_key();
        let plain_hmac: [u8; TAG_LEN] = hmac_with_key(&master).chain_update(b"m").finalize().into_bytes().into();
        assert_ne!(secrets().sign("", b"m"), plain_hmac);
        assert_ne!(derive_subkey(&master, &[ENCRYPT_LABEL]), derive_subkey(&master, &[SIGN_LABEL_PREFIX, b"encrypt"]));
    }

    #[test]
    fn random_tokens_are_url_safe_and_distinct() {
        let token = Secrets::random_token(32);
        assert_eq!(token.len(), 43);
        assert!(token.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'), "{token}");
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
        assert_ne!(Secrets::random_token(32), token);
        assert_eq!(Secrets::random_token(0), "");
    }

    #[test]
    fn debug_shows_the_key_id_and_no_key_material() {
        let key = counting_key();
        let secrets = Secrets::from_key(key);
        let debug = format!("{secrets:?} {secrets:#?}");
        assert!(debug.contains(COUNTING_KEY_ID), "{debug}");
        for encoding in
            [STANDARD.encode(key), STANDARD_NO_PAD.encode(key), URL_SAFE_NO_PAD.encode(key), hex::encode(key)]
        {
            assert!(!debug.contains(&encoding), "{debug}");
        }
        let encryption_key = derive_subkey(&key, &[ENCRYPT_LABEL]);
        assert!(!debug.contains(&hex::encode(encryption_key)), "{debug}");
        assert!(!debug.contains("[0, 1, 2"), "{debug}");
    }

    #[test]
    fn load_reads_an_inline_key_in_every_base64_flavour() {
        // Bytes chosen so the standard and URL-safe encodings differ (`+/` versus `-_`).
        let key: [u8; KEY_LEN] = std::array::from_fn(|index| if index % 2 == 0 { 0xfb } else { 0xff });
        let expected_id = Secrets::from_key(key).key_id().to_owned();
        let flavours = [
            STANDARD.encode(key),
            STANDARD_NO_PAD.encode(key),
            URL_SAFE.encode(key),
            URL_SAFE_NO_PAD.encode(key),
            format!("  {}\n", STANDARD.encode(key)),
        ];
        assert!(flavours[0].contains(['+', '/']) && flavours[2].contains(['-', '_']));
        for flavour in flavours {
            let loaded = Secrets::load(&settings_with_inline_key(&flavour)).unwrap();
            assert_eq!(loaded.key_id(), expected_id, "{flavour:?}");
        }
    }

    #[test]
    fn inline_key_wins_and_touches_no_file() {
        let directory = tempfile::tempdir().unwrap();
        let mut settings = settings_in(directory.path());
        settings.secrets.key = Some(STANDARD.encode(counting_key()));
        assert_eq!(Secrets::load(&settings).unwrap().key_id(), COUNTING_KEY_ID);
        assert!(!directory.path().join("secrets.key").exists());
    }

    #[test]
    fn bad_inline_keys_name_the_setting_without_quoting_the_key() {
        let cases = [
            (STANDARD.encode([7u8; 31]), "32 bytes"),
            (STANDARD.encode([7u8; 33]), "32 bytes"),
            ("not base64 at all!".to_owned(), "not base64"),
            ("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0*".to_owned(), "not base64"),
            ("   ".to_owned(), "empty"),
        ];
        for (key, reason) in cases {
            let message = load_error(&settings_with_inline_key(&key));
            assert!(message.contains("`secrets.key`"), "{message}");
            assert!(message.contains("PARLEY_SECRETS__KEY"), "{message}");
            assert!(message.contains(reason), "{message}");
            assert!(message.contains("openssl rand -base64 32"), "{message}");
            if !key.trim().is_empty() {
                assert!(!message.contains(key.trim()), "{message}");
            }
        }
    }

    #[test]
    fn previous_keys_open_and_verify_but_never_seal_or_sign() {
        let old = secrets();
        let sealed_before = old.seal("provider_api_key", "tenant-a", b"sealed before the rotation");
        let tag_before = old.sign("resume_token", b"conversation 7");
        let rotated = Secrets::from_key([7u8; KEY_LEN]).with_previous([counting_key(), [7u8; KEY_LEN]]);

        assert_eq!(rotated.previous_key_ids(), [old.key_id()], "the current key and repeats are not kept twice");
        assert_eq!(
            rotated.open("provider_api_key", "tenant-a", &sealed_before).unwrap(),
            b"sealed before the rotation"
        );
        assert!(rotated.verify("resume_token", b"conversation 7", &tag_before));
        assert!(rotated.needs_reseal(&sealed_before));

        let sealed_after = rotated.seal("provider_api_key", "tenant-a", b"new");
        assert!(sealed_after.starts_with(&format!("v1.{}.", rotated.key_id())));
        assert!(!rotated.needs_reseal(&sealed_after));
        assert!(rotated.needs_reseal("not sealed at all"));
        assert_ne!(rotated.sign("resume_token", b"conversation 7"), tag_before, "signing uses the new key");
        assert!(matches!(old.open("provider_api_key", "tenant-a", &sealed_after), Err(SecretsError::WrongKey { .. })));
    }

    #[test]
    fn rotating_the_key_file_keeps_the_old_keys_after_the_new_one() {
        let directory = tempfile::tempdir().unwrap();
        let settings = settings_in(directory.path());
        let first = Secrets::load(&settings).unwrap();
        let sealed = first.seal("provider_api_key", "tenant-a", b"survives two rotations");

        let second = first.rotate_key_file(&settings).unwrap();
        assert_ne!(second.key_id(), first.key_id());
        assert_eq!(second.previous_key_ids(), [first.key_id()]);
        let third = second.rotate_key_file(&settings).unwrap();
        assert_eq!(third.previous_key_ids(), [second.key_id(), first.key_id()]);

        let reloaded = Secrets::load(&settings).unwrap();
        assert_eq!(reloaded.key_id(), third.key_id(), "the file's first key is current after a restart");
        assert_eq!(reloaded.previous_key_ids(), third.previous_key_ids());
        assert_eq!(reloaded.open("provider_api_key", "tenant-a", &sealed).unwrap(), b"survives two rotations");
        let entries: Vec<_> = fs::read_dir(directory.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(entries, ["secrets.key"], "no temporary file stays behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(directory.path().join("secrets.key")).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "mode {mode:o}");
        }
    }

    #[test]
    fn an_inline_key_cannot_be_rotated_in_place_and_previous_keys_come_from_settings() {
        let mut settings = settings_with_inline_key(&STANDARD.encode([7u8; KEY_LEN]));
        settings.secrets.previous_keys = vec![STANDARD.encode(counting_key())];
        let secrets = Secrets::load(&settings).unwrap();
        assert_eq!(secrets.previous_key_ids(), [COUNTING_KEY_ID]);
        assert!(matches!(secrets.rotate_key_file(&settings), Err(SecretsError::InlineKey)));

        settings.secrets.previous_keys = vec![STANDARD.encode(counting_key()), "not a key".into()];
        let message = load_error(&settings);
        assert!(message.contains("`secrets.previous_keys` entry 2"), "{message}");
    }

    #[test]
    fn a_key_file_with_comments_only_is_invalid() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("keys");
        fs::write(&path, "# nothing here\n\n").unwrap();
        let message = load_error(&settings_with_key_file(&path));
        assert!(message.contains("it is empty"), "{message}");
    }

    #[test]
    fn load_generates_the_default_key_file_once() {
        let directory = tempfile::tempdir().unwrap();
        let data_dir = directory.path().join("not").join("yet").join("there");
        let settings = settings_in(&data_dir);

        let first = Secrets::load(&settings).unwrap();
        let key_file = data_dir.join("secrets.key");
        let content = fs::read_to_string(&key_file).unwrap();
        assert_eq!(decode_key(&content).map(Secrets::from_key).unwrap().key_id(), first.key_id());
        assert!(content.ends_with('\n'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "mode {mode:o}");
        }
        let entries: Vec<_> = fs::read_dir(&data_dir).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(entries, ["secrets.key"], "no temporary file stays behind");

        let second = Secrets::load(&settings).unwrap();
        assert_eq!(second.key_id(), first.key_id());
        let sealed = first.seal("provider_api_key", "tenant-a", b"kept across restarts");
        assert_eq!(second.open("provider_api_key", "tenant-a", &sealed).unwrap(), b"kept across restarts");
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let directory = tempfile::tempdir().unwrap();
        let settings = Arc::new(settings_in(directory.path()));
        let starts = 8;
        let barrier = Arc::new(Barrier::new(starts));
        let handles: Vec<_> = (0..starts)
            .map(|_| {
                let settings = Arc::clone(&settings);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    Secrets::load(&settings).unwrap().key_id().to_owned()
                })
            })
            .collect();
        let key_ids: Vec<String> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
        let on_disk = Secrets::load(&settings).unwrap();
        assert!(key_ids.iter().all(|key_id| key_id == on_disk.key_id()), "{key_ids:?}");
        assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 1, "no temporary file stays behind");
    }

    #[test]
    fn a_start_that_loses_the_race_reads_the_winners_key() {
        // The file appears between this start's existence check and its publication.
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("secrets.key");
        fs::write(&path, format!("{}\n", STANDARD.encode(counting_key()))).unwrap();
        assert_eq!(create_key_file(&path).unwrap(), counting_key());
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{}\n", STANDARD.encode(counting_key())));
        assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 1, "no temporary file stays behind");
    }

    #[test]
    fn publication_never_replaces_an_existing_file() {
        let directory = tempfile::tempdir().unwrap();
        let temporary = directory.path().join("temporary");
        let destination = directory.path().join("destination");
        fs::write(&temporary, "new").unwrap();
        fs::write(&destination, "old").unwrap();
        let error = publish_without_replacing(&temporary, &destination).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&destination).unwrap(), "old");
        fs::remove_file(&destination).unwrap();
        publish_without_replacing(&temporary, &destination).unwrap();
        assert_eq!(fs::read_to_string(&destination).unwrap(), "new");
    }

    #[test]
    fn explicit_key_file_is_read_with_whitespace_trimmed() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("parley.key");
        fs::write(&path, format!("\n {} \r\n", URL_SAFE_NO_PAD.encode(counting_key()))).unwrap();
        assert_eq!(Secrets::load(&settings_with_key_file(&path)).unwrap().key_id(), COUNTING_KEY_ID);
    }

    #[test]
    fn explicit_missing_key_file_is_an_error_and_is_not_created() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing.key");
        let mut settings = settings_with_key_file(&path);
        settings.data_dir = directory.path().to_owned();
        let error = Secrets::load(&settings).unwrap_err();
        assert!(matches!(error, SecretsError::MissingKeyFile { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("`secrets.key_file`"), "{message}");
        assert!(!path.exists());
        assert!(!directory.path().join("secrets.key").exists());
    }

    #[test]
    fn corrupt_key_file_names_the_path_without_quoting_it() {
        let directory = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &str); 4] = [
            (b"", "empty"),
            (b"definitely not a key!", "not base64"),
            (b"c2hvcnQ=", "32 bytes"),
            (&[0xff, 0xfe, 0x00], "not text"),
        ];
        for (content, reason) in cases {
            // The default location too: an existing but corrupt default file is never replaced.
            for explicit in [true, false] {
                let path = directory.path().join("secrets.key");
                fs::write(&path, content).unwrap();
                let settings = if explicit { settings_with_key_file(&path) } else { settings_in(directory.path()) };
                let error = Secrets::load(&settings).unwrap_err();
                assert!(matches!(error, SecretsError::InvalidKeyFile { .. }), "{error:?}");
                let message = error.to_string();
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(message.contains(reason), "{message}");
                assert!(!message.contains("definitely"), "{message}");
                assert_eq!(fs::read(&path).unwrap(), content, "the file is left alone");
            }
        }
    }

    #[test]
    fn unreadable_key_file_is_an_io_error_naming_the_path() {
        let directory = tempfile::tempdir().unwrap();
        // A directory where the key file should be cannot be read as a file.
        let path = directory.path().join("secrets.key");
        fs::create_dir(&path).unwrap();
        let error = Secrets::load(&settings_with_key_file(&path)).unwrap_err();
        assert!(matches!(error, SecretsError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn sealed_bytes_round_trip_under_previous_keys_and_refuse_everything_else() {
        let secrets = secrets();
        let audio: Vec<u8> = (0..=255u8).cycle().take(5_000).collect();
        let sealed = secrets.seal_bytes("call_recording", "tenant-a/conversation-1/0", &audio);
        assert!(sealed.starts_with(format!("v1.{COUNTING_KEY_ID}.").as_bytes()));
        assert_eq!(sealed.len(), "v1..".len() + 16 + NONCE_LEN + audio.len() + GCM_TAG_LEN);
        assert!(!sealed.windows(64).any(|window| audio.windows(64).any(|stretch| stretch == window)));
        assert_eq!(Secrets::sealed_bytes_key_id(&sealed), Some(COUNTING_KEY_ID));
        assert_eq!(secrets.open_bytes("call_recording", "tenant-a/conversation-1/0", &sealed).unwrap(), audio);
        // Another segment, conversation or purpose cannot open it.
        for (purpose, context) in [
            ("call_recording", "tenant-a/conversation-1/1"),
            ("call_recording", "tenant-b/conversation-1/0"),
            ("provider_api_key", "tenant-a/conversation-1/0"),
        ] {
            assert!(matches!(secrets.open_bytes(purpose, context, &sealed), Err(SecretsError::Corrupt)));
        }
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            secrets.open_bytes("call_recording", "tenant-a/conversation-1/0", &tampered),
            Err(SecretsError::Corrupt)
        ));
        // A rotated keyring still opens it; a foreign key names both ids.
        let rotated = Secrets::from_key([7; KEY_LEN]).with_previous([counting_key()]);
        assert_eq!(rotated.open_bytes("call_recording", "tenant-a/conversation-1/0", &sealed).unwrap(), audio);
        let error = Secrets::from_key([7; KEY_LEN]).open_bytes("call_recording", "tenant-a/conversation-1/0", &sealed);
        assert!(matches!(error, Err(SecretsError::WrongKey { .. })), "{error:?}");
        for malformed in [&b""[..], b"v1.", b"v2.0000000000000000.abc", &sealed[..sealed.len().min(30)]] {
            let error = secrets.open_bytes("call_recording", "tenant-a/conversation-1/0", malformed).unwrap_err();
            assert!(matches!(error, SecretsError::Malformed { .. } | SecretsError::WrongKey { .. }), "{error:?}");
        }
    }

    #[test]
    fn sealed_turn_credentials_open_in_place_and_plaintext_ones_are_reported() {
        use parley_config::TurnServer;
        let secrets = secrets();
        let server = |credential: String| TurnServer {
            urls: vec!["turn:turn.example.net:3478".to_owned()],
            username: "parley".to_owned(),
            credential,
        };
        let mut servers =
            vec![server(secrets.seal_turn_credential("turn-secret-1")), server("in-the-clear".to_owned())];
        assert!(servers[0].credential.starts_with(&format!("v1.{COUNTING_KEY_ID}.")));
        assert_eq!(secrets.open_turn_credentials(&mut servers).unwrap(), vec![2]);
        assert_eq!(servers[0].credential, "turn-secret-1");
        assert_eq!(servers[1].credential, "in-the-clear");

        // After a rotation the previous key still opens it.
        let sealed = secrets.seal_turn_credential("turn-secret-2");
        let rotated = Secrets::from_key([7; KEY_LEN]).with_previous([counting_key()]);
        let mut servers = vec![server(sealed.clone())];
        assert!(rotated.open_turn_credentials(&mut servers).unwrap().is_empty());
        assert_eq!(servers[0].credential, "turn-secret-2");

        // Another key refuses, naming the setting and without the sealed value or the secret.
        let mut servers = vec![server("plain".to_owned()), server(sealed.clone())];
        let error = Secrets::from_key([7; KEY_LEN]).open_turn_credentials(&mut servers).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("`webrtc.turn_servers` entry 2 (`credential`)"), "{message}");
        assert!(message.contains(COUNTING_KEY_ID), "the key it was sealed under is named: {message}");
        assert!(!message.contains(&sealed) && !message.contains("turn-secret-2"), "{message}");
        // A sealed value for another purpose does not open as a TURN credential.
        let mut servers = vec![server(secrets.seal("provider_api_key", "webrtc.turn_servers", b"x"))];
        assert!(matches!(
            secrets.open_turn_credentials(&mut servers),
            Err(SecretsError::TurnCredential { position: 1, .. })
        ));
    }
}
