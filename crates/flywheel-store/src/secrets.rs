//! Secrets encrypted at rest: each value sealed with ChaCha20-Poly1305
//! under the server's secrets key, with a fresh random nonce and the
//! secret's name as associated data (a ciphertext cannot be moved to another
//! name). The key comes from `FLYWHEEL_SECRETS_KEY` (64 hex characters) or
//! from a key file created on first start; the database alone reveals no
//! value.

use anyhow::{bail, Context};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A sealed secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Seals and opens secret values.
pub struct SecretCipher {
    cipher: ChaCha20Poly1305,
}

impl SecretCipher {
    pub fn new(key: &[u8; 32]) -> SecretCipher {
        SecretCipher { cipher: ChaCha20Poly1305::new(Key::from_slice(key)) }
    }

    /// The key from `env_key` (hex) if given, else from `key_file`,
    /// creating the file (mode 0600) with a random key if it is missing.
    pub fn load(env_key: Option<&str>, key_file: &Path) -> anyhow::Result<SecretCipher> {
        let hex_key = match env_key {
            Some(key) => key.trim().to_owned(),
            None => match std::fs::read_to_string(key_file) {
                Ok(text) => text.trim().to_owned(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let key = hex::encode(rand::random::<[u8; 32]>());
                    let mut file = std::fs::OpenOptions::new()
                        .create_new(true)
                        .write(true)
                        .mode(0o600)
                        .open(key_file)
                        .with_context(|| format!("could not create {}", key_file.display()))?;
                    writeln!(file, "{key}").with_context(|| format!("could not write {}", key_file.display()))?;
                    key
                }
                Err(err) => return Err(err).with_context(|| format!("could not read {}", key_file.display())),
            },
        };
        let bytes = hex::decode(&hex_key).context("the secrets key is not hex")?;
        let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!("the secrets key must be 32 bytes (64 hex characters), not {}", bytes.len());
        };
        Ok(SecretCipher::new(&key))
    }

    pub fn seal(&self, name: &str, value: &str) -> anyhow::Result<Sealed> {
        let nonce = rand::random::<[u8; 12]>();
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: name.as_bytes() })
            .map_err(|_| anyhow::anyhow!("could not encrypt the secret {name}"))?;
        Ok(Sealed { nonce: nonce.to_vec(), ciphertext })
    }

    pub fn open(&self, name: &str, sealed: &Sealed) -> anyhow::Result<String> {
        if sealed.nonce.len() != 12 {
            bail!("the secret {name} is corrupt");
        }
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: name.as_bytes() })
            .map_err(|_| anyhow::anyhow!("the secret {name} cannot be decrypted with this server's secrets key"))?;
        String::from_utf8(plain).context("a secret is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let cipher = SecretCipher::new(&[7; 32]);
        let sealed = cipher.seal("TOKEN", "hunter2").unwrap();
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(cipher.open("TOKEN", &sealed).unwrap(), "hunter2");
        assert!(cipher.open("OTHER", &sealed).is_err());
        assert!(SecretCipher::new(&[8; 32]).open("TOKEN", &sealed).is_err());
        assert_ne!(cipher.seal("TOKEN", "hunter2").unwrap().nonce, sealed.nonce);
    }

    #[test]
    fn the_key_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let sealed = SecretCipher::load(None, &path).unwrap().seal("A", "x").unwrap();
        assert_eq!(SecretCipher::load(None, &path).unwrap().open("A", &sealed).unwrap(), "x");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(SecretCipher::load(Some("abcd"), &path).is_err());
    }
}
