//! A verified caller ([`Principal`]) and what of a token is worth keeping ([`Kept`]).
//!
//! A principal lives in the verified-token cache for as long as its token does, one per distinct
//! token: 100,000 cached tokens are 100,000 principals. So a cached principal keeps only what
//! the configuration reads: the scopes that routes (or the session mode) name, the claims that
//! routes match or forward or that name a grant, and the subject and client id only when a
//! session upstream derives grants from them. Everything shared is shared: the issuer id, the
//! claim names and the scope lists are interned, so a principal is a few pointers and its
//! expiry, and cloning one out of the cache allocates nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::scope::Scopes;

/// A verified caller: the issuer that vouched for it, its scopes and its claims.
#[derive(Clone)]
pub struct Principal {
    /// The configured issuer id (not the `iss` URL).
    pub issuer: Arc<str>,
    ids: Option<Arc<Ids>>,
    pub scopes: Scopes,
    /// The token's claims: all of them from [`Principal::new`], only the kept ones once
    /// [`Kept::keep`] has compacted the principal.
    pub claims: Claims,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
}

/// The subject and client id, in one allocation (absent together when not kept).
struct Ids {
    subject: Option<Box<str>>,
    client_id: Option<Box<str>>,
}

impl Principal {
    /// A principal with every claim of `claims`.
    pub fn new(issuer: Arc<str>, claims: Map<String, Value>, expires_at: u64) -> Self {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(Box::from);
        let ids = Ids {
            subject: text("sub"),
            client_id: text("client_id").or_else(|| text("azp")),
        };
        Principal {
            issuer,
            ids: (ids.subject.is_some() || ids.client_id.is_some()).then(|| Arc::new(ids)),
            scopes: Scopes::from_claims(&claims),
            claims: Claims::from(claims),
            expires_at,
        }
    }

    /// The token's `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.ids.as_ref()?.subject.as_deref()
    }

    /// The token's `client_id`, or else its `azp`.
    pub fn client_id(&self) -> Option<&str> {
        self.ids.as_ref()?.client_id.as_deref()
    }
}

impl std::fmt::Debug for Principal {
    // Claims may hold personal data; Debug shows only what identifies the grant.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("issuer", &self.issuer)
            .field("subject", &self.subject())
            .field("client_id", &self.client_id())
            .field("scopes", &self.scopes)
            .field("claims", &format_args!("<{} claims>", self.claims.len()))
            .finish()
    }
}

/// One claim: its (shared) name and its value.
type Claim = (Arc<str>, Value);

/// A principal's claims, by name; shared between the clones of a principal.
#[derive(Clone, Default)]
pub struct Claims(Option<Arc<[Claim]>>);

impl From<Map<String, Value>> for Claims {
    fn from(claims: Map<String, Value>) -> Self {
        Claims(Some(
            claims.into_iter().map(|(k, v)| (Arc::from(k), v)).collect(),
        ))
    }
}

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().flat_map(|c| c.iter()).map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Claims {
    // Claims may hold personal data: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter().map(|(k, _)| k)).finish()
    }
}

impl std::ops::Index<&str> for Claims {
    type Output = Value;

    /// `Value::Null` for an absent claim, as `serde_json::Value` indexing does.
    fn index(&self, name: &str) -> &Value {
        self.get(name).unwrap_or(&Value::Null)
    }
}

/// What of a principal the configuration reads, so that a cached principal keeps no more.
/// Built once per configuration (a reload builds a new one with its new cache).
pub struct Kept {
    /// The scope names routes and the session mode test, sorted.
    scopes: Box<[Arc<str>]>,
    /// The claim names routes match or forward and sessions derive grants from.
    claims: Box<[Arc<str>]>,
    /// Whether sessions derive grants from the subject and client id.
    ids: bool,
    /// Scope lists already seen, by which of `scopes` they hold: tokens share a handful.
    interned: Mutex<HashMap<Vec<bool>, Scopes>>,
}

/// Distinct scope lists interned at most; past it a list is allocated per principal, which
/// costs memory but never correctness.
const MAX_INTERNED: usize = 4096;

impl Kept {
    pub fn new<'a>(
        scopes: impl IntoIterator<Item = &'a str>,
        claims: impl IntoIterator<Item = &'a str>,
        ids: bool,
    ) -> Self {
        let sorted = |names: &mut dyn Iterator<Item = &'a str>| -> Box<[Arc<str>]> {
            let mut v: Vec<Arc<str>> = names.map(Arc::from).collect();
            v.sort_unstable();
            v.dedup();
            v.into()
        };
        Kept {
            scopes: sorted(&mut scopes.into_iter()),
            claims: sorted(&mut claims.into_iter()),
            ids,
            interned: Mutex::new(HashMap::new()),
        }
    }

    /// `p` with only what the configuration reads.
    pub fn keep(&self, p: Principal) -> Principal {
        let claims: Vec<Claim> = self
            .claims
            .iter()
            .filter_map(|name| Some((name.clone(), p.claims.get(name)?.clone())))
            .collect();
        Principal {
            issuer: p.issuer,
            ids: if self.ids { p.ids } else { None },
            scopes: self.scopes_of(&p.scopes),
            claims: Claims((!claims.is_empty()).then(|| claims.into())),
            expires_at: p.expires_at,
        }
    }

    fn scopes_of(&self, granted: &Scopes) -> Scopes {
        let held: Vec<bool> = self.scopes.iter().map(|s| granted.contains(s)).collect();
        let build = || {
            Scopes::from_interned(
                self.scopes
                    .iter()
                    .zip(&held)
                    .filter(|(_, h)| **h)
                    .map(|(s, _)| s),
            )
        };
        let Ok(mut interned) = self.interned.lock() else {
            return build();
        };
        if let Some(s) = interned.get(&held) {
            return s.clone();
        }
        let scopes = build();
        if interned.len() < MAX_INTERNED {
            interned.insert(held, scopes.clone());
        }
        scopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(claims: Value) -> Principal {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        Principal::new("erp".into(), map, 2_000)
    }

    #[test]
    fn a_new_principal_keeps_every_claim() {
        let p = principal(json!({"sub": "u", "azp": "app", "scope": "a b", "tenant": "T"}));
        assert_eq!(p.subject(), Some("u"));
        assert_eq!(p.client_id(), Some("app"));
        assert_eq!(p.claims["tenant"], "T");
        assert_eq!(p.claims.len(), 4);
        assert!(p.scopes.contains("a") && p.scopes.contains("b"));
    }

    #[test]
    fn kept_principals_hold_only_what_the_configuration_reads() {
        let kept = Kept::new(["api", "erp:write"], ["tenant"], false);
        let p = kept.keep(principal(json!({
            "sub": "u", "client_id": "c", "scope": "api openid profile", "tenant": "T", "email": "e",
        })));
        assert_eq!(p.claims["tenant"], "T");
        assert!(!p.claims.contains_key("email"));
        assert_eq!(p.claims.len(), 1);
        assert!(p.scopes.contains("api"));
        assert!(!p.scopes.contains("erp:write"));
        // Scopes no route names are dropped: no route can test them.
        assert!(!p.scopes.contains("openid"));
        assert_eq!(p.subject(), None);
        assert_eq!(p.client_id(), None);
        assert_eq!(p.issuer.as_ref(), "erp");
        assert_eq!(p.expires_at, 2_000);
    }

    #[test]
    fn ids_are_kept_when_sessions_derive_grants_from_them() {
        let kept = Kept::new([], [], true);
        let p = kept.keep(principal(json!({"sub": "u", "client_id": "c"})));
        assert_eq!((p.subject(), p.client_id()), (Some("u"), Some("c")));
        assert!(p.claims.is_empty());
    }

    #[test]
    fn equal_scope_lists_are_shared() {
        let kept = Kept::new(["api", "x"], [], false);
        let a = kept.keep(principal(json!({"scope": "api other"})));
        let b = kept.keep(principal(json!({"scope": "api"})));
        let c = kept.keep(principal(json!({"scope": "x api"})));
        assert!(a.scopes.shares_list_with(&b.scopes));
        assert!(!a.scopes.shares_list_with(&c.scopes));
        assert!(c.scopes.contains("x") && c.scopes.contains("api"));
    }

    #[test]
    fn an_absent_claim_indexes_as_null() {
        let p = principal(json!({"sub": "u"}));
        assert_eq!(p.claims["nope"], Value::Null);
    }
}
