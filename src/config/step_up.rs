//! A route's `acr_values` and `max_age` → policy's [`StepUp`] (RFC 9470), with its two 401
//! challenges prebuilt: each names everything the route requires, so that one new
//! authentication meets all of it.

use std::sync::Arc;

use http::HeaderValue;

use super::check::Checker;
use super::routes::{Context, Section};
use crate::policy::{Denied, StepUp};

/// The route's step-up requirement, if it sets one. `issuer` is the issuer the route names (its
/// leeway alone applies), or `None` for any configured issuer.
pub(crate) fn step_up(
    c: &mut Checker<'_>,
    s: &Section<'_>,
    ctx: &Context<'_>,
    issuer: Option<&Arc<str>>,
) -> Option<Box<StepUp>> {
    let r = s.raw;
    if r.acr_values.is_none() && r.max_age.is_none() {
        return None;
    }
    let k = |field: &str| format!("{}.{field}", s.key);
    let acr_values: Box<[Box<str>]> = match &r.acr_values {
        None => Box::new([]),
        Some(list) => {
            if list.is_empty() {
                c.error(
                    &k("acr_values"),
                    "must list at least one value, or be left out",
                );
            }
            for (j, v) in list.iter().enumerate() {
                // The challenge carries them space-separated in one quoted string (RFC 9470 §3).
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
                {
                    c.error(
                        &format!("{}.acr_values[{j}]", s.key),
                        format!("`{v}` is not an acr value (printable ASCII without spaces, quotes or backslashes)"),
                    );
                }
            }
            list.iter().map(|v| Box::from(v.as_str())).collect()
        }
    };
    let max_age = r
        .max_age
        .as_deref()
        .and_then(|v| c.whole_seconds(&k("max_age"), v));
    let leeway = ctx
        .issuers
        .iter()
        .filter(|(id, _)| issuer.is_none_or(|i| i == id))
        .map(|(id, l)| (id.clone(), l.as_secs()))
        .collect();

    // RFC 9470 §3: the requirement's parameters follow RFC 6750's error and description.
    let mut params = String::new();
    if !acr_values.is_empty() {
        params.push_str(&format!(", acr_values=\"{}\"", acr_values.join(" ")));
    }
    if let Some(secs) = max_age {
        params.push_str(&format!(", max_age=\"{secs}\""));
    }
    let head = ctx.challenge_head;
    let challenge = |reason: Denied| {
        HeaderValue::from_str(&format!(
            "{head}, error=\"insufficient_user_authentication\", error_description=\"{reason}\"{params}"
        ))
        // The head, the fixed description and the values checked above are printable ASCII.
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"insufficient_user_authentication\""))
    };
    Some(Box::new(StepUp {
        acr_challenge: challenge(Denied::AcrNotAccepted),
        max_age_challenge: challenge(Denied::AuthenticationTooOld),
        acr_values,
        max_age,
        leeway,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::from_toml_str;
    use crate::config::tests::error_text;
    use crate::policy::{RouteAuth, StepUp};

    const BASE: &str = r#"
[[issuer]]
id = "erp"
issuer = "https://erp.example.com/identity"
discovery = true
audiences = ["api"]
leeway = "10s"

[[issuer]]
id = "entra"
issuer = "https://login.example.net/tenant/v2.0"
discovery = true
audiences = ["api"]

[[upstream]]
id = "erp"
url = "http://127.0.0.1:8081"

[[route]]
id = "payments"
prefix = "/entity/Default/24.200.001/Payment"
upstream = "erp"
scopes = ["api"]
"#;

    fn step_up(extra: &str) -> StepUp {
        let c = from_toml_str(&format!("{BASE}{extra}")).unwrap_or_else(|e| panic!("{e}"));
        let r = c.routes.iter().next().unwrap().clone();
        let RouteAuth::Bearer(req) = r.auth else {
            panic!("bearer route")
        };
        *req.step_up.expect("a step-up requirement")
    }

    #[test]
    fn the_challenges_name_the_routes_whole_requirement() {
        let s = step_up("acr_values = [\"urn:example:mfa\", \"phr\"]\nmax_age = \"15m\"\n");
        assert_eq!(
            &*s.acr_values,
            [Box::from("urn:example:mfa"), Box::from("phr")]
        );
        assert_eq!(s.max_age, Some(900));
        assert_eq!(
            s.acr_challenge,
            "Bearer realm=\"tollgate\", error=\"insufficient_user_authentication\", error_description=\"the token's authentication context (acr) is missing or not one this route accepts\", acr_values=\"urn:example:mfa phr\", max_age=\"900\""
        );
        assert_eq!(
            s.max_age_challenge,
            "Bearer realm=\"tollgate\", error=\"insufficient_user_authentication\", error_description=\"the token's authentication time (auth_time) is missing or older than this route allows\", acr_values=\"urn:example:mfa phr\", max_age=\"900\""
        );
        let only_age = step_up("max_age = \"60s\"\n");
        assert!(only_age.acr_values.is_empty());
        assert!(only_age
            .max_age_challenge
            .to_str()
            .unwrap()
            .ends_with(", max_age=\"60\""));
        let only_acr = step_up("acr_values = [\"phr\"]\n");
        assert_eq!(only_acr.max_age, None);
        assert!(only_acr
            .acr_challenge
            .to_str()
            .unwrap()
            .ends_with(", acr_values=\"phr\""));
    }

    #[test]
    fn the_leeway_is_each_accepted_issuers() {
        let any = step_up("max_age = \"5m\"\n");
        assert_eq!(
            &*any.leeway,
            [(Arc::from("erp"), 10), (Arc::from("entra"), 30)]
        );
        let one = step_up("max_age = \"5m\"\nissuer = \"entra\"\n");
        assert_eq!(&*one.leeway, [(Arc::from("entra"), 30)]);
    }

    #[test]
    fn a_route_without_the_keys_has_no_requirement() {
        let c = from_toml_str(BASE).unwrap();
        let RouteAuth::Bearer(req) = &c.routes.iter().next().unwrap().auth else {
            panic!("bearer route")
        };
        assert!(req.step_up.is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, says) in [
            (
                "acr_values = []\n",
                "route[0].acr_values: must list at least one value",
            ),
            (
                "acr_values = [\"a b\"]\n",
                "route[0].acr_values[0]: `a b` is not an acr value",
            ),
            (
                "acr_values = [\"ok\", \"q\\\"uote\"]\n",
                "route[0].acr_values[1]",
            ),
            (
                "max_age = \"soon\"\n",
                "route[0].max_age: `soon` is not a duration",
            ),
            (
                "max_age = \"1500ms\"\n",
                "route[0].max_age: `1500ms` must be whole seconds",
            ),
        ] {
            let errs = error_text(&format!("{BASE}{extra}"));
            assert!(
                errs.contains(says),
                "{extra}: expected …{says}…, got {errs}"
            );
        }
        let public = BASE.replace(
            "scopes = [\"api\"]",
            "auth = \"none\"\nacr_values = [\"phr\"]\nmax_age = \"1m\"",
        );
        let errs = error_text(&public);
        assert!(
            errs.contains("route[0].acr_values: a public route"),
            "{errs}"
        );
        assert!(errs.contains("route[0].max_age: a public route"), "{errs}");
    }
}
