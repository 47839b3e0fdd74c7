//! The chart: one horizontal bar per row (its median req/s), labelled with the ratio to nginx
//! and the CPU µs per request, peers and tollgate in two colours, and a gateway that accepted a
//! bad token in red with what it accepted. Written as SVG by hand: a few rectangles and texts
//! need no plotting crate.

use std::fmt::Write as _;

use crate::report::{self, Context, RowResult, Verdict};

const WIDTH: f64 = 1240.0;
/// Left column: the row labels.
const LABEL_W: f64 = 440.0;
/// The bars' full scale.
const BAR_W: f64 = 420.0;
const ROW_H: f64 = 28.0;
const BAR_H: f64 = 18.0;
const TOP: f64 = 64.0;
const PEER: &str = "#8da0cb";
const TOLLGATE: &str = "#fc8d62";
const UNSAFE: &str = "#d7301f";

/// The chart of `results` as an SVG document.
pub(crate) fn svg(results: &[RowResult], ctx: &Context, subtitle: &str) -> String {
    let max = results
        .iter()
        .filter_map(|r| r.medians.as_ref().map(|m| m.rps))
        .fold(0.0, f64::max);
    let step = nice_step(max / 5.0);
    let full = (max / step).ceil().max(1.0) * step;
    let x = |rps: f64| LABEL_W + BAR_W * rps / full;
    let height = TOP + ROW_H * results.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">req/s per gateway and route (median over the rounds); label: ratio to nginx plain proxy, CPU µs per request</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="42" fill="#555">{}</text>"##,
        escape(subtitle)
    );
    // The scale: a gridline and a figure every `step` req/s.
    let bottom = TOP + ROW_H * results.len() as f64;
    let mut tick = 0.0;
    while tick <= full + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle" fill="#555">{4}</text>"##,
            x(tick),
            TOP - 6.0,
            bottom,
            bottom + 16.0,
            report::thousands(tick)
        );
        tick += step;
    }
    for (i, r) in results.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let mid = y + ROW_H / 2.0 + 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{mid:.1}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            escape(&r.label(ctx))
        );
        let Some(m) = &r.medians else {
            let why = if r.skipped.is_some() {
                "skipped (see notes)"
            } else {
                "failed (see notes)"
            };
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{mid:.1}" fill="#888">{why}</text>"##,
                LABEL_W + 4.0
            );
            continue;
        };
        let verdict = report::verdict(ctx, r.row);
        let colour = match (&verdict, r.row.gateway.is_tollgate()) {
            (Verdict::Accepts(_), _) => UNSAFE,
            (_, true) => TOLLGATE,
            (_, false) => PEER,
        };
        let _ = writeln!(
            s,
            r#"<rect x="{LABEL_W}" y="{:.1}" width="{:.1}" height="{BAR_H}" fill="{colour}"/>"#,
            y + (ROW_H - BAR_H) / 2.0,
            (x(m.rps) - LABEL_W).max(1.0)
        );
        let ratio =
            report::ratio(results, m).map_or(String::new(), |q| format!(" · {q:.2}× nginx"));
        let mut text = format!(
            "{} req/s{ratio} · {:.1} µs/req",
            report::thousands(m.rps),
            m.cpu_us
        );
        if let Verdict::Accepts(cases) = &verdict {
            let _ = write!(text, " · ✗ accepts {}", Verdict::names(cases));
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{mid:.1}" fill="{}">{}</text>"#,
            x(m.rps) + 6.0,
            if colour == UNSAFE { UNSAFE } else { "black" },
            escape(&text)
        );
    }
    let legend_y = bottom + 34.0;
    let _ = writeln!(
        s,
        r#"<rect x="10" y="{:.1}" width="12" height="12" fill="{PEER}"/><text x="28" y="{legend_y:.1}">peer</text><rect x="80" y="{0:.1}" width="12" height="12" fill="{TOLLGATE}"/><text x="98" y="{legend_y:.1}">tollgate</text><rect x="170" y="{0:.1}" width="12" height="12" fill="{UNSAFE}"/><text x="188" y="{legend_y:.1}">accepted a bad token in the correctness matrix</text>"#,
        legend_y - 10.0
    );
    s.push_str("</svg>\n");
    s
}

/// A round step for the scale: 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power)
}

/// Text made safe inside an SVG element.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
