//! A JSON object's members, read in place: the payload of a JWT that has not been seen before.
//!
//! A token's payload is parsed once to find its issuer and, once its signature holds, read for
//! the registered claims and for what the configuration keeps of it (a few scopes and claims,
//! see [`super::Kept`]). Parsing it into a `serde_json::Map` built every member (a string for
//! each name, a value tree for each value) only to drop most of them. Here each member is its
//! name, borrowed from the decoded payload unless it holds escapes, and its value as the raw
//! JSON text, checked but parsed only when read.
//!
//! A name that occurs twice reads as its last occurrence, as a parsed `Map` would have it (RFC
//! 7519 §4 allows either refusing such a payload or taking the last).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The members of one JSON object, in their order.
#[derive(Debug, Default)]
pub(crate) struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The members of `json`, which must be exactly one JSON object.
    pub(crate) fn parse(json: &'a [u8]) -> Option<Self> {
        serde_json::from_slice(json).ok()
    }

    /// The raw value of member `name`, unless it is absent.
    pub(crate) fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// Member `name` as a value; `None` when absent.
    pub(crate) fn value(&self, name: &str) -> Option<Value> {
        serde_json::from_str(self.raw(name)?.get()).ok()
    }

    /// Member `name` when it is a JSON string (borrowed unless it holds escapes); `None` when
    /// absent or of another type.
    pub(crate) fn str(&self, name: &str) -> Option<Cow<'a, str>> {
        text(self.raw(name)?)
    }
}

/// A raw value that is a JSON array: its items' raw values.
pub(crate) fn items(raw: &RawValue) -> Option<Vec<&RawValue>> {
    serde_json::from_str(raw.get()).ok()
}

/// A raw value that is a JSON string, as text (borrowed unless it holds escapes).
pub(crate) fn text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let json = raw.get();
    if !json.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(json) {
        Ok(s) => Some(Cow::Borrowed(s)),
        // Escapes: the text must be unescaped into a string of its own.
        Err(_) => serde_json::from_str::<String>(json).ok().map(Cow::Owned),
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(m.size_hint().unwrap_or(12));
                while let Some((name, value)) = m.next_entry::<Name<'de>, &'de RawValue>()? {
                    members.push((name.0, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Object)
    }
}

/// A member's name: borrowed from the input unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(s)))
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_read_in_place_and_parsed_when_read() {
        let json =
            br#"{"iss":"https://idp","aud":["a","b"],"exp":2000,"n\u0061me":"x\"y","o":{"k":[1]}}"#;
        let m = Members::parse(json).unwrap();
        assert!(matches!(m.str("iss"), Some(Cow::Borrowed("https://idp"))));
        // Escapes in a name or a value are unescaped.
        assert_eq!(m.str("name").as_deref(), Some("x\"y"));
        assert_eq!(m.raw("aud").and_then(items).map(|a| a.len()), Some(2));
        assert_eq!(m.value("exp"), Some(serde_json::json!(2000)));
        assert_eq!(m.value("o"), Some(serde_json::json!({"k": [1]})));
        // Wrong types and absent members.
        assert_eq!(m.str("exp"), None);
        assert!(m.raw("iss").and_then(items).is_none());
        assert!(m.raw("nope").is_none() && m.value("nope").is_none());
    }

    #[test]
    fn a_repeated_name_reads_as_its_last_occurrence() {
        let m = Members::parse(br#"{"iss":"first","iss":"last"}"#).unwrap();
        assert_eq!(m.str("iss").as_deref(), Some("last"));
    }

    #[test]
    fn only_one_well_formed_object_parses() {
        for bad in [
            &b"[1]"[..],
            b"\"s\"",
            b"{",
            b"{\"a\":1} x",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"\xff",
        ] {
            assert!(Members::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Members::parse(b" {} ").is_some());
    }
}
