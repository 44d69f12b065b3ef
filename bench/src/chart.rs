//! The PNG chart for the README: four bar panels drawn from the summary rows (login
//! throughput ratio, added latency, PUT → ack latency, RSS per idle session), with their
//! targets as dashed lines. Text needs DejaVuSans at run time; without it, bars only.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Row;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1400, 780);
const BLUE: RGBColor = RGBColor(66, 110, 180);
const ORANGE: RGBColor = RGBColor(230, 140, 50);
const GREY: RGBColor = RGBColor(150, 150, 150);
const LIGHT_BLUE: RGBColor = RGBColor(140, 175, 225);
const RED: RGBColor = RGBColor(200, 40, 40);

/// One panel: groups along x, one bar per series in each group.
struct Panel {
    title: &'static str,
    groups: Vec<String>,
    series: Vec<(&'static str, RGBColor, Vec<f64>)>,
    target: Option<(f64, &'static str)>,
}

/// Draws the chart; false when it had to do without text (no font).
pub fn draw(rows: &[Row], png: &Path) -> Result<bool> {
    let labels = register_font();
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((2, 3));
    for (area, panel) in areas.iter().zip(panels(rows)) {
        if !panel.groups.is_empty() {
            draw_panel(area, &panel, labels)?;
        }
    }
    root.present().map_err(err)?;
    Ok(labels)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("chart: {e:?}")
}

fn register_font() -> bool {
    let Ok(bytes) = std::fs::read(FONT) else { return false };
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
}

/// "1 login · scripted · warm, 16 clients" → "warm"; "…nginx mail, 1 client" → "nginx 1c".
fn short(scenario: &str) -> String {
    let tail = scenario.rsplit(" · ").next().unwrap_or(scenario);
    let tail = tail.split(", ").next().unwrap_or(tail).replace(" mail", "").replace(" TCP", "");
    if scenario.ends_with(", 1 client") {
        format!("{tail} 1c")
    } else {
        tail
    }
}

fn find_row<'a>(rows: &'a [Row], scenario: &str, metric: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.scenario == scenario && r.metric == metric)
}

fn find(rows: &[Row], scenario: &str, metric: &str) -> Option<f64> {
    find_row(rows, scenario, metric).map(|r| r.value)
}

/// Series with at least one value (a peer that is not installed has none).
fn keep_drawn(series: Vec<(&'static str, RGBColor, Vec<f64>)>) -> Vec<(&'static str, RGBColor, Vec<f64>)> {
    series.into_iter().filter(|s| s.2.iter().any(|v| v.is_finite())).collect()
}

fn panels(rows: &[Row]) -> Vec<Panel> {
    let backends: Vec<&str> = ["scripted", "Dovecot"]
        .into_iter()
        .filter(|b| rows.iter().any(|r| r.scenario.starts_with(&format!("1 login · {b} · warm"))))
        .collect();
    let login_ratio = |what: &str| -> Vec<f64> {
        let ratio = |b: &&str| {
            let prefix = format!("1 login · {b} · {what}, ");
            rows.iter()
                .find(|r| r.scenario.starts_with(&prefix) && r.metric == "login cycles/s")
                .map_or(f64::NAN, |r| r.ratio)
        };
        backends.iter().map(ratio).collect()
    };
    let throughput = Panel {
        title: "Login cycles/s, proxy / direct (16 clients)",
        groups: backends.iter().map(|b| b.to_string()).collect(),
        series: keep_drawn(vec![
            ("Switchyard warm", BLUE, login_ratio("warm")),
            ("Switchyard cold", LIGHT_BLUE, login_ratio("cold")),
            ("nginx mail", ORANGE, login_ratio("nginx mail")),
            ("HAProxy TCP", GREY, login_ratio("HAProxy TCP")),
        ]),
        target: Some((0.85, "target 0.85× (Dovecot)")),
    };
    let added: Vec<&Row> =
        rows.iter().filter(|r| r.metric == "added p50 ms" && r.scenario.contains("scripted")).collect();
    let latency = Panel {
        title: "Added ms per login vs direct, scripted (1c: 1 client)",
        groups: added.iter().map(|r| short(&r.scenario)).collect(),
        series: vec![
            ("p50", BLUE, added.iter().map(|r| r.value).collect()),
            ("p99", ORANGE, added.iter().map(|r| find(rows, &r.scenario, "added p99 ms").unwrap_or(0.0)).collect()),
        ],
        target: Some((0.5, "p50 target 0.5 ms")),
    };
    let bulk: Vec<&Row> = rows.iter().filter(|r| r.metric == "MB/s, 1 client").collect();
    // A peer's MB/s over direct: its row holds Switchyard vs the peer, the first row direct.
    let peer_ratio = |peer: &str| -> Vec<f64> {
        let ratio = |r: &&Row| {
            find_row(rows, &r.scenario, &format!("MB/s vs {peer}")).map_or(f64::NAN, |p| p.baseline / r.baseline)
        };
        bulk.iter().map(ratio).collect()
    };
    let transfer = Panel {
        title: "Bulk FETCH / LMTP MB/s, proxy / direct (1 client)",
        groups: bulk.iter().map(|r| bulk_group(&r.scenario)).collect(),
        series: keep_drawn(vec![
            ("Switchyard", BLUE, bulk.iter().map(|r| r.ratio).collect()),
            ("nginx mail", ORANGE, peer_ratio("nginx mail")),
            ("HAProxy TCP", GREY, peer_ratio("HAProxy TCP")),
        ]),
        target: Some((0.95, "target 0.95× (scripted)")),
    };
    let resolve: Vec<&Row> = rows.iter().filter(|r| r.metric == "Resolve per control-plane CPU-second").collect();
    let lookups = Panel {
        title: "Resolve per control-plane CPU-second",
        groups: resolve.iter().map(|_| "Resolve".to_string()).collect(),
        series: vec![("per CPU-s", BLUE, resolve.iter().map(|r| r.value).collect())],
        target: Some((20_000.0, "target 20,000")),
    };
    let puts: Vec<&Row> = rows.iter().filter(|r| r.metric == "PUT → every ack, p50 ms").collect();
    let mut put_groups = Vec::new();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    if let Some(first) = puts.first() {
        put_groups.push("0 nodes".to_string());
        p50.push(first.baseline);
        p99.push(
            rows.iter()
                .find(|r| r.scenario == first.scenario && r.metric.ends_with("p99 ms") && r.metric.starts_with("PUT"))
                .map_or(0.0, |r| r.baseline),
        );
    }
    for r in &puts {
        put_groups.push(r.scenario.trim_start_matches("5 control plane · ").to_string());
        p50.push(r.value);
        p99.push(find(rows, &r.scenario, "PUT → every ack, p99 ms").unwrap_or(0.0));
    }
    let control = Panel {
        title: "PUT /mappings → every node acked (ms)",
        groups: put_groups,
        series: vec![("p50", BLUE, p50), ("p99", ORANGE, p99)],
        target: Some((100.0, "p99 target at 100 nodes")),
    };
    let idle: Vec<&Row> = rows.iter().filter(|r| r.metric == "node RSS KiB per session").collect();
    let memory = Panel {
        title: "RSS KiB per idle IMAP session",
        groups: idle
            .iter()
            .flat_map(|_| ["node (2 sockets)".to_string(), "bench backend (1 socket)".to_string()])
            .collect(),
        series: vec![("KiB", BLUE, idle.iter().flat_map(|r| [r.value, r.baseline]).collect())],
        target: Some((16.0, "target 16 KiB")),
    };
    vec![throughput, latency, transfer, memory, control, lookups]
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, p: &Panel, labels: bool) -> Result<()> {
    let n = p.groups.len();
    let values = p.series.iter().flat_map(|s| s.2.iter().copied()).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Headroom for the value labels and the legend box (one line per series and target).
    let entries = p.series.len() + usize::from(p.target.is_some());
    let hi = hi.max(p.target.map_or(0.0, |t| t.0)) * (1.25 + 0.15 * entries as f64) + 1e-9;
    let lo = if lo < 0.0 { lo * 1.2 } else { 0.0 };
    let mut builder = ChartBuilder::on(area);
    builder.margin(12).x_label_area_size(if labels { 40 } else { 0 }).y_label_area_size(if labels { 50 } else { 0 });
    if labels {
        builder.caption(p.title, ("sans-serif", 18));
    }
    let mut chart = builder.build_cartesian_2d(0.0..n as f64, lo..hi).map_err(err)?;
    if labels {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(0)
            .y_label_formatter(&|v| fmt_bar(*v))
            .y_label_style(("sans-serif", 13))
            .draw()
            .map_err(err)?;
        // Group names centred under their bars, in pixels: the x axis is continuous.
        let style = ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
        let (bx, by) = area.get_base_pixel();
        for (i, group) in p.groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, lo));
            let (px, py) = (px - bx, py - by);
            area.draw(&Text::new(group.clone(), (px, py + 6), style.clone())).map_err(err)?;
        }
    }
    let width = 0.7 / p.series.len() as f64;
    for (s, (name, color, values)) in p.series.iter().enumerate() {
        let bars = values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
            let x0 = i as f64 + 0.15 + s as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.95, v)], color.filled())
        });
        let drawn = chart.draw_series(bars).map_err(err)?;
        if labels && p.series.len() > 1 {
            let color = *color;
            drawn.label(*name).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        if labels {
            let texts = values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
                let x = i as f64 + 0.15 + (s as f64 + 0.5) * width;
                Text::new(
                    fmt_bar(v),
                    (x, v.max(0.0)),
                    ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            });
            chart.draw_series(texts).map_err(err)?;
        }
    }
    if let Some((y, name)) = p.target {
        let dashes = (0..n * 8).step_by(2).map(|k| {
            let x = k as f64 / 8.0;
            PathElement::new(vec![(x, y), (x + 0.125, y)], RED.stroke_width(2))
        });
        let drawn = chart.draw_series(dashes).map_err(err)?;
        if labels {
            drawn.label(name).legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RED.stroke_width(2)));
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(GREY)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn fmt_bar(v: f64) -> String {
    crate::report::fmt_num(v)
}

/// "2 bulk LMTP 20 × 5 MB · Dovecot" → "LMTP Dovecot".
fn bulk_group(scenario: &str) -> String {
    let kind = scenario.split_whitespace().nth(2).unwrap_or_default();
    let backend = scenario.rsplit(" · ").next().unwrap_or_default();
    format!("{kind} {backend}")
}
