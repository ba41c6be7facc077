//! Signed tokens (JWT, `jsonwebtoken`): what integrators mint in their own backend, and what
//! the server mints at login. One format for both:
//!
//! ```json
//! {"sub":"u1","name":"Ada","rooms":{"team-*":"write","board":"read"},"exp":1798761600}
//! ```
//!
//! Verification accepts HS256 with `CONCORD_AUTH_SECRET`, and EdDSA or RS256 with the public
//! key in `CONCORD_AUTH_PUBLIC_KEY`; any other algorithm (including `none`) is refused before
//! the signature is looked at. `exp` is required and checked with no leeway, so an expired
//! token is refused at once and a live connection closes at its expiry.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::access::{Denied, Role};

/// Longest token accepted, checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most entries in a token's `rooms` claim.
pub const MAX_ROOM_CLAIMS: usize = 256;

/// The claims of a Concord token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's stable id.
    pub sub: String,
    /// Display name, shown to others in presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not before, unix seconds: the token is refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Room id (or a prefix ending in `*`) to `"read"` or `"write"`.
    #[serde(default)]
    pub rooms: BTreeMap<String, Role>,
}

impl Claims {
    /// The role these claims give in `room`: an exact entry wins, else the longest matching
    /// prefix pattern (`"team-*"`; `"*"` matches every room).
    pub fn role_in(&self, room: &str) -> Option<Role> {
        if let Some(role) = self.rooms.get(room) {
            return Some(*role);
        }
        self.rooms
            .iter()
            .filter_map(|(pattern, role)| {
                let prefix = pattern.strip_suffix('*')?;
                room.starts_with(prefix).then_some((prefix.len(), *role))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, role)| role)
    }
}

/// The keys tokens are checked (and, with a secret, minted) with.
pub struct Keys {
    secret: Option<(EncodingKey, DecodingKey)>,
    public: Option<(Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("public", &self.public.as_ref().map(|(alg, _)| alg))
            .finish()
    }
}

impl Keys {
    /// Keys from a shared secret and/or a PEM public key (Ed25519 or RSA).
    pub fn new(secret: Option<&[u8]>, public_pem: Option<&[u8]>) -> Result<Keys, String> {
        let secret = match secret {
            Some(s) => Some((
                EncodingKey::from_secret(s).map_err(|_| "unusable secret".to_owned())?,
                DecodingKey::from_secret(s).map_err(|_| "unusable secret".to_owned())?,
            )),
            None => None,
        };
        let public = match public_pem {
            Some(pem) => {
                if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                    Some((Algorithm::EdDSA, key))
                } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    Some((Algorithm::RS256, key))
                } else {
                    return Err("not a PEM Ed25519 or RSA public key".to_owned());
                }
            }
            None => None,
        };
        Ok(Keys { secret, public })
    }

    /// Whether the server can mint tokens (it has the shared secret).
    pub fn can_mint(&self) -> bool {
        self.secret.is_some()
    }

    /// Checks a token's size, algorithm, signature and expiry, and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, Denied> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Denied::Unauthorized);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Denied::Unauthorized)?;
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref().map(|(_, d)| d),
            alg => self
                .public
                .as_ref()
                .filter(|(a, _)| *a == alg)
                .map(|(_, d)| d),
        }
        .ok_or(Denied::Unauthorized)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is checked below against the caller's clock (tests and live connections).
        validation.validate_exp = false;
        let claims: Claims = jsonwebtoken::decode(token, key, &validation)
            .map_err(|_| Denied::Unauthorized)?
            .claims;
        if claims.sub.is_empty() || claims.sub.len() > 128 || claims.rooms.len() > MAX_ROOM_CLAIMS {
            return Err(Denied::Unauthorized);
        }
        if claims.exp <= now {
            return Err(Denied::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return Err(Denied::Unauthorized);
        }
        Ok(claims)
    }

    /// Signs `claims` with the shared secret (HS256).
    pub fn mint(&self, claims: &Claims) -> Option<String> {
        let (key, _) = self.secret.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a test secret that is long enough!!";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            name: Some("Ada".into()),
            exp,
            nbf: None,
            rooms: [
                ("team-*".to_owned(), Role::Write),
                ("team-secret".to_owned(), Role::Read),
                ("board".to_owned(), Role::Read),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn room_patterns_match_exact_then_longest_prefix() {
        let c = claims(10);
        assert_eq!(c.role_in("board"), Some(Role::Read));
        assert_eq!(c.role_in("team-a"), Some(Role::Write));
        assert_eq!(c.role_in("team-secret"), Some(Role::Read));
        assert_eq!(c.role_in("boardroom"), None);
        assert_eq!(c.role_in("other"), None);
        let mut all = claims(10);
        all.rooms = [("*".to_owned(), Role::Read)].into_iter().collect();
        assert_eq!(all.role_in("anything"), Some(Role::Read));
    }

    #[test]
    fn a_token_is_refused_before_its_nbf() {
        let keys = Keys::new(Some(SECRET), None).unwrap();
        let early = Claims {
            nbf: Some(500),
            ..claims(1_000)
        };
        let token = keys.mint(&early).unwrap();
        assert!(matches!(
            keys.verify(&token, 499),
            Err(Denied::Unauthorized)
        ));
        assert_eq!(keys.verify(&token, 500).unwrap(), early);
    }

    #[test]
    fn minted_tokens_verify_and_expire() {
        let keys = Keys::new(Some(SECRET), None).unwrap();
        let token = keys.mint(&claims(1_000)).unwrap();
        assert_eq!(keys.verify(&token, 999).unwrap(), claims(1_000));
        assert_eq!(keys.verify(&token, 1_000), Err(Denied::Expired));
    }

    #[test]
    fn bad_tokens_are_unauthorized() {
        let keys = Keys::new(Some(SECRET), None).unwrap();
        let other = Keys::new(Some(b"another secret, also long enough!!"), None).unwrap();
        let forged = other.mint(&claims(1_000)).unwrap();
        assert_eq!(keys.verify(&forged, 0), Err(Denied::Unauthorized));
        assert_eq!(keys.verify("", 0), Err(Denied::Unauthorized));
        assert_eq!(keys.verify("not.a.token", 0), Err(Denied::Unauthorized));
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(keys.verify(&huge, 0), Err(Denied::Unauthorized));
        // alg "none": header {"alg":"none","typ":"JWT"}.
        let body = forged.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}.");
        assert_eq!(keys.verify(&none, 0), Err(Denied::Unauthorized));
        // An RS256 header with no public key configured.
        let rs = format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{body}.c2ln");
        assert_eq!(keys.verify(&rs, 0), Err(Denied::Unauthorized));
    }

    fn signed(alg: Algorithm, private_pem: &[u8]) -> String {
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem),
            _ => EncodingKey::from_rsa_pem(private_pem),
        }
        .unwrap();
        jsonwebtoken::encode(&Header::new(alg), &claims(1_000), &key).unwrap()
    }

    #[test]
    fn integrators_sign_with_eddsa_or_rs256() {
        let ed_pub = include_bytes!("../../../testdata/keys/ed25519-public.pem");
        let ed_priv = include_bytes!("../../../testdata/keys/ed25519-private.pem");
        let rsa_pub = include_bytes!("../../../testdata/keys/rsa-public.pem");
        let rsa_priv = include_bytes!("../../../testdata/keys/rsa-private.pem");
        let ed = Keys::new(None, Some(ed_pub)).unwrap();
        let rsa = Keys::new(None, Some(rsa_pub)).unwrap();
        let ed_token = signed(Algorithm::EdDSA, ed_priv);
        let rsa_token = signed(Algorithm::RS256, rsa_priv);
        assert_eq!(ed.verify(&ed_token, 0).unwrap(), claims(1_000));
        assert_eq!(rsa.verify(&rsa_token, 0).unwrap(), claims(1_000));
        // Each key accepts only its own algorithm, and no secret means no HS256.
        assert_eq!(ed.verify(&rsa_token, 0), Err(Denied::Unauthorized));
        assert_eq!(rsa.verify(&ed_token, 0), Err(Denied::Unauthorized));
        let hs = Keys::new(Some(SECRET), None)
            .unwrap()
            .mint(&claims(1_000))
            .unwrap();
        assert_eq!(ed.verify(&hs, 0), Err(Denied::Unauthorized));
        assert!(!ed.can_mint());
        assert!(Keys::new(None, Some(b"not a key")).is_err());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let keys = Keys::new(Some(SECRET), None).unwrap();
        assert!(!format!("{keys:?}").contains("test secret"));
    }
}
