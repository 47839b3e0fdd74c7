//! The floors of ARCHITECTURE.md, checked against the code: every `crate::` path in a module of
//! `src/` (test code aside) names a module on a lower floor. Also the user documentation
//! (README.md and docs/): its tables of contents, its links, the `config/` files it names, its
//! production configuration and the metrics page, against the files and the code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of the crate and its floor (ARCHITECTURE.md, "Floors").
const FLOORS: &[(&str, u8)] = &[
    ("clock", 0),
    ("net", 0),
    ("pem", 0),
    ("hop_by_hop", 0),
    ("framing", 0),
    ("secret", 0),
    ("runtime", 0),
    ("metrics", 0),
    ("metadata", 0),
    ("limits", 0),
    ("upgrade", 0),
    ("telemetry", 0),
    ("auth", 1),
    ("policy", 2),
    ("config", 3),
    ("fleet", 4),
    ("proxy", 4),
    ("logging", 4),
    ("session", 5),
    ("error", 6),
    ("gateway", 7),
    ("server", 8),
    ("reload", 8),
    ("demo", 9),
    ("fuzzing", 9),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments and its test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate modules a piece of code names: `crate::x` and `use crate::{x, y::…}`.
fn named(code: &str) -> Vec<String> {
    let path = regex::Regex::new(r"crate::([a-z_]+)").unwrap();
    let group = regex::Regex::new(r"(?s)use crate::\{(.*?)\};").unwrap();
    let head = regex::Regex::new(r"(?:^|[{,])[ \t\r\n]*([a-z_]+)(?-u:\b)").unwrap();
    let mut out: Vec<String> = path.captures_iter(code).map(|c| c[1].to_owned()).collect();
    for g in group.captures_iter(code) {
        out.extend(head.captures_iter(&g[1]).map(|c| c[1].to_owned()));
    }
    out
}

#[test]
fn every_import_runs_down_the_floors() {
    let floors: BTreeMap<&str, u8> = FLOORS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut unplaced = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let name = file.file_name().unwrap().to_string_lossy();
        if ["lib.rs", "main.rs"].contains(&rel.as_str())
            || ["tests.rs", "testing.rs", "harness.rs"].contains(&name.as_ref())
        {
            continue;
        }
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs");
        let Some(&floor) = floors.get(module) else {
            unplaced.push(module.to_owned());
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for other in named(&code(&text)) {
            match floors.get(other.as_str()) {
                Some(&f) if other != module && f >= floor => {
                    wrong.push(format!("{rel} (floor {floor}) imports {other} (floor {f})"))
                }
                _ => {}
            }
        }
    }
    unplaced.dedup();
    assert!(
        unplaced.is_empty(),
        "modules without a floor in ARCHITECTURE.md: {unplaced:?}"
    );
    assert!(
        wrong.is_empty(),
        "imports running up or across a floor:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_imports() {
    let found = named(&code(
        "use crate::auth::X;\nuse crate::{gateway::Y, session};\n// crate::demo\nlet a = crate::proxy::full(x);\n#[cfg(test)]\nmod tests {\n use crate::server;\n}",
    ));
    assert_eq!(found, ["auth", "proxy", "gateway", "session"]);
}

// The user documentation: README.md and docs/*.md, checked against themselves and the code.

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page of docs/, as (path from the repository's root, text).
fn user_pages() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("a docs/ folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(repo().join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

/// The pages whose links are checked: the user pages and the other guides of the repository.
fn linked_pages() -> Vec<(String, String)> {
    let mut pages = user_pages();
    for n in ["ARCHITECTURE.md", "benches/README.md", "deploy/README.md"] {
        pages.push((
            n.to_owned(),
            std::fs::read_to_string(repo().join(n)).unwrap(),
        ));
    }
    pages
}

/// The lines of a Markdown text outside its fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped but for `-` and `_`,
/// spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a page's headings, a repeated one with GitHub's `-1`, `-2`, … suffix.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let Some(title) = line.get(hashes..).and_then(|t| t.strip_prefix(' ')) else {
            continue;
        };
        if !(1..=6).contains(&hashes) {
            continue;
        }
        let base = anchor(title);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(anchor("`[upstream.session]`"), "upstreamsession");
    assert_eq!(
        anchor("Protected resource metadata (RFC 9728)"),
        "protected-resource-metadata-rfc-9728"
    );
    assert_eq!(
        anchor("tollgate's own scenarios"),
        "tollgates-own-scenarios"
    );
    assert_eq!(
        anchors("# A\n## B\n```\n## not a heading\n```\n### B\n"),
        ["a", "b", "b-1"]
    );
}

/// Each page's table of contents (README.md and every page of docs/) lists its `##` sections,
/// in order, and nothing else; a docs page also starts with its `# Title`.
#[test]
fn every_page_has_contents_that_list_its_sections() {
    let mut wrong = Vec::new();
    for (name, text) in user_pages() {
        if name.starts_with("docs/") && !text.starts_with("# ") {
            wrong.push(format!("{name}: does not start with a `# Title`"));
        }
        let Some((_, rest)) = text.split_once("\n## Contents\n") else {
            wrong.push(format!("{name}: no `## Contents` section"));
            continue;
        };
        let listed: Vec<&str> = rest
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("- ["))
            .filter_map(|l| l.split_once("](").map(|(title, _)| title))
            .collect();
        let sections: Vec<&str> = prose(rest)
            .into_iter()
            .filter_map(|l| l.strip_prefix("## "))
            .collect();
        if listed != sections {
            wrong.push(format!(
                "{name}: the Contents list {listed:?}, the ## sections are {sections:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every relative link of the documentation (`](path)`, `](path#anchor)`, `](#anchor)`) names a
/// file that exists and, with an anchor, a heading of that file.
#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let code = regex::Regex::new("`[^`]*`").unwrap();
    let link = regex::Regex::new(r"\]\(([^()<> \t]+)\)").unwrap();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (name, text) in linked_pages() {
        let dir = repo().join(&name).parent().unwrap().to_path_buf();
        for line in prose(&text) {
            let line = code.replace_all(line, "");
            for c in link.captures_iter(&line) {
                let target = &c[1];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
                let file = if path.is_empty() {
                    repo().join(&name)
                } else {
                    dir.join(path)
                };
                if !file.exists() {
                    wrong.push(format!("{name}: {target}: no such file"));
                    continue;
                }
                if fragment.is_empty() {
                    continue;
                }
                let Ok(other) = std::fs::read_to_string(&file) else {
                    wrong.push(format!(
                        "{name}: {target}: an anchor into what is not a page"
                    ));
                    continue;
                };
                if !anchors(&other).iter().any(|a| a == fragment) {
                    wrong.push(format!("{name}: {target}: no heading makes #{fragment}"));
                }
            }
        }
    }
    assert!(checked >= 50, "only {checked} links found");
    assert!(wrong.is_empty(), "broken links:\n{}", wrong.join("\n"));
}

/// Every `config/….toml` the documentation names exists (and so is checked by
/// `cli::every_file_in_config_passes_check`).
#[test]
fn every_config_file_the_documentation_names_exists() {
    let named = regex::Regex::new(r"(?:^|[^A-Za-z0-9_./-])(config/[A-Za-z0-9_.-]+\.toml)").unwrap();
    let mut missing = Vec::new();
    let mut found = 0;
    for (name, text) in linked_pages() {
        for c in named.captures_iter(&text) {
            found += 1;
            if !repo().join(&c[1]).is_file() {
                missing.push(format!("{name}: {}", &c[1]));
            }
        }
    }
    assert!(found >= 5, "only {found} config/ files named");
    assert!(missing.is_empty(), "named but missing: {missing:?}");
}

/// The README's production configuration is `config/production.toml`, word for word, so the
/// test that checks every file in `config/` checks it too.
#[test]
fn the_readmes_production_configuration_is_the_checked_file() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let file = std::fs::read_to_string(repo().join("config/production.toml")).unwrap();
    assert!(
        readme.contains(&format!("```toml\n{file}```\n")),
        "README.md's ```toml block differs from config/production.toml"
    );
}

/// docs/metrics.md lists every metric family src/metrics.rs names, and no page of the
/// documentation names another.
#[test]
fn the_metrics_page_lists_exactly_the_metric_families() {
    let source = std::fs::read_to_string(repo().join("src/metrics.rs")).unwrap();
    let constant =
        regex::Regex::new(r#"pub const [A-Z0-9_]+: &str =[ \t\r\n]*"(tollgate_[a-z0-9_]+)""#)
            .unwrap();
    let families: Vec<String> = constant
        .captures_iter(&source)
        .map(|c| c[1].to_owned())
        .collect();
    assert!(
        families.len() >= 30,
        "only {} metric constants",
        families.len()
    );
    let page = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let unlisted: Vec<&String> = families
        .iter()
        .filter(|f| !page.contains(&format!("`{f}`")))
        .collect();
    assert!(
        unlisted.is_empty(),
        "docs/metrics.md does not list {unlisted:?}"
    );
    // Every other `tollgate_…` name the documentation gives is a metric family (or one of its
    // histogram series), but for the handle cookie's default name.
    let mentioned = regex::Regex::new(r"tollgate_[a-z0-9_]+").unwrap();
    let known = |name: &str| {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|f| families.iter().any(|x| x == f))
            .unwrap_or(name);
        families.iter().any(|x| x == family) || name == "tollgate_session"
    };
    let mut unknown = Vec::new();
    for (name, text) in user_pages() {
        for m in mentioned.find_iter(&text) {
            if !known(m.as_str()) {
                unknown.push(format!("{name}: {}", m.as_str()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the documentation names metrics that src/metrics.rs does not: {unknown:?}"
    );
}
