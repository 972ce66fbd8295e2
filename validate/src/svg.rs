//! A line chart of memory over time, one line per series, as a standalone SVG 1.1 document
//! (<https://www.w3.org/TR/SVG11/>): axes with ticks, a legend, and one polyline per run.

use std::fmt::Write as _;

/// One line: a name for the legend and (seconds, MiB) points.
pub struct Series {
    pub name: String,
    /// Which legend entry and colour this line belongs to (several runs share one).
    pub group: usize,
    pub points: Vec<(f64, f64)>,
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// Render the chart. `groups` names the legend entries (indexed by `Series::group`).
pub fn chart(title: &str, y_label: &str, groups: &[String], series: &[Series]) -> String {
    chart_xy(title, "seconds since qemu started", y_label, groups, series)
}

/// As [`chart`], with another x axis (a density sweep's guest count).
pub fn chart_xy(
    title: &str,
    x_label: &str,
    y_label: &str,
    groups: &[String],
    series: &[Series],
) -> String {
    let (w, h) = (860.0, 480.0);
    let (left, right, top, bottom) = (70.0, 190.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let pts = series.iter().flat_map(|s| s.points.iter());
    let x_max = pts.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let y_max = pts.map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let xs = tick_step(x_max, 8.0);
    let ys = tick_step(y_max, 6.0);
    let x_top = (x_max / xs).ceil() * xs;
    let y_top = (y_max / ys).ceil() * ys;
    let px = |x: f64| left + x / x_top * pw;
    let py = |y: f64| top + ph - y / y_top * ph;

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        left + pw / 2.0,
        esc(title)
    );
    // Grid and ticks.
    let mut y = 0.0;
    while y <= y_top + ys / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{y}</text>"##,
            py(y),
            left + pw,
            left - 6.0,
            py(y) + 4.0
        );
        y += ys;
    }
    let mut x = 0.0;
    while x <= x_top + xs / 2.0 {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{x}</text>"##,
            px(x),
            top + ph,
            top + ph + 16.0
        );
        x += xs;
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        esc(y_label)
    );
    for se in series {
        if se.points.is_empty() {
            continue;
        }
        let color = COLORS[se.group % COLORS.len()];
        let mut p = String::new();
        for &(x, y) in &se.points {
            let _ = write!(p, "{:.1},{:.1} ", px(x), py(y));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" stroke-opacity="0.8" points="{}"><title>{}</title></polyline>"#,
            p.trim_end(),
            esc(&se.name)
        );
    }
    for (i, g) in groups.iter().enumerate() {
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            COLORS[i % COLORS.len()],
            lx + 28.0,
            ly + 4.0,
            esc(g)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_svg_with_one_line_per_series() {
        let groups = vec!["baseline".to_string(), "min<&>".to_string()];
        let series = vec![
            Series {
                name: "baseline #1".into(),
                group: 0,
                points: vec![(0.0, 10.0), (1.0, 150.0), (4.2, 185.5)],
            },
            Series {
                name: "min<&> #1".into(),
                group: 1,
                points: vec![(0.0, 8.0), (3.9, 90.0)],
            },
            Series {
                name: "empty".into(),
                group: 1,
                points: vec![],
            },
        ];
        let svg = chart("RSS \"over\" time", "host RSS (MiB)", &groups, &series);
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let lines: Vec<_> = root
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .collect();
        assert_eq!(lines.len(), 2);
        // Every point is inside the plot area.
        for l in &lines {
            for p in l.attribute("points").unwrap().split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (70.0..=670.0).contains(&x) && (40.0..=430.0).contains(&y),
                    "{p}"
                );
            }
        }
        let texts: Vec<_> = root.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"min<&>"));
        assert!(texts.contains(&"RSS \"over\" time"));
    }

    #[test]
    fn nice_ticks() {
        assert_eq!(tick_step(190.0, 6.0), 50.0);
        assert_eq!(tick_step(8.0, 8.0), 1.0);
        assert_eq!(tick_step(13.0, 8.0), 2.0);
    }
}
