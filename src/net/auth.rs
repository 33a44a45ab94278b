//! Authentication and permissions. A configured key (HS256 secret, or an RS256/ES256 public key in PEM) verifies
//! JWTs; the claims become a [`Caller`]: `sub` is the owner of every run it starts, `read` and `write` list the
//! spaces it may subscribe to and change (`"*"` for all), `agent: true` lets it patch, complete and fail other
//! owners' runs in spaces it may write, and `exp` is required. Without a key the server is in development mode
//! and every caller is [`Caller::trusted`](crate::engine::caller::Caller::trusted).

use crate::engine::caller::Caller;
use crate::error::{Error, ErrorCode, Result};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::Deserialize;

/// Verifies tokens.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("algorithms", &self.validation.algorithms).finish()
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    agent: bool,
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_required_spec_claims(&["exp", "sub"]);
    v.leeway = 0;
    v.validate_aud = false;
    // A token that is not valid yet is not valid.
    v.validate_nbf = true;
    v
}

impl Auth {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Auth {
        Auth { key: DecodingKey::from_secret(secret), validation: validation(Algorithm::HS256) }
    }

    /// RS256 or ES256, from a PEM public key (the kind is read from the key).
    pub fn public_pem(pem: &[u8]) -> std::result::Result<Auth, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Auth { key, validation: validation(Algorithm::RS256) });
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(Auth { key, validation: validation(Algorithm::ES256) }),
            Err(e) => Err(format!("not an RSA or EC public key in PEM: {e}")),
        }
    }

    /// Verifies a token: signature, algorithm (the configured one only: `alg: none` never passes), `exp`, `sub`.
    pub fn verify(&self, token: &str) -> Result<Caller> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            let why = match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature",
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => "algorithm not accepted",
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                _ => "invalid token",
            };
            Error::new(ErrorCode::Unauthenticated, why)
        })?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(Error::new(ErrorCode::Unauthenticated, "`sub` is empty"));
        }
        Ok(Caller::new(c.sub, c.read, c.write, c.agent, c.exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn verifies_claims_and_rejects_bad_tokens() {
        let auth = Auth::hs256(b"secret");
        let claims = json!({"sub": "ann", "exp": now() + 60, "read": ["a", "b"], "write": ["a"]});
        let good = encode(&Header::default(), &claims, &EncodingKey::from_secret(b"secret")).unwrap();
        let c = auth.verify(&good).unwrap();
        assert_eq!(c.owner.as_deref(), Some("ann"));
        assert!(c.can_read("b") && !c.can_write("b") && c.can_change("ann", "a") && !c.can_change("bob", "a"));
        let wrong = encode(&Header::default(), &claims, &EncodingKey::from_secret(b"other")).unwrap();
        assert_eq!(auth.verify(&wrong).unwrap_err().message, "bad signature");
        let expired = json!({"sub": "ann", "exp": now() - 10});
        let expired = encode(&Header::default(), &expired, &EncodingKey::from_secret(b"secret")).unwrap();
        assert_eq!(auth.verify(&expired).unwrap_err().message, "token expired");
        let no_exp = encode(&Header::default(), &json!({"sub": "ann"}), &EncodingKey::from_secret(b"secret")).unwrap();
        assert!(auth.verify(&no_exp).is_err());
        // alg: none, built by hand.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims.to_string()));
        assert!(auth.verify(&none).is_err());
        let star = Caller::new("ann".into(), vec!["*".into()], vec![], false, 0);
        assert!(star.can_read("anything"));
        // Not valid before `nbf`; an empty subject names nobody; an `exp` at the end of time is valid.
        let sign = |claims: serde_json::Value| {
            encode(&Header::default(), &claims, &EncodingKey::from_secret(b"secret")).unwrap()
        };
        let early = auth.verify(&sign(json!({"sub": "ann", "exp": now() + 60, "nbf": now() + 30})));
        assert_eq!(early.unwrap_err().message, "token not valid yet (nbf)");
        assert!(auth.verify(&sign(json!({"sub": "", "exp": now() + 60}))).is_err());
        assert_eq!(auth.verify(&sign(json!({"sub": "ann", "exp": u64::MAX}))).unwrap().expires, Some(u64::MAX));
    }
}
