//! The store's key names: the layout table of [`super`], in one place. Everything of a profile
//! lives under `{key_prefix}s:{upstream}:p:{profile}:`; the seats and the credential gate are the
//! upstream's, under `{key_prefix}s:{upstream}:`; the epoch is the whole store's.

use super::super::grant::GrantKey;

/// The prefixes of one store's namespace, and the keys built from them.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `{key_prefix}`
    pub(super) global: String,
    /// `{key_prefix}s:{upstream}:`
    pub(super) upstream: String,
    /// `{key_prefix}s:{upstream}:p:{profile}:`
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn new(key_prefix: &str, upstream: &str, profile: &str) -> Self {
        let global = key_prefix.to_owned();
        let upstream = format!("{global}s:{upstream}:");
        Keys {
            prefix: format!("{upstream}p:{profile}:"),
            upstream,
            global,
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// `P r:{slot}`: the record of the slot whose text is `slot_text`.
    pub(super) fn record(&self, slot_text: &str) -> String {
        self.key(&format!("r:{slot_text}"))
    }

    /// `P slots`: every slot key.
    pub(super) fn slots(&self) -> String {
        self.key("slots")
    }

    /// `P g:{grant}`: the slot keys of one grant.
    pub(super) fn grant(&self, grant: &GrantKey) -> String {
        self.key(&format!("g:{}", grant.0))
    }

    /// `P l:{id}`: the login lock of session `id`.
    pub(super) fn login(&self, id: u64) -> String {
        self.key(&format!("l:{id}"))
    }

    /// The upstream's seat holders.
    pub(super) fn seats(&self) -> String {
        format!("{}seats", self.upstream)
    }

    /// The store's epoch (a random value written once; another one means the store lost its
    /// state).
    pub(super) fn epoch(&self) -> String {
        format!("{}epoch", self.global)
    }

    /// Until when logins with credential set `fp` are refused (its TTL).
    pub(super) fn cooldown(&self, fp: &str) -> String {
        format!("{}c:{fp}:cooldown", self.upstream)
    }

    /// Set once some replica logged in with `fp`.
    pub(super) fn proven(&self, fp: &str) -> String {
        format!("{}c:{fp}:proven", self.upstream)
    }

    /// The single-flight lock of unproven logins with `fp`.
    pub(super) fn trial(&self, fp: &str) -> String {
        format!("{}c:{fp}:trial", self.upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let k = Keys::new("tg:", "erp", "p1");
        assert_eq!(
            (k.global.as_str(), k.upstream.as_str(), k.prefix.as_str()),
            ("tg:", "tg:s:erp:", "tg:s:erp:p:p1:")
        );
        assert_eq!(k.record("g|-"), "tg:s:erp:p:p1:r:g|-");
        assert_eq!(k.slots(), "tg:s:erp:p:p1:slots");
        assert_eq!(k.grant(&GrantKey("g".into())), "tg:s:erp:p:p1:g:g");
        assert_eq!(k.login(7), "tg:s:erp:p:p1:l:7");
        assert_eq!(k.seats(), "tg:s:erp:seats");
        assert_eq!(k.epoch(), "tg:epoch");
        assert_eq!(k.cooldown("fp"), "tg:s:erp:c:fp:cooldown");
        assert_eq!(k.proven("fp"), "tg:s:erp:c:fp:proven");
        assert_eq!(k.trial("fp"), "tg:s:erp:c:fp:trial");
    }

    #[test]
    fn profiles_of_one_upstream_share_seats_and_gate_but_not_records() {
        let (a, b) = (Keys::new("tg:", "erp", "p1"), Keys::new("tg:", "erp", "p2"));
        assert_eq!(a.seats(), b.seats());
        assert_eq!(a.trial("fp"), b.trial("fp"));
        assert_ne!(a.record("g|-"), b.record("g|-"));
        assert_ne!(a.seats(), Keys::new("tg:", "crm", "p1").seats());
    }
}
