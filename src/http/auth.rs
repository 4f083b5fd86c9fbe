//! Bearer-token authentication: admin tokens for `/api/…`, gateway or admin tokens for `/v1/…`,
//! nothing for the operational routes. Tokens are kept as SHA-256 digests and compared in
//! constant time; they are never logged.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::AuthConfig;
use std::sync::Arc;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Gateway,
    Admin,
}

impl Access {
    pub fn of_path(path: &str) -> Access {
        if path.starts_with("/api/") || path == "/api" {
            Access::Admin
        } else if path.starts_with("/v1/") || path == "/v1" {
            Access::Gateway
        } else {
            Access::Public
        }
    }
}

/// The configured tokens, hashed.
#[derive(Debug)]
pub struct Auth {
    admin: Vec<[u8; 32]>,
    gateway: Vec<[u8; 32]>,
}

/// Who a request's token says the caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    Gateway,
    Unknown,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Self {
        Auth {
            admin: config
                .admin_tokens
                .iter()
                .map(|t| digest(t.expose()))
                .collect(),
            gateway: config
                .gateway_tokens
                .iter()
                .map(|t| digest(t.expose()))
                .collect(),
        }
    }

    /// No tokens configured: every route is open (allowed on loopback only).
    pub fn is_open(&self) -> bool {
        self.admin.is_empty() && self.gateway.is_empty()
    }

    fn caller(&self, token: &str) -> Caller {
        let presented = digest(token);
        // Visit every token whatever matches, so timing does not tell which one did.
        let admin = self
            .admin
            .iter()
            .fold(false, |hit, t| hit | ct_eq(t, &presented));
        let gateway = self
            .gateway
            .iter()
            .fold(false, |hit, t| hit | ct_eq(t, &presented));
        if admin {
            Caller::Admin
        } else if gateway {
            Caller::Gateway
        } else {
            Caller::Unknown
        }
    }

    /// Decides whether a request with this `Authorization` header may use a route.
    pub fn authorize(&self, access: Access, header: Option<&str>) -> Result<(), ApiError> {
        if access == Access::Public || self.is_open() {
            return Ok(());
        }
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".to_owned()))?;
        match (self.caller(token), access) {
            (Caller::Unknown, _) => Err(ApiError::Unauthorized("invalid bearer token".to_owned())),
            (Caller::Gateway, Access::Admin) => Err(ApiError::Forbidden(
                "gateway tokens cannot use the admin API".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two digests.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware that applies `Auth` to every request.
pub async fn require_token(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let access = Access::of_path(req.uri().path());
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match auth.authorize(access, header) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            admin_tokens: vec![Secret::new("admin-1")],
            gateway_tokens: vec![Secret::new("gw-1")],
        })
    }

    #[test]
    fn admin_routes_need_an_admin_token() {
        let a = auth();
        assert!(a.authorize(Access::Admin, Some("Bearer admin-1")).is_ok());
        assert!(matches!(
            a.authorize(Access::Admin, Some("Bearer gw-1")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            a.authorize(Access::Admin, Some("Bearer nope")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            a.authorize(Access::Admin, None),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            a.authorize(Access::Admin, Some("admin-1")),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn gateway_routes_take_either_token_and_public_routes_none() {
        let a = auth();
        assert!(a.authorize(Access::Gateway, Some("Bearer gw-1")).is_ok());
        assert!(a.authorize(Access::Gateway, Some("Bearer admin-1")).is_ok());
        assert!(a.authorize(Access::Gateway, None).is_err());
        assert!(a.authorize(Access::Public, None).is_ok());
    }

    #[test]
    fn routes_are_classified_by_prefix() {
        assert_eq!(Access::of_path("/api/governance/teams"), Access::Admin);
        assert_eq!(Access::of_path("/v1/check"), Access::Gateway);
        assert_eq!(Access::of_path("/healthz"), Access::Public);
        assert_eq!(Access::of_path("/apix"), Access::Public);
    }
}
