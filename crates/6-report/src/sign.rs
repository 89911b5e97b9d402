//! DKIM signing of notifications (RFC 6376; ed25519-sha256 from RFC 8463)
//! with the signers of `[signature.<id>]`, through mail-auth.
//!
//! Keys are read once, at start: [`Signers::from_config`] parses every
//! configured signature's PEM key and refuses the configuration if one
//! cannot be used (wrong PEM, wrong key type for the algorithm), so a bad
//! key stops `ferrymail serve` and fails `ferrymail check` instead of
//! silently sending unsigned bounces.

use std::collections::BTreeMap;

use ferrymail_config::{Canon, Config, DkimAlgorithm, Signature};
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// A `[signature.<id>]` whose key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[signature.{id}] private-key: {reason}")]
pub struct KeyError {
    /// The signature id.
    pub id: String,
    /// What is wrong with the key.
    pub reason: String,
}

/// Signing a message failed (mail-auth's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DKIM signature '{id}' failed: {reason}")]
pub struct SignError {
    /// The signature id.
    pub id: String,
    /// mail-auth's message.
    pub reason: String,
}

/// Every configured DKIM signer, ready to sign.
#[derive(Default)]
pub struct Signers {
    by_id: BTreeMap<String, DkimSigner<DkimKey, Done>>,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signers")
            .field("ids", &self.by_id.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Signers {
    /// Loads the key of every `[signature.<id>]`. Fails on the first key
    /// that cannot be used, naming its signature.
    pub fn from_config(config: &Config) -> Result<Signers, KeyError> {
        let mut by_id = BTreeMap::new();
        for (id, sig) in &config.signatures {
            by_id.insert(id.clone(), signer(sig)?);
        }
        Ok(Signers { by_id })
    }

    /// True when `id` names a loaded signer.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Signs `message` with the signer `id` and returns the
    /// `DKIM-Signature` field (CRLF-terminated) to put in front of it.
    /// `None` when no such signer is configured.
    pub fn sign(&self, id: &str, message: &[u8]) -> Option<Result<String, SignError>> {
        let signer = self.by_id.get(id)?;
        Some(
            signer
                .sign(message)
                .map(|s| s.to_header())
                .map_err(|e| SignError {
                    id: id.to_string(),
                    reason: e.to_string(),
                }),
        )
    }
}

/// One signer from its configuration.
fn signer(sig: &Signature) -> Result<DkimSigner<DkimKey, Done>, KeyError> {
    let bad = |reason: String| KeyError {
        id: sig.id.clone(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_slice(sig.private_key.as_bytes())
        .map_err(|e| bad(format!("not a usable PEM private key ({e})")))?;
    let key: DkimKey = match sig.algorithm {
        DkimAlgorithm::RsaSha256 => match der {
            PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_) => {
                RsaKey::<Sha256>::from_key_der(der)
                    .map(DkimKey::from)
                    .map_err(|e| bad(format!("not an RSA key usable for rsa-sha256 ({e})")))?
            }
            _ => return Err(bad("rsa-sha256 needs a PKCS#1 or PKCS#8 RSA key".into())),
        },
        DkimAlgorithm::Ed25519Sha256 => match &der {
            // OpenSSL writes PKCS#8 v1 (no public key), which ring accepts
            // only through the "maybe unchecked" door.
            PrivateKeyDer::Pkcs8(p) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                    .map(DkimKey::from)
                    .map_err(|e| {
                        bad(format!(
                            "not an Ed25519 key usable for ed25519-sha256 ({e})"
                        ))
                    })?
            }
            _ => return Err(bad("ed25519-sha256 needs a PKCS#8 Ed25519 key".into())),
        },
    };
    let canon = |c: Canon| match c {
        Canon::Simple => Canonicalization::Simple,
        Canon::Relaxed => Canonicalization::Relaxed,
    };
    Ok(DkimSigner::from_key(key)
        .domain(sig.domain.clone())
        .selector(sig.selector.clone())
        .headers(sig.headers.iter().cloned())
        .header_canonicalization(canon(sig.canonicalization.header))
        .body_canonicalization(canon(sig.canonicalization.body)))
}
