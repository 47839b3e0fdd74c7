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

use super::members::Members;
use super::scope::{each_granted, scope_member, Scopes};

/// A verified caller: the issuer that vouched for it, its scopes and its claims.
#[derive(Clone)]
pub struct Principal {
    /// The configured issuer id (not the `iss` URL).
    pub issuer: Arc<str>,
    /// The subject and the client id. Once compacted without the subject (the usual case), one
    /// value per client id, shared by every principal of that client: a deployment has few.
    ids: Option<Arc<Ids>>,
    /// A keyed digest of the subject, for the access log's `subject` (`log.subject = "hashed"`).
    subject_tag: Option<SubjectTag>,
    pub scopes: Scopes,
    /// The token's claims: all of them from [`Principal::new`], only the kept ones once
    /// [`Kept::keep`] has compacted the principal.
    pub claims: Claims,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
}

/// A keyed digest of a subject: 64 bits of HMAC-SHA256 over the issuer id and the `sub`, shown
/// as 16 hex digits. The same subject gives the same tag under the same key (a fleet that shares
/// `log.subject_key_file` correlates; without it, a process's random key); the tag cannot be
/// turned back into the subject, nor guessed without the key.
///
/// Never zero, so that an absent tag costs no room beside a present one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SubjectTag(std::num::NonZeroU64);

impl std::fmt::Display for SubjectTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The subject and client id of a principal.
#[derive(PartialEq, Eq, Hash)]
struct Ids {
    subject: Option<Box<str>>,
    client: Option<Box<str>>,
}

impl std::fmt::Debug for SubjectTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A random key drawn once per process: tags stay stable across reloads.
pub fn process_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(rand::random)
}

/// How a compacted principal keeps its subject for the access log.
#[derive(Clone)]
pub enum SubjectLogging {
    /// As a [`SubjectTag`] under this key (shared: a key is over a kilobyte).
    Hashed(Arc<aws_lc_rs::hmac::Key>),
    /// The raw `sub`.
    Plain,
    /// Not at all (unless sessions need it).
    Omitted,
}

impl SubjectLogging {
    /// The tag of `subject` (of the issuer with id `issuer`), when hashing.
    pub fn tag(&self, issuer: &str, subject: &str) -> Option<SubjectTag> {
        let Self::Hashed(key) = self else {
            return None;
        };
        let mut ctx = aws_lc_rs::hmac::Context::with_key(key);
        ctx.update(issuer.as_bytes());
        ctx.update(&[0]);
        ctx.update(subject.as_bytes());
        let tag = ctx.sign();
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        let n = u64::from_be_bytes(first);
        Some(SubjectTag(
            std::num::NonZeroU64::new(n).unwrap_or(std::num::NonZeroU64::MIN),
        ))
    }
}

impl Principal {
    /// A principal with every claim of `claims`.
    pub fn new(issuer: Arc<str>, claims: Map<String, Value>, expires_at: u64) -> Self {
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(Box::from);
        let ids = Ids {
            subject: text("sub"),
            client: text("client_id").or_else(|| text("azp")),
        };
        Principal {
            issuer,
            ids: (ids.subject.is_some() || ids.client.is_some()).then(|| Arc::new(ids)),
            subject_tag: None,
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
        self.ids.as_ref()?.client.as_deref()
    }

    /// The subject as the access log shows it under `logging`: its tag, the raw `sub`, or
    /// nothing. A principal compacted by [`Kept`] carries its tag; one that was not (an
    /// introspected token's) is tagged here.
    pub fn logged_subject(&self, logging: &SubjectLogging) -> Option<String> {
        match logging {
            SubjectLogging::Hashed(_) => self
                .subject_tag
                .or_else(|| logging.tag(&self.issuer, self.subject()?))
                .map(|t| t.to_string()),
            SubjectLogging::Plain => self.subject().map(str::to_owned),
            SubjectLogging::Omitted => None,
        }
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
    /// How the access log shows the subject.
    logging: SubjectLogging,
    /// Scope lists already seen, by which of `scopes` they hold: tokens share a handful.
    interned: Mutex<HashMap<Vec<bool>, Scopes>>,
    /// The ids of the principals that keep no subject, by client id: one value per client.
    clients: Mutex<HashMap<Box<str>, Arc<Ids>>>,
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
            logging: SubjectLogging::Omitted,
            interned: Mutex::new(HashMap::new()),
            clients: Mutex::default(),
        }
    }

    /// Keeps what the access log shows of the subject, as `logging` says.
    pub fn with_logging(mut self, logging: SubjectLogging) -> Self {
        self.logging = logging;
        self
    }

    /// `p` with only what the configuration reads.
    pub fn keep(&self, p: Principal) -> Principal {
        let claims: Vec<Claim> = self
            .claims
            .iter()
            .filter_map(|name| Some((name.clone(), p.claims.get(name)?.clone())))
            .collect();
        let held = self.scopes.iter().map(|s| p.scopes.contains(s)).collect();
        let subject_tag = p.subject().and_then(|s| self.logging.tag(&p.issuer, s));
        let ids = match p.ids {
            Some(ids) if self.keeps_subject() => Some(ids),
            Some(ids) => ids.client.as_ref().map(|c| self.client_only(c)),
            None => None,
        };
        self.assemble(p.issuer, ids, subject_tag, held, claims, p.expires_at)
    }

    /// The compact principal of a token's verified claims, read in place: the same principal
    /// as [`Principal::new`] then [`Kept::keep`] would give, without building what `keep`
    /// drops (a string for every claim and scope the configuration never reads).
    pub(crate) fn principal(
        &self,
        issuer: Arc<str>,
        token: &Members<'_>,
        expires_at: u64,
    ) -> Principal {
        let claims: Vec<Claim> = self
            .claims
            .iter()
            .filter_map(|name| Some((name.clone(), token.value(name)?)))
            .collect();
        let mut held = vec![false; self.scopes.len()];
        each_granted(scope_member(|name| token.value(name)), |scope| {
            if let Ok(i) = self.scopes.binary_search_by(|s| (**s).cmp(scope)) {
                held[i] = true;
            }
        });
        let subject = token.str("sub");
        let client = token.str("client_id").or_else(|| token.str("azp"));
        let subject_tag = subject
            .as_deref()
            .and_then(|s| self.logging.tag(&issuer, s));
        let ids = match (subject, client) {
            (None, None) => None,
            (subject, client) if self.keeps_subject() => Some(Arc::new(Ids {
                subject: subject.map(Box::from),
                client: client.map(Box::from),
            })),
            (_, client) => client.map(|c| self.client_only(&c)),
        };
        self.assemble(issuer, ids, subject_tag, held, claims, expires_at)
    }

    /// Whether a compact principal keeps its raw subject: sessions derive grants from it, or
    /// the access log shows it as it is.
    fn keeps_subject(&self) -> bool {
        self.ids || matches!(self.logging, SubjectLogging::Plain)
    }

    /// A compact principal of what was kept; `held` says which of the kept scopes it holds.
    fn assemble(
        &self,
        issuer: Arc<str>,
        ids: Option<Arc<Ids>>,
        subject_tag: Option<SubjectTag>,
        held: Vec<bool>,
        claims: Vec<Claim>,
        expires_at: u64,
    ) -> Principal {
        Principal {
            ids,
            subject_tag,
            issuer,
            scopes: self.scopes_of(held),
            claims: Claims((!claims.is_empty()).then(|| claims.into())),
            expires_at,
        }
    }

    /// The shared ids of a principal of client `c` that keeps no subject (past [`MAX_INTERNED`]
    /// distinct clients, a value of its own).
    fn client_only(&self, c: &str) -> Arc<Ids> {
        let make = || {
            Arc::new(Ids {
                subject: None,
                client: Some(Box::from(c)),
            })
        };
        let Ok(mut clients) = self.clients.lock() else {
            return make();
        };
        if let Some(shared) = clients.get(c) {
            return shared.clone();
        }
        let ids = make();
        if clients.len() < MAX_INTERNED {
            clients.insert(Box::from(c), ids.clone());
        }
        ids
    }

    /// The interned set of the kept scopes that `held` marks.
    fn scopes_of(&self, held: Vec<bool>) -> Scopes {
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
        // The client id is kept (shared between principals) for the access log.
        assert_eq!(p.client_id(), Some("c"));
        assert_eq!(p.logged_subject(&SubjectLogging::Omitted), None);
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
    fn the_logged_subject_is_a_keyed_tag_unless_plain_is_asked_for() {
        let key = |k: u8| {
            SubjectLogging::Hashed(Arc::new(aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                &[k; 32],
            )))
        };
        let (k1, k2) = (key(1), key(2));
        let kept = Kept::new([], [], false).with_logging(k1.clone());
        let p = kept.keep(principal(
            json!({"sub": "alice@example.com", "client_id": "c"}),
        ));
        // The raw subject is not kept: only its tag.
        assert_eq!(p.subject(), None);
        let tag = p.logged_subject(&k1).unwrap();
        assert_eq!(tag.len(), 16);
        assert!(!tag.contains("alice"));
        // Stable under one key, different under another, and per issuer.
        let again = kept.keep(principal(json!({"sub": "alice@example.com"})));
        assert_eq!(again.logged_subject(&k1), Some(tag.clone()));
        let fresh = principal(json!({"sub": "alice@example.com"}));
        assert_eq!(fresh.logged_subject(&k1), Some(tag.clone()));
        assert_ne!(fresh.logged_subject(&k2), Some(tag.clone()));
        assert_ne!(
            k1.tag("other", "alice@example.com").unwrap().to_string(),
            tag
        );
        // Plain keeps the subject itself.
        let kept = Kept::new([], [], false).with_logging(SubjectLogging::Plain);
        let p = kept.keep(principal(json!({"sub": "alice@example.com"})));
        assert_eq!(
            p.logged_subject(&SubjectLogging::Plain).as_deref(),
            Some("alice@example.com")
        );
    }

    #[test]
    fn client_ids_are_shared_between_principals() {
        let kept = Kept::new([], [], false);
        let a = kept.keep(principal(json!({"client_id": "app"})));
        let b = kept.keep(principal(json!({"azp": "app"})));
        assert_eq!((a.client_id(), b.client_id()), (Some("app"), Some("app")));
        assert!(Arc::ptr_eq(
            a.ids.as_ref().unwrap(),
            b.ids.as_ref().unwrap()
        ));
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

    /// Everything a principal shows, for comparing two of them.
    fn shown(p: &Principal, logging: &SubjectLogging) -> String {
        format!(
            "{} {:?} {:?} {:?} {:?} {:?} {}",
            p.issuer,
            p.subject(),
            p.client_id(),
            p.logged_subject(logging),
            p.scopes.iter().collect::<Vec<_>>(),
            p.claims.iter().collect::<Vec<_>>(),
            p.expires_at
        )
    }

    #[test]
    fn a_principal_built_from_a_tokens_members_is_the_kept_principal() {
        let key = SubjectLogging::Hashed(Arc::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &[7; 32],
        )));
        // Payloads as the issuer wrote them: escapes and a repeated name included.
        let tokens = [
            r#"{"sub":"u","client_id":"c","scope":"api x  other","tenant":"T"}"#,
            r#"{"sub":"u","azp":"app","scp":["x","api y",5],"tenant":{"a":[1]}}"#,
            r#"{"client_id":"c","scope":null,"scp":"api"}"#,
            r#"{"scope":7,"sub":5,"tenant":null}"#,
            r#"{"scp":"x","tenant":"first","tenant":"T\u00e9"}"#,
            r#"{"s\u0075b":"esc\"aped","client_id":"c","azp":"ignored","sco\u0070e":"\u0061pi"}"#,
            "{}",
        ];
        for logging in [SubjectLogging::Omitted, SubjectLogging::Plain, key] {
            for ids in [false, true] {
                let kept = Kept::new(["api", "x", "nope"], ["tenant", "sid"], ids)
                    .with_logging(logging.clone());
                for token in tokens {
                    let members = Members::parse(token.as_bytes()).unwrap();
                    let direct = kept.principal("erp".into(), &members, 2_000);
                    let kept_new = kept.keep(principal(serde_json::from_str(token).unwrap()));
                    assert_eq!(
                        shown(&direct, &logging),
                        shown(&kept_new, &logging),
                        "{token}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_absent_claim_indexes_as_null() {
        let p = principal(json!({"sub": "u"}));
        assert_eq!(p.claims["nope"], Value::Null);
    }
}
