//! Secrets: encrypted at rest under a master key that never enters the database.
//!
//! Each tenant's secrets, and each shared account's, are one XChaCha20-Poly1305 box
//! (random 24-byte nonce) whose associated data names its owner ([`Owner`]: the
//! tenant id, or `account:` and the account name), so a ciphertext moved to another
//! tenant's or account's row fails to open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use zeroize::Zeroizing;

pub use mssp_runtime::SecretString;

/// Environment variable holding the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "MSSP_MASTER_KEY";
/// Environment variable holding the new master key of `mssp-bridge rekey`.
pub const NEW_MASTER_KEY_ENV: &str = "MSSP_NEW_MASTER_KEY";

/// Config keys whose values are secrets (encrypted at rest, never printed): those
/// the contract names [`mssp_contract::Role::Secret`].
pub fn secret_keys() -> impl Iterator<Item = &'static str> {
    mssp_contract::keys_with_role(mssp_contract::Role::Secret)
}

/// Whether the contract names this key a secret.
pub fn is_secret_key(key: &str) -> bool {
    mssp_contract::is_secret(key)
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no master key: set {MASTER_KEY_ENV} (base64 of 32 random bytes; `mssp-bridge keygen` makes one) or pass --master-key-file"
    )]
    Missing,
    #[error(
        "no new master key: set {NEW_MASTER_KEY_ENV} (base64 of 32 random bytes; `mssp-bridge keygen` makes one) or pass --new-key-file"
    )]
    MissingNew,
    #[error(
        "master key {origin} is not valid: {why}; expected base64 of exactly 32 bytes (`mssp-bridge keygen` makes one)"
    )]
    Malformed { origin: String, why: String },
    #[error("reading master key file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot decrypt the secrets of {owner}: wrong master key, or the record was tampered with; use the master key it was saved with"
    )]
    WrongKey { owner: String },
    #[error("encrypting secrets failed")]
    Encrypt,
}

/// Whose secrets a sealed box holds. Its associated data binds the box to that row:
/// a tenant's is its id (as ever), an account's is `account:` and its name — never a
/// tenant id, which has no `:` — so an account's box cannot be swapped with a
/// tenant's, nor one account's with another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner<'a> {
    /// A tenant, by id.
    Tenant(&'a str),
    /// A shared upstream account, by name.
    Account(&'a str),
}

impl Owner<'_> {
    fn associated_data(self) -> Vec<u8> {
        match self {
            Owner::Tenant(id) => id.as_bytes().to_vec(),
            Owner::Account(name) => format!("account:{name}").into_bytes(),
        }
    }
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Tenant(id) => write!(f, "tenant {id:?}"),
            Owner::Account(name) => write!(f, "account {name:?}"),
        }
    }
}

/// The 32-byte key that seals every tenant's and account's secrets.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// Loads the key from `file` if given, else from `MSSP_MASTER_KEY`.
    pub fn load(file: Option<&Path>) -> Result<Self, SecretError> {
        Self::load_from(file, MASTER_KEY_ENV, SecretError::Missing)
    }

    /// Loads the new key of `rekey` from `file` if given, else from
    /// `MSSP_NEW_MASTER_KEY`.
    pub fn load_new(file: Option<&Path>) -> Result<Self, SecretError> {
        Self::load_from(file, NEW_MASTER_KEY_ENV, SecretError::MissingNew)
    }

    /// Loads a key from `file` if given, else from the environment variable `env`;
    /// `missing` when neither is there.
    fn load_from(
        file: Option<&Path>,
        env: &str,
        missing: SecretError,
    ) -> Result<Self, SecretError> {
        match file {
            Some(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                    SecretError::File {
                        path: path.to_path_buf(),
                        source,
                    }
                })?);
                Self::parse(text.trim(), &format!("file {}", path.display()))
            }
            None => match std::env::var(env) {
                Ok(v) => {
                    let v = Zeroizing::new(v);
                    Self::parse(v.trim(), &format!("in {env}"))
                }
                Err(_) => Err(missing),
            },
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, SecretError> {
        let bytes = Zeroizing::new(B64.decode(text).map_err(|e| SecretError::Malformed {
            origin: origin.to_string(),
            why: e.to_string(),
        })?);
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::Malformed {
                origin: origin.to_string(),
                why: format!("it decodes to {} bytes", bytes.len()),
            })?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// A fresh random key, base64-encoded.
    pub fn generate() -> String {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(k.as_mut());
        B64.encode(k.as_ref())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }

    /// Seals the secrets of `owner`: nonce (24 bytes) followed by the ciphertext.
    pub fn seal(
        &self,
        owner: Owner<'_>,
        secrets: &BTreeMap<String, SecretString>,
    ) -> Result<Vec<u8>, SecretError> {
        let plain: BTreeMap<&str, &str> = secrets
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let json = Zeroizing::new(serde_json::to_vec(&plain).map_err(|_| SecretError::Encrypt)?);
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &json,
                    aad: &owner.associated_data(),
                },
            )
            .map_err(|_| SecretError::Encrypt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`MasterKey::seal`] produced for the same owner.
    pub fn open(
        &self,
        owner: Owner<'_>,
        sealed: &[u8],
    ) -> Result<BTreeMap<String, SecretString>, SecretError> {
        let wrong = || SecretError::WrongKey {
            owner: owner.to_string(),
        };
        if sealed.len() < 24 {
            return Err(wrong());
        }
        let (nonce, ct) = sealed.split_at(24);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ct,
                        aad: &owner.associated_data(),
                    },
                )
                .map_err(|_| wrong())?,
        );
        let map: BTreeMap<String, String> = serde_json::from_slice(&plain).map_err(|_| wrong())?;
        Ok(map
            .into_iter()
            .map(|(k, v)| (k, SecretString::new(v)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::parse(&MasterKey::generate(), "test").unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_for_their_tenant_and_key() {
        let k = key();
        let mut s = BTreeMap::new();
        s.insert("amp_api_key".to_string(), SecretString::new("s3cr3t-value"));
        let sealed = k.seal(Owner::Tenant("acme"), &s).unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"s3cr3t-value"));
        assert_eq!(
            k.open(Owner::Tenant("acme"), &sealed).unwrap()["amp_api_key"].expose(),
            "s3cr3t-value"
        );
        for other in [
            Owner::Tenant("globex"),
            Owner::Account("acme"),
            Owner::Tenant("account:acme"),
        ] {
            assert!(matches!(
                k.open(other, &sealed),
                Err(SecretError::WrongKey { .. })
            ));
        }
        assert!(matches!(
            key().open(Owner::Tenant("acme"), &sealed),
            Err(SecretError::WrongKey { .. })
        ));
        // An account's box opens only as that account's, never as a tenant's.
        let shared = k.seal(Owner::Account("mssp-xdr"), &s).unwrap();
        assert!(k.open(Owner::Account("mssp-xdr"), &shared).is_ok());
        let e = k.open(Owner::Tenant("mssp-xdr"), &shared).unwrap_err();
        assert!(e.to_string().contains("tenant \"mssp-xdr\""), "{e}");
        assert!(k.open(Owner::Account("other"), &shared).is_err());
    }

    #[test]
    fn malformed_master_keys_say_how_to_fix_them() {
        let e = MasterKey::parse("c2hvcnQ=", "in env").err().unwrap();
        assert!(e.to_string().contains("32 bytes"), "{e}");
        assert!(format!("{:?}", SecretString::new("x")).contains("***"));
    }
}
