//! Scopes granted by a token: from `scope` (RFC 8693 / RFC 9068, space-delimited) or `scp` (a
//! string or an array of strings, as Entra ID and Okta issue it).

use std::sync::Arc;

use serde_json::Value;

/// A sorted, deduplicated set of scope values; lookups are binary searches. The list is shared:
/// cloning a set, or a cached principal, allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Arc<[Arc<str>]>);

impl Scopes {
    /// Reads the scopes of a claims object: `scope` wins when present, else `scp`. A claim of the
    /// wrong type grants nothing.
    pub fn from_claims(claims: &serde_json::Map<String, Value>) -> Self {
        let mut out: Vec<Arc<str>> = Vec::new();
        each_granted(scope_member(|name| claims.get(name)), |s| {
            out.push(Arc::from(s))
        });
        Self::from_vec(out)
    }

    /// Builds a set from a space-delimited string (RFC 7662's `scope` member).
    pub fn from_space_delimited(s: &str) -> Self {
        Self::from_vec(s.split_ascii_whitespace().map(Arc::from).collect())
    }

    fn from_vec(mut v: Vec<Arc<str>>) -> Self {
        v.sort_unstable();
        v.dedup();
        Scopes(v.into())
    }

    /// A set of already sorted, distinct names, shared with the caller's list of them.
    pub(super) fn from_interned<'a>(sorted: impl Iterator<Item = &'a Arc<str>>) -> Self {
        Scopes(sorted.cloned().collect())
    }

    /// Whether two sets are one shared list (interning), not merely equal.
    #[cfg(test)]
    pub(super) fn shares_list_with(&self, other: &Scopes) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|s| (**s).cmp(scope)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The member that grants a token's scopes, looked up with `get`: `scope` when present (of
/// whatever type, even `null`), else `scp`.
pub(crate) fn scope_member<T>(get: impl Fn(&str) -> Option<T>) -> Option<T> {
    get("scope").or_else(|| get("scp"))
}

/// Calls `f` with each scope that `member` (see [`scope_member`]) grants: a string holds
/// space-delimited scopes, an array strings of them (other items are skipped); any other
/// type grants nothing.
pub(crate) fn each_granted(member: Option<impl std::borrow::Borrow<Value>>, f: impl FnMut(&str)) {
    match member.as_ref().map(|m| m.borrow()) {
        Some(Value::String(s)) => s.split_ascii_whitespace().for_each(f),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(str::split_ascii_whitespace)
            .for_each(f),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scopes(v: Value) -> Scopes {
        Scopes::from_claims(v.as_object().unwrap())
    }

    #[test]
    fn space_delimited_scope() {
        let s = scopes(json!({"scope": "api  erp:write offline_access"}));
        assert!(s.contains("api"));
        assert!(s.contains("erp:write"));
        assert!(s.contains("offline_access"));
        assert!(!s.contains("erp"));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn scp_as_string_and_array() {
        assert!(scopes(json!({"scp": "api reports"})).contains("reports"));
        let arr = scopes(json!({"scp": ["api", "reports", 7]}));
        assert!(arr.contains("api") && arr.contains("reports"));
        assert_eq!(arr.len(), 2);
    }

    #[test]
    fn scope_wins_over_scp() {
        let s = scopes(json!({"scope": "a", "scp": ["b"]}));
        assert!(s.contains("a") && !s.contains("b"));
    }

    #[test]
    fn missing_or_wrong_type_grants_nothing() {
        assert!(scopes(json!({})).is_empty());
        assert!(scopes(json!({"scope": 5})).is_empty());
        assert!(scopes(json!({"scope": {"api": true}})).is_empty());
    }

    #[test]
    fn scopes_are_case_sensitive() {
        assert!(!scopes(json!({"scope": "API"})).contains("api"));
    }
}
