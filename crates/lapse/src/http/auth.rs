//! Who is calling (SPEC §5): API keys, the cron secret, user JWTs, and development mode.
//!
//! Keys are kept only as SHA-256 digests and compared in constant time against the digest of
//! what was presented, so neither timing nor logs reveal them.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lapse_core::UserId;
use lapse_core::config::{Env, KeyRole};
use lapse_engine::Caller;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;
use crate::http::{AppState, limits};
use crate::settings::Settings;

struct Key {
    name: String,
    role: KeyRole,
    digest: [u8; 32],
}

/// The credentials this instance accepts.
pub struct Credentials {
    keys: Vec<Key>,
    cron: Option<[u8; 32]>,
    jwt: Vec<(DecodingKey, Validation)>,
    /// Development mode with nothing configured: every request is admin.
    open: bool,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

impl Credentials {
    /// Resolves the configured credentials from the environment.
    pub fn from_settings(settings: &Settings, loopback: bool) -> anyhow::Result<Credentials> {
        let auth = &settings.config.auth;
        let env = &settings.env;
        let mut keys = Vec::new();
        if let Some(k) = env.get("LAPSE_ADMIN_KEY") {
            keys.push(Key {
                name: "LAPSE_ADMIN_KEY".into(),
                role: KeyRole::Admin,
                digest: digest(k.as_bytes()),
            });
        }
        if let Some(k) = env.get("LAPSE_SERVICE_KEY") {
            keys.push(Key {
                name: "LAPSE_SERVICE_KEY".into(),
                role: KeyRole::Service,
                digest: digest(k.as_bytes()),
            });
        }
        for k in &auth.api_keys {
            let d = match (&k.key_env, &k.key_sha256) {
                (Some(var), _) => match env.get(var) {
                    Some(value) => digest(value.as_bytes()),
                    None => {
                        tracing::warn!(key = %k.name, env = %var, "API key's variable is not set; key disabled");
                        continue;
                    }
                },
                (None, Some(hex)) => parse_hex(hex).ok_or_else(|| {
                    anyhow::anyhow!("api key `{}`: key_sha256 is not hex", k.name)
                })?,
                (None, None) => continue,
            };
            keys.push(Key {
                name: k.name.clone(),
                role: k.role,
                digest: d,
            });
        }
        let cron = env.get(&auth.cron_secret_env).map(|s| digest(s.as_bytes()));
        let mut jwt = Vec::new();
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.set_required_spec_claims(&["exp", "sub"]);
            match &auth.jwt_audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &auth.jwt_issuer {
                v.set_issuer(&[iss]);
            }
            v
        };
        if let Some(secret) = env.get(&auth.jwt_hs256_secret_env) {
            jwt.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        if let Some(file) = &auth.jwt_rs256_public_key_file {
            let pem = std::fs::read(file)
                .map_err(|e| anyhow::anyhow!("reading jwt_rs256_public_key_file {file}: {e}"))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{file} is not an RSA public key in PEM: {e}"))?;
            jwt.push((key, validation(Algorithm::RS256)));
        }
        let nothing = keys.is_empty() && cron.is_none() && jwt.is_empty();
        let open = nothing && loopback && settings.config.server.env == Env::Development;
        Ok(Credentials {
            keys,
            cron,
            jwt,
            open,
        })
    }

    /// Whether every request is admin (development mode).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Works out the caller of a request to `path` with these headers.
    pub fn authenticate(
        &self,
        path: &str,
        bearer: Option<&str>,
        api_key: Option<&str>,
        actor: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let presented = api_key.or(bearer);
        let Some(token) = presented else {
            if self.open {
                return Ok(Caller::Admin {
                    name: "development".into(),
                    actor: parse_actor(actor)?,
                });
            }
            return Err(ApiError::unauthorized(
                "send an API key (Authorization: Bearer <key> or X-API-Key) or a user token",
            ));
        };
        let d = digest(token.as_bytes());
        // Check every key, so the time taken does not depend on which one matched.
        let mut found: Option<&Key> = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(k);
            }
        }
        if let Some(k) = found {
            return match k.role {
                KeyRole::Admin => Ok(Caller::Admin {
                    name: k.name.clone(),
                    actor: parse_actor(actor)?,
                }),
                KeyRole::Cron => Ok(Caller::Cron {
                    name: k.name.clone(),
                }),
                KeyRole::Service => Ok(Caller::Service {
                    name: k.name.clone(),
                    actor: parse_actor(actor)?,
                }),
            };
        }
        if let Some(cron) = &self.cron
            && bool::from(cron.ct_eq(&d))
        {
            if path == "/v1/sweep" {
                return Ok(Caller::Cron {
                    name: "cron-secret".into(),
                });
            }
            return Err(ApiError::forbidden(
                "the cron secret is valid on /v1/sweep only",
            ));
        }
        // A token shaped like a JWT is judged as one only where user tokens are configured:
        // in development mode (none are) it is as good as any other bearer.
        if api_key.is_none() && !self.jwt.is_empty() && token.matches('.').count() == 2 {
            for (key, validation) in &self.jwt {
                if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, validation) {
                    let user = UserId::parse(&data.claims.sub).map_err(|_| {
                        ApiError::unauthorized("the token's `sub` is not a user id")
                    })?;
                    return Ok(Caller::User(user));
                }
            }
            return Err(ApiError::unauthorized("the token is invalid or expired"));
        }
        if self.open {
            return Ok(Caller::Admin {
                name: "development".into(),
                actor: parse_actor(actor)?,
            });
        }
        Err(ApiError::unauthorized("unknown credentials"))
    }
}

fn parse_actor(actor: Option<&str>) -> Result<Option<UserId>, ApiError> {
    actor
        .map(|a| UserId::parse(a).map_err(|e| ApiError::validation("X-Actor", e)))
        .transpose()
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// The authenticated caller of a request.
pub struct Auth(pub Caller);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let caller = caller_of(state, parts.uri.path(), &parts.headers).or_else(|e| {
            query_token(parts.uri.query()).map_or(Err(e), |t| token_caller(state, parts, t))
        })?;
        // Rate limits come right after credentials (SPEC §5's order).
        if let Some(route) = parts.extensions.get::<MatchedPath>() {
            let operation = limits::operation(&parts.method, route.as_str());
            let actor = actor_label(&caller);
            if let Err(wait) = state
                .limiter
                .check(&actor, operation, std::time::Instant::now())
            {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                return Err(ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many `{operation}` requests; try again in {secs} s"),
                )
                .retry_after(secs));
            }
        }
        Ok(Auth(caller))
    }
}

/// The caller a request's headers name.
pub fn caller_of(
    state: &AppState,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
    });
    state
        .credentials
        .authenticate(path, bearer, header("x-api-key"), header("x-actor"))
}

/// A browser's EventSource cannot send headers: it may pass its token as `access_token`.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
}

fn token_caller(state: &AppState, parts: &Parts, token: &str) -> Result<Caller, ApiError> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if header("authorization").is_some() || header("x-api-key").is_some() {
        // A header credential was given and refused; a query token does not override it.
        return Err(ApiError::unauthorized("unknown credentials"));
    }
    state
        .credentials
        .authenticate(parts.uri.path(), Some(token), None, header("x-actor"))
}

/// Who a caller is for per-actor bookkeeping (rate limits, idempotency keys).
pub fn actor_label(caller: &Caller) -> String {
    match caller.user() {
        Some(user) => format!("user:{user}"),
        None => format!("key:{}", caller.key_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(open: bool) -> Credentials {
        Credentials {
            keys: Vec::new(),
            cron: None,
            jwt: Vec::new(),
            open,
        }
    }

    #[test]
    fn development_mode_takes_a_token_shaped_like_a_jwt_as_any_other() {
        // Browsers and generated clients often send one; with no user tokens configured
        // there is nothing to check it against.
        let caller = credentials(true).authenticate("/v1/sessions", Some("a.b.c"), None, None);
        assert!(matches!(caller, Ok(Caller::Admin { .. })), "{caller:?}");
        let closed = credentials(false).authenticate("/v1/sessions", Some("a.b.c"), None, None);
        assert!(closed.is_err());
    }
}
