//! Records as Redis hashes: slot keys as text, record fields, and the sealed jar.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::super::grant::GrantKey;
use super::super::jar::Jar;
use super::super::store::{Expiry, SessionRecord, SessionState, SlotKey};
use crate::fleet::seal::{Sealer, Unsealable};

/// `grant|nonce-base64` (or `grant|-` in single mode).
pub(super) fn slot_text(slot: &SlotKey) -> String {
    let handle = slot
        .handle
        .map_or_else(|| "-".to_owned(), |n| URL_SAFE_NO_PAD.encode(n));
    format!("{}|{handle}", slot.grant.0)
}

pub(super) fn slot_from_text(text: &str) -> Option<SlotKey> {
    let (grant, handle) = text.rsplit_once('|')?;
    let handle = match handle {
        "-" => None,
        h => {
            let raw = URL_SAFE_NO_PAD.decode(h).ok()?;
            Some(<[u8; 16]>::try_from(raw.as_slice()).ok()?)
        }
    };
    Some(SlotKey {
        grant: GrantKey(grant.into()),
        handle,
    })
}

fn state_text(s: SessionState) -> &'static str {
    match s {
        SessionState::NeedsLogin => "n",
        SessionState::LoggingIn => "l",
        SessionState::Active => "a",
    }
}

/// The hash fields of a record, the jar sealed for `aad` (the record's key); the counts live in
/// the lease sets.
pub(super) fn fields(r: &SessionRecord, sealer: &Sealer, aad: &str) -> Vec<(&'static str, String)> {
    let mut v = plain_fields(r);
    v.push(("jar", sealer.seal(aad, &r.jar.to_text())));
    v
}

/// The fields that are not secret (everything but the jar).
pub(super) fn plain_fields(r: &SessionRecord) -> Vec<(&'static str, String)> {
    vec![
        ("id", r.id.to_string()),
        ("concurrent", u8::from(r.concurrent).to_string()),
        ("state", state_text(r.state).to_owned()),
        ("seated", u8::from(r.seated).to_string()),
        ("created", r.created_ms.to_string()),
        ("used", r.last_used_ms.to_string()),
        (
            "op",
            r.last_op_ms.map(|v| v.to_string()).unwrap_or_default(),
        ),
        (
            "retire",
            r.retire_at_ms.map(|v| v.to_string()).unwrap_or_default(),
        ),
        ("jv", r.jar_version.to_string()),
    ]
}

/// A record read back, with its jar still sealed as stored (compare-and-set compares that).
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub record: SessionRecord,
    pub sealed_jar: String,
}

/// The record of a hash, its jar opened with `aad`. A jar that does not open is an error: the
/// record is treated as lost, never forwarded.
pub(super) fn record_from(
    map: &HashMap<String, String>,
    sealer: &Sealer,
    aad: &str,
) -> Option<Result<Stored, Unsealable>> {
    let mut record = plain_record(map)?;
    let sealed_jar = map.get("jar").cloned().unwrap_or_default();
    match sealer.open(aad, &sealed_jar) {
        Ok(text) => record.jar = Jar::from_text(&text),
        Err(e) => return Some(Err(e)),
    }
    Some(Ok(Stored { record, sealed_jar }))
}

/// A record from its fields, without its jar (left empty): for upkeep's records whose jar
/// does not matter, and for a lease whose jar the replica already has.
pub(super) fn plain_record(map: &HashMap<String, String>) -> Option<SessionRecord> {
    let num = |k: &str| map.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(SessionRecord {
        id: num("id")?,
        concurrent: map.get("concurrent").is_some_and(|v| v == "1"),
        state: match map.get("state").map(String::as_str) {
            Some("a") => SessionState::Active,
            Some("l") => SessionState::LoggingIn,
            _ => SessionState::NeedsLogin,
        },
        jar: Jar::default(),
        seated: map.get("seated").is_some_and(|v| v == "1"),
        created_ms: num("created").unwrap_or(0),
        last_used_ms: num("used").unwrap_or(0),
        last_op_ms: num("op"),
        in_flight: 0,
        queued: 0,
        retire_at_ms: num("retire"),
        jar_version: num("jv").unwrap_or(0),
    })
}

/// Record fields as a script's arguments (name, value, ...), without the fields named in
/// `without` (times the script sets on its own clock).
pub(super) fn args(fields: Vec<(&'static str, String)>, without: &[&str]) -> Vec<String> {
    fields
        .into_iter()
        .filter(|(k, _)| !without.contains(k))
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
}

/// Why `take_expired`'s script took a session (`token`, `age`; anything else is idleness).
pub(super) fn expiry_from(why: &str) -> Expiry {
    match why {
        "token" => Expiry::TokenExpired,
        "age" => Expiry::Age,
        _ => Expiry::Idle,
    }
}

/// An `HGETALL` reply (flat name/value list) as a map.
pub(super) fn pairs(list: Vec<String>) -> HashMap<String, String> {
    let mut it = list.into_iter();
    let mut m = HashMap::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        m.insert(k, v);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_round_trip() {
        let single = SlotKey {
            grant: GrantKey("abc_-".into()),
            handle: None,
        };
        assert_eq!(slot_from_text(&slot_text(&single)), Some(single));
        let handle = SlotKey {
            grant: GrantKey("g".into()),
            handle: Some([7u8; 16]),
        };
        assert_eq!(slot_from_text(&slot_text(&handle)), Some(handle));
        assert_eq!(slot_from_text("garbage"), None);
    }

    #[test]
    fn records_round_trip_with_the_jar_sealed() {
        let sealer = Sealer::new(&[3u8; 32]);
        let mut r = SessionRecord::new(42, true, 1000);
        r.state = SessionState::Active;
        r.seated = true;
        r.last_op_ms = Some(5);
        r.retire_at_ms = Some(9);
        r.jar = Jar::from_text(".ASPXAUTH\t/\tsecret-value");
        let map: HashMap<String, String> = fields(&r, &sealer, "r:x")
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert!(!map["jar"].contains("secret-value"), "sealed at rest");
        let back = record_from(&map, &sealer, "r:x").unwrap().unwrap().record;
        assert_eq!(
            (
                back.id,
                back.concurrent,
                back.state,
                back.seated,
                back.created_ms,
                back.last_op_ms,
                back.retire_at_ms
            ),
            (42, true, SessionState::Active, true, 1000, Some(5), Some(9))
        );
        assert_eq!(back.jar, r.jar);
        assert!(
            record_from(&map, &sealer, "r:y").unwrap().is_err(),
            "a jar moved to another record does not open"
        );
    }

    #[test]
    fn malformed_slot_texts_are_refused() {
        assert_eq!(slot_from_text("g|not base64!"), None);
        assert_eq!(
            slot_from_text(&format!("g|{}", URL_SAFE_NO_PAD.encode([1u8; 15]))),
            None,
            "a handle is 16 bytes"
        );
        // Grant keys carry no '|', but the handle is the text after the last one.
        let odd = SlotKey {
            grant: GrantKey("a|b".into()),
            handle: None,
        };
        assert_eq!(slot_from_text(&slot_text(&odd)), Some(odd));
    }

    #[test]
    fn a_hash_without_an_id_is_no_record_and_missing_fields_default() {
        let map = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(plain_record(&map(&[("state", "a")])).is_none());
        assert!(plain_record(&map(&[("id", "x")])).is_none());
        let r = plain_record(&map(&[("id", "5"), ("state", "?"), ("op", "")])).unwrap();
        assert_eq!(
            (
                r.id,
                r.state,
                r.concurrent,
                r.seated,
                r.last_op_ms,
                r.retire_at_ms
            ),
            (5, SessionState::NeedsLogin, false, false, None, None)
        );
        assert_eq!((r.created_ms, r.last_used_ms, r.jar_version), (0, 0, 0));
        for (text, state) in [
            ("n", SessionState::NeedsLogin),
            ("l", SessionState::LoggingIn),
            ("a", SessionState::Active),
        ] {
            assert_eq!(state_text(state), text);
            assert_eq!(
                plain_record(&map(&[("id", "1"), ("state", text)]))
                    .unwrap()
                    .state,
                state
            );
        }
    }

    #[test]
    fn a_reply_list_pairs_up_and_drops_a_dangling_name() {
        let m = pairs(vec!["a".into(), "1".into(), "b".into()]);
        assert_eq!(m.len(), 1);
        assert_eq!(m["a"], "1");
        assert!(pairs(Vec::new()).is_empty());
    }

    #[test]
    fn script_arguments_leave_out_the_times_the_script_sets() {
        let r = SessionRecord::new(1, false, 10);
        let flat = args(plain_fields(&r), &["created", "used"]);
        assert_eq!(flat.len(), 2 * (plain_fields(&r).len() - 2));
        assert_eq!(&flat[..4], ["id", "1", "concurrent", "0"]);
        assert!(!flat.iter().any(|v| v == "created" || v == "used"));
        assert_eq!(
            args(plain_fields(&r), &[]).len(),
            2 * plain_fields(&r).len()
        );
    }

    #[test]
    fn expiry_reasons_from_the_script() {
        assert_eq!(expiry_from("token"), Expiry::TokenExpired);
        assert_eq!(expiry_from("age"), Expiry::Age);
        assert_eq!(expiry_from("idle"), Expiry::Idle);
        assert_eq!(expiry_from(""), Expiry::Idle);
    }
}
