//! The floors of ARCHITECTURE.md, checked against the code: every `crate::` path in a module of
//! `src/` (test code aside) names a module on a lower floor.

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

/// The README's table of contents lists every section, in order, and nothing else.
#[test]
fn the_readme_contents_list_every_section() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let (_, rest) = readme
        .split_once("## Contents\n")
        .expect("a Contents section");
    let listed: Vec<&str> = rest
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("- ["))
        .filter_map(|l| l.split_once("](").map(|(title, _)| title))
        .collect();
    let sections: Vec<&str> = rest.lines().filter_map(|l| l.strip_prefix("## ")).collect();
    assert_eq!(
        listed, sections,
        "README.md: the Contents and the ## sections differ"
    );
}
