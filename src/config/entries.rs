//! Environment overrides of `[[issuer]]`, `[[upstream]]` and `[[route]]` entries, addressed by
//! their `id`: `TOLLGATE__ROUTE__<id>__SCOPES='["api", "erp:write"]'` sets the `scopes` of the
//! route whose id is `<id>`. figment's own environment layer addresses tables by key, and these
//! are arrays: this layer finds the entry and hands figment the whole array, changed.
//!
//! An id is matched without case, and `_` in the variable stands for `-` in the id (a shell
//! cannot export a name with `-`): `TOLLGATE__ROUTE__ERP_READ__SCOPES` is route `erp-read`.
//! A variable whose id matches no entry is an error naming it.

use figment::value::{Dict, Value};
use figment::Figment;

use super::{ConfigErrors, ENV_PREFIX};

/// The table arrays whose entries an override can address, as they appear in variable names.
const ARRAYS: [&str; 3] = ["issuer", "upstream", "route"];

/// One override: the array, the entry's id as written, the key path inside it, the value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Override {
    var: String,
    array: &'static str,
    id: String,
    path: Vec<String>,
    value: String,
}

/// The entry overrides among `vars`: `TOLLGATE__<ARRAY>__<id>__<key>[__<key>…]` whose id is not
/// a number (a number is figment's own index form, which it handles).
pub(super) fn overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    vars.into_iter()
        .filter_map(|(var, value)| {
            let rest = var.strip_prefix(ENV_PREFIX)?;
            let mut parts = rest.split("__");
            let array = parts.next()?.to_ascii_lowercase();
            let array = ARRAYS.into_iter().find(|a| *a == array)?;
            let id = parts.next()?.to_owned();
            let path: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
            if id.is_empty() || id.parse::<usize>().is_ok() || path.is_empty() {
                return None;
            }
            Some(Override {
                var,
                array,
                id,
                path,
                value,
            })
        })
        .collect()
}

/// True for a variable [`overrides`] takes: figment's environment layer must leave it alone.
pub(super) fn is_entry_override(key: &str) -> bool {
    overrides([(format!("{ENV_PREFIX}{key}"), String::new())]).len() == 1
}

/// `figment` with each overridden array replaced by its changed copy. Route overrides whose id
/// is not in this file are returned when `routes_elsewhere` (a route file may hold the route:
/// [`apply`] them to it); any other unknown id is an error.
pub(super) fn apply(
    figment: Figment,
    list: &[Override],
    routes_elsewhere: bool,
) -> Result<(Figment, Vec<Override>), ConfigErrors> {
    let mut figment = figment;
    let mut left = Vec::new();
    for array in ARRAYS {
        let mine: Vec<&Override> = list.iter().filter(|o| o.array == array).collect();
        if mine.is_empty() {
            continue;
        }
        let mut entries: Vec<Value> = figment.extract_inner(array).unwrap_or_default();
        let mut changed = false;
        for o in mine {
            let Some(entry) = entries
                .iter_mut()
                .find(|e| id_of(e).is_some_and(|id| same_id(id, &o.id)))
            else {
                if array == "route" && routes_elsewhere {
                    left.push(o.clone());
                    continue;
                }
                return Err(ConfigErrors::one(
                    format!("environment ({ENV_PREFIX}*)"),
                    o.var.clone(),
                    format!("no [[{array}]] has the id `{}`", o.id),
                ));
            };
            changed = true;
            set(
                entry,
                &o.path,
                o.value
                    .parse()
                    .unwrap_or_else(|_| Value::from(o.value.clone())),
            )
            .map_err(|why| {
                ConfigErrors::one(format!("environment ({ENV_PREFIX}*)"), o.var.clone(), why)
            })?;
        }
        if changed {
            figment = figment.merge(figment::providers::Serialized::default(array, entries));
        }
    }
    Ok((figment, left))
}

fn id_of(entry: &Value) -> Option<&str> {
    entry.as_dict()?.get("id")?.as_str()
}

fn same_id(id: &str, written: &str) -> bool {
    id.len() == written.len()
        && id
            .bytes()
            .zip(written.bytes())
            .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'-' && b == b'_'))
}

/// Sets `path` (a key, or nested keys) inside the entry table to `value`.
fn set(entry: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Value::Dict(_, dict) = entry else {
        return Err("the entry is not a table".to_owned());
    };
    let (last, parents) = path.split_last().ok_or("no key")?;
    let mut table: &mut Dict = dict;
    for key in parents {
        let next = table
            .entry(key.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        table = match next {
            Value::Dict(_, d) => d,
            _ => return Err(format!("`{key}` is not a table")),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn entry_overrides_are_told_from_figments_own() {
        let found = overrides(vars(&[
            ("TOLLGATE__ROUTE__ERP_READ__SCOPES", "[\"a\"]"),
            (
                "TOLLGATE__UPSTREAM__erp__SESSION__MAX_UPSTREAM_SESSIONS",
                "4",
            ),
            ("TOLLGATE__ROUTE__0__SCOPES", "[\"b\"]"),
            ("TOLLGATE__SERVER__LISTEN", "0.0.0.0:1"),
            ("TOLLGATE__ROUTE__X", "1"),
            ("OTHER", "1"),
        ]));
        let seen: Vec<(&str, &str, Vec<&str>)> = found
            .iter()
            .map(|o| {
                (
                    o.array,
                    o.id.as_str(),
                    o.path.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("route", "ERP_READ", vec!["scopes"]),
                ("upstream", "erp", vec!["session", "max_upstream_sessions"]),
            ]
        );
        assert!(is_entry_override("ROUTE__ERP_READ__SCOPES"));
        assert!(!is_entry_override("ROUTE__0__SCOPES"));
        assert!(!is_entry_override("SERVER__LISTEN"));
    }

    #[test]
    fn ids_match_without_case_and_with_underscores_for_dashes() {
        assert!(same_id("erp-read", "ERP_READ"));
        assert!(same_id("erp-read", "erp-read"));
        assert!(!same_id("erp-read", "erp-rea"));
        assert!(!same_id("erp_read", "erp-read"));
    }
}
