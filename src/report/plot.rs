//! The plots of `kvxfer report`, as PNG and SVG: bandwidth and latency by
//! prompt length, a latency histogram per prompt length, with emulated
//! prefill the time to first token it adds, and under load the latency
//! against the offered rate and the KV held over time. Text is drawn
//! with a bundled DejaVu Sans, so no system font (or fontconfig) is needed.

use super::compare::Series;
use crate::error::{Error, Result};
use crate::figures::decode_histogram;
use plotters::coord::combinators::{BindKeyPoints, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (1280, 760);
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok =
        *DONE.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    ok.then_some(()).ok_or_else(|| Error::run("the bundled font does not load"))
}

fn plot_error(e: impl std::fmt::Debug) -> Error {
    Error::run(format!("drawing a plot: {e:?}"))
}

/// A figure that draws itself on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

/// Draws one figure into `NAME.png` and `NAME.svg` under `dir`; returns the
/// paths. `stamp`, in the lower left corner, names what every series of it
/// moved (the model and TP), where one thing was.
fn both(dir: &Path, name: &str, figure: &impl Figure, stamp: &str) -> Result<Vec<PathBuf>> {
    register_font()?;
    let (png, svg) = (dir.join(format!("{name}.png")), dir.join(format!("{name}.svg")));
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw_with_stamp(&root, figure, stamp)?;
        root.present().map_err(plot_error)?;
    }
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw_with_stamp(&root, figure, stamp)?;
        root.present().map_err(plot_error)?;
    }
    Ok(vec![png, svg])
}

/// The figure above a strip of its own for the stamp, so that the stamp
/// never prints over a panel's labels.
fn draw_with_stamp<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &impl Figure,
    stamp: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    if stamp.is_empty() {
        return figure.draw(root);
    }
    let (body, strip) = root.split_vertically(SIZE.1 - 22);
    figure.draw(&body)?;
    strip
        .draw(&Text::new(
            stamp.to_string(),
            (10, 2),
            ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(plot_error)
}

/// Axis labels: whole numbers without decimals, others with a few digits.
fn number(v: &f64) -> String {
    match v.fract() == 0.0 || v.abs() >= 100.0 {
        true => format!("{v:.0}"),
        false => format!("{}", (v * 1000.0).round() / 1000.0),
    }
}

/// A prompt length as an operator writes it: 1k, 8k, 128k, or 128, 1000.
fn tokens_label(v: &f64) -> String {
    let t = v.round() as u64;
    match t >= 1024 && t.is_multiple_of(1024) {
        true => format!("{}k", t / 1024),
        false => number(v),
    }
}

/// A time given in microseconds, in the unit that reads best: 500 us, 2 ms, 1.5 s.
fn human_us(v: &f64) -> String {
    match *v {
        v if v >= 1e6 => format!("{} s", number(&(v / 1e6))),
        v if v >= 1e3 => format!("{} ms", number(&(v / 1e3))),
        0.0 => "0".into(),
        v => format!("{} us", number(&v)),
    }
}

/// The values a log axis is ticked at: the distinct ones measured, in
/// order, less those that would print over their neighbour (closer than a
/// tenth of the axis's span, in log terms); the first and last stay.
fn ticks(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut t: Vec<f64> = values.filter(|v| *v > 0.0).collect();
    t.sort_by(f64::total_cmp);
    t.dedup();
    let (Some(&lo), Some(&hi)) = (t.first(), t.last()) else { return t };
    let gap = (hi / lo).ln() / 10.0;
    let mut kept: Vec<f64> = Vec::new();
    for (k, &v) in t.iter().enumerate() {
        let last = k + 1 == t.len();
        // The last value displaces a kept neighbour too close to it.
        while last && kept.len() > 1 && (v / kept[kept.len() - 1]).ln() < gap {
            kept.pop();
        }
        if kept.last().is_none_or(|&prev| last || (v / prev).ln() >= gap) {
            kept.push(v);
        }
    }
    kept
}

/// Round ticks of a log axis over `lo..hi`: 1-2-5 per decade where that
/// gives three or more, finer steps on a narrower axis, and on one narrower
/// still, four even steps, rounded.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let within = |steps: &[f64]| -> Vec<f64> {
        let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (first..=last)
            .flat_map(|d| steps.iter().map(move |s| s * 10f64.powi(d)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    for steps in [
        &[1.0][..],
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0],
        &[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ] {
        let t = within(steps);
        if t.len() >= 3 {
            return t;
        }
    }
    // Rounded to a unit under a fifth of the span, so that the four differ.
    let unit = 10f64.powf(((hi - lo) / 5.0).log10().floor());
    let round = |v: f64| (v / unit).round() * unit;
    let mut t: Vec<f64> = (1..=4).map(|k| round(lo * (hi / lo).powf(k as f64 / 5.0))).collect();
    t.dedup();
    t
}

/// Series `i`'s marker shape, in pixels around its point: circle, triangle,
/// square, diamond, triangle down, pentagon, so that series stay apart in
/// grey print and for colour-blind readers.
fn marker_shape(i: usize, (dx, dy): (i32, i32)) -> Vec<(i32, i32)> {
    let polygon = |n: usize, r: f64, turn: f64| -> Vec<(i32, i32)> {
        (0..n)
            .map(|k| {
                let a = turn + std::f64::consts::TAU * k as f64 / n as f64;
                ((r * a.cos()).round() as i32, (r * a.sin()).round() as i32)
            })
            .collect()
    };
    let up = -std::f64::consts::FRAC_PI_2;
    let shape = match i % 6 {
        0 => polygon(12, 5.5, 0.0),
        1 => polygon(3, 7.5, up),
        2 => polygon(4, 7.0, std::f64::consts::FRAC_PI_4),
        3 => polygon(4, 7.0, 0.0),
        4 => polygon(3, 7.5, -up),
        _ => polygon(5, 7.0, up),
    };
    shape.into_iter().map(|(x, y)| (x + dx, y + dy)).collect()
}

fn color(i: usize) -> RGBColor {
    // Colour-blind-safe (Okabe-Ito, with Tol's wine for black, which marks
    // the peaks), then Palette99.
    const OKABE_ITO: [RGBColor; 7] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(170, 51, 119),
    ];
    OKABE_ITO.get(i).copied().unwrap_or_else(|| {
        let c = Palette99::pick(i).to_rgba();
        RGBColor(c.0, c.1, c.2)
    })
}

fn token_range(series: &[Series]) -> (f64, f64) {
    let t = series.iter().flat_map(|s| s.points.iter().map(|p| p.prompt_tokens as f64));
    let (lo, hi) = t.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    (lo / 1.5, hi * 1.5)
}

/// GB/s by prompt length, a line per series, with each link's peak; on a
/// log axis when the figures span more than 20x (sockets next to NVLink).
struct Bandwidth<'a>(&'a [Series]);

impl Figure for Bandwidth<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let series = self.0;
        let x = token_range(series);
        let mut peaks: Vec<(String, f64)> = Vec::new();
        for p in series.iter().filter_map(|s| s.peak.clone()) {
            if !peaks.contains(&p) {
                peaks.push(p);
            }
        }
        let values =
            series.iter().flat_map(|s| s.points.iter().map(|p| p.gbps)).chain(peaks.iter().map(|p| p.1));
        let (lo, hi) = values.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let log = lo > 0.0 && hi / lo > 20.0;
        // The y axis in GB/s, or in log10 of GB/s.
        let y = move |gbps: f64| if log { gbps.max(1e-6).log10() } else { gbps };
        // Whole decades on a log axis, so that its ticks fall on 1, 10, 100.
        let range = if log { y(lo).floor()..y(hi * 1.05).ceil() } else { 0.0..(hi * 1.1).max(1e-3) };
        let decades = (range.end - range.start) as usize;
        let mut chart = ChartBuilder::on(root)
            .caption("KV transfer bandwidth by prompt length", ("sans-serif", 28))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(80)
            .build_cartesian_2d((x.0..x.1).log_scale().with_key_points(prompt_ticks(series)), range.clone())
            .map_err(plot_error)?;
        let y_desc = match log {
            true => "GB/s (1e9 bytes/s, log scale), mean over requests",
            false => "GB/s (1e9 bytes/s), mean over requests",
        };
        let fmt = move |v: &f64| if log { number(&10f64.powf(*v)) } else { number(v) };
        chart
            .configure_mesh()
            .x_desc("prompt length (tokens, log scale)")
            .y_desc(y_desc)
            .x_label_formatter(&tokens_label)
            .y_label_formatter(&fmt)
            .y_labels(if log { decades + 1 } else { 10 })
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(plot_error)?;
        for (k, (name, gbps)) in peaks.iter().enumerate() {
            let grey = RGBColor(60 * k as u8 % 180, 60 * k as u8 % 180, 60 * k as u8 % 180);
            let line = vec![(x.0, y(*gbps)), (x.1, y(*gbps))];
            chart
                .draw_series(DashedLineSeries::new(line, 10, 6, grey.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("theoretical peak: {name}, {gbps} GB/s"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2)));
        }
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.prompt_tokens as f64, y(p.gbps))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(3)))
                .map_err(plot_error)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(3))
                        + Polygon::new(marker_shape(i, (12, 0)), c.filled())
                });
            let markers =
                pts.iter().map(|&p| EmptyElement::at(p) + Polygon::new(marker_shape(i, (0, 0)), c.filled()));
            chart.draw_series(markers).map_err(plot_error)?;
        }
        let lines: Vec<Vec<(f64, f64)>> = series
            .iter()
            .map(|s| s.points.iter().map(|p| (p.prompt_tokens as f64, y(p.gbps))).collect())
            .collect();
        let rows = series.len() + peaks.len();
        legend(&mut chart, emptiest_corner(&lines, (x.0.ln(), x.1.ln()), (range.start, range.end), rows))
    }
}

/// Request latency by prompt length: p50 solid, p99 dashed, max dotted.
struct Latency<'a>(&'a [Series]);

impl Figure for Latency<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let series = self.0;
        let x = token_range(series);
        let us = |ns: u64| (ns as f64 / 1e3).max(1e-3);
        let all = series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|p| [us(p.request_ns.p50), us(p.request_ns.max)]));
        let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let mut chart = log_log(
            root,
            "Request latency by prompt length: p50 solid with markers, p99 dashed (from 100 requests), max ×",
            (x.0, x.1, lo / 2.0, hi * 2.0),
            ("prompt length (tokens, log scale)", "request latency, receiver's go to last byte (log scale)"),
            (prompt_ticks(series), &tokens_label, &human_us),
        )?;
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            let line = |f: fn(&crate::figures::PointResult) -> u64| -> Vec<(f64, f64)> {
                s.points.iter().map(|p| (p.prompt_tokens as f64, us(f(p)))).collect()
            };
            chart
                .draw_series(LineSeries::new(line(|p| p.request_ns.p50), c.stroke_width(3)))
                .map_err(plot_error)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(3))
                        + Polygon::new(marker_shape(i, (12, 0)), c.filled())
                });
            let markers = line(|p| p.request_ns.p50)
                .into_iter()
                .map(move |p| EmptyElement::at(p) + Polygon::new(marker_shape(i, (0, 0)), c.filled()));
            chart.draw_series(markers).map_err(plot_error)?;
            // A p99 only where 100 requests or more support it.
            let p99: Vec<(f64, f64)> = (s.points.iter())
                .filter_map(|p| Some((p.prompt_tokens as f64, us(p.request_ns.p99_supported()?))))
                .collect();
            chart.draw_series(DashedLineSeries::new(p99, 8, 5, c.stroke_width(2))).map_err(plot_error)?;
            chart
                .draw_series(
                    line(|p| p.request_ns.max).into_iter().map(move |p| Cross::new(p, 6, c.stroke_width(2))),
                )
                .map_err(plot_error)?;
        }
        let lines: Vec<Vec<(f64, f64)>> = series
            .iter()
            .flat_map(|s| {
                [
                    |p: &crate::figures::PointResult| p.request_ns.p50,
                    |p: &crate::figures::PointResult| p.request_ns.max,
                ]
                .map(|f| s.points.iter().map(|p| (p.prompt_tokens as f64, us(f(p)).log10())).collect())
            })
            .collect();
        let y_range = ((lo / 2.0).log10(), (hi * 2.0).log10());
        legend(&mut chart, emptiest_corner(&lines, (x.0.ln(), x.1.ln()), y_range, series.len()))
    }
}

/// Where the legend hides the fewest data: the lines (log x, axis y units)
/// are sampled and counted in each corner's box (about a quarter of the
/// width, 4% of the height per row).
fn emptiest_corner(
    lines: &[Vec<(f64, f64)>],
    x: (f64, f64),
    y: (f64, f64),
    rows: usize,
) -> SeriesLabelPosition {
    let norm = |(px, py): (f64, f64)| ((px.ln() - x.0) / (x.1 - x.0), (py - y.0) / (y.1 - y.0));
    let mut samples = Vec::new();
    for line in lines {
        for w in line.windows(2) {
            let (a, b) = (norm(w[0]), norm(w[1]));
            samples.extend((0..=20).map(|k| {
                let t = k as f64 / 20.0;
                (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
            }));
        }
        samples.extend(line.iter().map(|&p| norm(p)));
    }
    let h = (0.04 * rows as f64 + 0.03).min(0.9);
    let boxes = [
        (SeriesLabelPosition::UpperRight, 0.68, 1.0, 1.0 - h, 1.0),
        (SeriesLabelPosition::LowerRight, 0.68, 1.0, 0.0, h),
        (SeriesLabelPosition::UpperLeft, 0.0, 0.32, 1.0 - h, 1.0),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.32, 0.0, h),
        (SeriesLabelPosition::MiddleLeft, 0.0, 0.32, 0.5 - h / 2.0, 0.5 + h / 2.0),
        (SeriesLabelPosition::MiddleRight, 0.68, 1.0, 0.5 - h / 2.0, 0.5 + h / 2.0),
    ];
    let inside = |&(_, x0, x1, y0, y1): &(SeriesLabelPosition, f64, f64, f64, f64)| {
        samples.iter().filter(|(sx, sy)| (x0..=x1).contains(sx) && (y0..=y1).contains(sy)).count()
    };
    boxes.iter().min_by_key(|b| inside(b)).map(|b| b.0.clone()).unwrap_or(SeriesLabelPosition::UpperRight)
}

/// The request-latency histograms of one prompt length: a panel per
/// series, all over one range so that panels compare at a glance, 30 bins.
struct HistogramAt<'a> {
    series: &'a [Series],
    tokens: u32,
}

const BINS: usize = 30;

impl Figure for HistogramAt<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let found: Vec<(usize, &Series, &crate::figures::PointResult)> = self
            .series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.points.iter().find(|p| p.prompt_tokens == self.tokens).map(|p| (i, s, p)))
            .collect();
        let title = format!(
            "Request latency histograms, {} tokens: x the request latency (one log range for all), y the \
             fraction of timed requests",
            self.tokens
        );
        let body = root.titled(&title, ("sans-serif", 24)).map_err(plot_error)?;
        // Four panels a column at most, so that each stays tall enough to read.
        let n = found.len();
        let cols = n.div_ceil(4).max(1);
        let panels = body.split_evenly((n.div_ceil(cols).max(1), cols));
        // Each panel's recorded values (us, count), then the range they share.
        let mut recorded = Vec::new();
        for (_, _, p) in &found {
            let h = decode_histogram(&p.request_histogram)?;
            let values: Vec<(f64, u64)> =
                h.iter_recorded().map(|v| (v.value_iterated_to() as f64 / 1e3, v.count_at_value())).collect();
            recorded.push(values);
        }
        let (lo, hi) =
            recorded.iter().flatten().fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v.0), hi.max(v.0)));
        let (lo, hi) = if lo > hi { (1.0, 10.0) } else { (lo.max(1e-3), hi.max(lo * 1.001)) };
        // Log bins: series 100x apart keep their shapes on the one range.
        let (a, b) = (lo / 1.15, hi * 1.15);
        let x_ticks = log_ticks(a, b);
        let bin_of = |us: f64| (((us / a).ln() / (b / a).ln() * BINS as f64) as usize).min(BINS - 1);
        let edge = |k: usize| a * (b / a).powf(k as f64 / BINS as f64);
        for (((i, s, p), values), panel) in found.into_iter().zip(recorded).zip(panels.iter()) {
            let total = values.iter().map(|v| v.1).sum::<u64>().max(1) as f64;
            let mut frac = vec![0.0; BINS];
            for &(us, n) in &values {
                frac[bin_of(us.max(a))] += n as f64 / total;
            }
            let c = color(i);
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!(
                        "{}: n {}, p50 {}, p99 {}",
                        s.label,
                        p.request_ns.count,
                        crate::units::fmt_ns(p.request_ns.p50 as f64),
                        super::table::tail(p.request_ns.p99_supported())
                    ),
                    ("sans-serif", 16),
                )
                .margin(6)
                .x_label_area_size(if n <= 2 { 44 } else { 26 })
                .y_label_area_size(60)
                .build_cartesian_2d(
                    (a..b).log_scale().with_key_points(x_ticks.clone()),
                    0f64..frac.iter().copied().fold(0.0, f64::max) * 1.2,
                )
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .x_desc(if n <= 2 { "request latency (log scale)" } else { "" })
                .x_label_formatter(&human_us)
                .y_labels(3)
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 15))
                .draw()
                .map_err(plot_error)?;
            chart
                .draw_series(
                    frac.iter().enumerate().filter(|(_, f)| **f > 0.0).map(|(k, f)| {
                        Rectangle::new([(edge(k), 0.0), (edge(k + 1), *f)], c.mix(0.7).filled())
                    }),
                )
                .map_err(plot_error)?;
        }
        Ok(())
    }
}

/// Time to first token as far as KV goes, with emulated prefill: a panel
/// per prompt length (prefill of 1k and 32k tokens differ 30x), a bar per
/// series, its prefill (light) and the transfer's added TTFT (dark) stacked
/// at their p50s, a black tick at the least any pipeline could add.
struct Ttft<'a>(&'a [Series]);

impl Ttft<'_> {
    /// The prompt lengths that any series measured with prefill.
    fn tokens(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self
            .0
            .iter()
            .flat_map(|s| s.points.iter().filter(|p| p.prefill.is_some()))
            .map(|p| p.prompt_tokens)
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    }
}

impl Figure for Ttft<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let tokens = self.tokens();
        let with: Vec<(usize, &Series)> =
            self.0.iter().enumerate().filter(|(_, s)| s.points.iter().any(|p| p.prefill.is_some())).collect();
        let title =
            "Time to first token as far as KV goes, p50: prefill (light) + what the transfer adds (dark); \
                     black tick: the least possible";
        let body = root.titled(title, ("sans-serif", 22)).map_err(plot_error)?;
        // The legend: a swatch and the series' name per row.
        let (key, grid) = body.split_vertically(12 + 24 * with.len() as u32);
        for (row, (i, s)) in with.iter().enumerate() {
            let y = 6 + 24 * row as i32;
            key.draw(&Rectangle::new([(20, y), (44, y + 16)], color(*i).filled())).map_err(plot_error)?;
            key.draw(&Text::new(s.label.clone(), (54, y), ("sans-serif", 16))).map_err(plot_error)?;
        }
        let cols = tokens.len().clamp(1, 3);
        let panels = grid.split_evenly((tokens.len().div_ceil(cols).max(1), cols));
        let ms = |ns: u64| ns as f64 / 1e6;
        for (t, panel) in tokens.iter().zip(panels.iter()) {
            let bars: Vec<(usize, &crate::figures::prefill::PrefillFigures)> = with
                .iter()
                .enumerate()
                .filter_map(|(k, (_, s))| {
                    s.points
                        .iter()
                        .find(|p| p.prompt_tokens == *t)
                        .and_then(|p| p.prefill.as_ref())
                        .map(|f| (k, f))
                })
                .collect();
            let top = bars.iter().map(|(_, f)| ms(f.during_ns.p50 + f.added_ns.p50)).fold(0.0, f64::max);
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{t} tokens"), ("sans-serif", 18))
                .margin(8)
                .x_label_area_size(8)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..with.len().max(1) as f64, 0f64..(top * 1.25).max(1e-6))
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc("ms")
                .y_label_formatter(&number)
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 15))
                .draw()
                .map_err(plot_error)?;
            for &(k, f) in &bars {
                let c = color(with[k].0);
                let (x0, x1) = (k as f64 + 0.15, k as f64 + 0.85);
                let (prefill, added) = (ms(f.during_ns.p50), ms(f.added_ns.p50));
                let bound = prefill + ms(f.lower_bound_ns);
                chart
                    .draw_series([
                        Rectangle::new([(x0, 0.0), (x1, prefill)], c.mix(0.35).filled()),
                        Rectangle::new([(x0, prefill), (x1, prefill + added)], c.filled()),
                    ])
                    .map_err(plot_error)?;
                chart
                    .draw_series([PathElement::new(
                        vec![(x0 - 0.05, bound), (x1 + 0.05, bound)],
                        BLACK.stroke_width(2),
                    )])
                    .map_err(plot_error)?;
                let label = format!("+{}", crate::units::fmt_ns(f.added_ns.p50 as f64));
                let at = (k as f64 + 0.1, prefill + added + top * 0.08);
                chart.draw_series([Text::new(label, at, ("sans-serif", 13))]).map_err(plot_error)?;
            }
        }
        Ok(())
    }
}

/// Latency under load: per series, the p50 (solid) and p99 (dashed) from
/// arrival to the last byte against the offered rate, both on log axes;
/// a cross marks a saturated point (the knee is where they start).
struct LoadLatency<'a>(&'a [Series]);

impl<'a> LoadLatency<'a> {
    /// A line per series (colour, label, points by offered rate), and one
    /// more where its arrivals also ran with emulated prefill.
    fn lines(&self) -> Vec<(usize, String, Vec<&'a crate::figures::load::LoadFigures>)> {
        let n = self.0.len();
        let mut lines = Vec::new();
        for (i, s) in self.0.iter().enumerate() {
            let alone: Vec<_> = s.points.iter().filter_map(|p| p.load.as_ref()).collect();
            let with: Vec<_> =
                s.points.iter().filter_map(|p| p.prefill.as_ref()?.under_load.as_deref()).collect();
            lines.push((i, s.label.clone(), alone));
            lines.push((i + n, format!("{} · with prefill", s.label), with));
        }
        lines.retain(|(_, _, l)| !l.is_empty());
        for (_, _, l) in &mut lines {
            l.sort_by(|a, b| a.offered_qps.total_cmp(&b.offered_qps));
        }
        lines
    }
}

impl Figure for LoadLatency<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let lines = self.lines();
        let ms = |ns: u64| (ns as f64 / 1e6).max(1e-4);
        let all = lines.iter().flat_map(|(_, _, l)| l.iter());
        let (xlo, xhi, ylo, yhi) = all.fold((f64::MAX, 0f64, f64::MAX, 0f64), |(a, b, c, d), f| {
            (
                a.min(f.offered_qps),
                b.max(f.offered_qps),
                c.min(ms(f.latency_ns.p50)),
                // A p99 its count cannot support is not drawn, nor does it set the range.
                d.max(ms(f.latency_ns.p99_supported().unwrap_or(f.latency_ns.p50))),
            )
        });
        let mut chart = log_log(
            root,
            "Latency under load: arrival to last byte, p50 solid, p99 dashed (from 100 requests), × saturated",
            (xlo / 1.5, xhi * 1.5, ylo / 2.0, yhi * 2.0),
            ("offered load (requests per second, log scale)", "latency, arrival to last byte (log scale)"),
            (
                ticks(lines.iter().flat_map(|(_, _, l)| l.iter().map(|f| f.offered_qps))),
                &|qps: &f64| match *qps {
                    q if q >= 100.0 => format!("{q:.0}/s"),
                    q if q >= 10.0 => format!("{q:.1}/s"),
                    q => format!("{q:.2}/s"),
                },
                &|ms: &f64| human_us(&(ms * 1e3)),
            ),
        )?;
        for (i, label, l) in &lines {
            let c = color(*i);
            let p50: Vec<(f64, f64)> = l.iter().map(|f| (f.offered_qps, ms(f.latency_ns.p50))).collect();
            let p99: Vec<(f64, f64)> =
                l.iter().filter_map(|f| Some((f.offered_qps, ms(f.latency_ns.p99_supported()?)))).collect();
            chart
                .draw_series(LineSeries::new(p50.clone(), c.stroke_width(3)))
                .map_err(plot_error)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
            chart.draw_series(DashedLineSeries::new(p99, 8, 5, c.stroke_width(2))).map_err(plot_error)?;
            let saturated = l
                .iter()
                .zip(&p50)
                .filter(|(f, _)| f.saturated)
                .map(|(_, &p)| Cross::new(p, 8, c.stroke_width(3)));
            chart.draw_series(saturated).map_err(plot_error)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

/// What the decode side held over time under load: a panel per series, a
/// step line per arrival rate.
struct Resident<'a>(&'a [Series]);

impl Figure for Resident<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        // A panel per load point: rates hold the buffer over times 10x apart,
        // so each gets its own time axis.
        let points: Vec<(usize, String, &crate::figures::load::LoadFigures)> = LoadLatency(self.0)
            .lines()
            .into_iter()
            .flat_map(|(i, label, l)| l.into_iter().map(move |f| (i, format!("{label} · {}", f.arrivals), f)))
            .collect();
        let body = root
            .titled(
                "KV held on the decode side over each load point (GiB against seconds; dashed: the buffer's \
                 size, dotted: spilled to the pool)",
                ("sans-serif", 22),
            )
            .map_err(plot_error)?;
        let cols = points.len().div_ceil(4).max(1);
        let panels = body.split_evenly((points.len().div_ceil(cols).max(1), cols));
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let steps = |series: &[(u64, u64)]| {
            let mut steps = Vec::with_capacity(2 * series.len());
            for w in series.windows(2) {
                let (t0, t1, b) = (w[0].0 as f64 / 1e9, w[1].0 as f64 / 1e9, gib(w[0].1));
                steps.extend([(t0, b), (t1, b)]);
            }
            steps
        };
        for ((i, label, f), panel) in points.iter().zip(panels.iter()) {
            let xhi = f.resident.series.last().map_or(1e-3, |p| (p.0 as f64 / 1e9).max(1e-3));
            let buffer = f.decode_buffer.as_ref();
            let (cap, pool) = buffer.map_or((0, 0), |b| (b.capacity_bytes, b.pooled.peak_bytes));
            let yhi = gib(f.resident.peak_bytes.max(cap).max(pool)).max(1e-6);
            let held = match buffer {
                Some(b) => format!(
                    "peak {} of a {} buffer ({})",
                    crate::units::fmt_bytes(f.resident.peak_bytes),
                    crate::units::fmt_bytes(b.capacity_bytes),
                    b.on_full
                ),
                None => format!("peak {}", crate::units::fmt_bytes(f.resident.peak_bytes)),
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{label}: {held}"), ("sans-serif", 15))
                .margin(6)
                .x_label_area_size(26)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..xhi * 1.02, 0f64..yhi * 1.15)
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .x_label_formatter(&|t: &f64| format!("{} s", number(t)))
                .y_label_formatter(&number)
                .x_labels(6)
                .y_labels(4)
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(plot_error)?;
            let c = color(*i);
            chart
                .draw_series(LineSeries::new(steps(&f.resident.series), c.stroke_width(2)))
                .map_err(plot_error)?;
            if let Some(b) = buffer {
                let line = [(0.0, gib(b.capacity_bytes)), (xhi * 1.02, gib(b.capacity_bytes))];
                chart
                    .draw_series(DashedLineSeries::new(line, 10, 6, BLACK.stroke_width(1)))
                    .map_err(plot_error)?;
                if b.pooled.peak_bytes > 0 {
                    let spilled = DashedLineSeries::new(steps(&b.pooled.series), 2, 4, c.stroke_width(2));
                    chart.draw_series(spilled).map_err(plot_error)?;
                }
            }
        }
        Ok(())
    }
}

type LogLog = Cartesian2d<WithKeyPoints<LogCoord<f64>>, LogCoord<f64>>;

/// An x axis's ticks and labels, and the y axis's labels.
type Axes<'f> = (Vec<f64>, &'f dyn Fn(&f64) -> String, &'f dyn Fn(&f64) -> String);

/// The prompt lengths measured by any series: where the x axis is ticked.
fn prompt_ticks(series: &[Series]) -> Vec<f64> {
    ticks(series.iter().flat_map(|s| s.points.iter().map(|p| p.prompt_tokens as f64)))
}

/// A chart with both axes on log scales over `(x0, x1, y0, y1)`, the x axis
/// ticked and both labelled as `Axes` says, its mesh drawn.
fn log_log<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: &str,
    (x0, x1, y0, y1): (f64, f64, f64, f64),
    (x_desc, y_desc): (&str, &str),
    (x_ticks, x_label, y_label): Axes,
) -> Result<ChartContext<'a, DB, LogLog>>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(90)
        .build_cartesian_2d((x0..x1).log_scale().with_key_points(x_ticks), (y0..y1).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(x_label)
        .y_label_formatter(y_label)
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(plot_error)?;
    Ok(chart)
}

/// The legend box, where `pos` says.
fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>, pos: SeriesLabelPosition) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(pos)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

/// What a panel of `Turns` plots of a turn (None: nothing to plot).
type TurnValue = Box<dyn Fn(&crate::figures::conversation::TurnFigures) -> Option<f64>>;

/// Conversations: per mode (a line for each point of each series), the
/// bytes each turn moved and its transfer's median, against the turn.
struct Turns<'a>(&'a [Series]);

impl<'a> Turns<'a> {
    fn lines(&self) -> Vec<(String, &'a crate::figures::conversation::ConversationFigures)> {
        let each = self.0.iter().flat_map(|s| s.points.iter().map(move |p| (s, p)));
        each.filter_map(|(s, p)| {
            let c = p.conversation.as_ref()?;
            Some((format!("{} · {} · {}", s.label, c.mode, p.granularity), c))
        })
        .collect()
    }
}

impl Figure for Turns<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let lines = self.lines();
        let turns = lines.iter().map(|(_, c)| c.turns.len()).max().unwrap_or(1) as f64;
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let ms = |ns: u64| ns as f64 / 1e6;
        let body = root
            .titled("Each turn of a conversation: KV moved and its transfer (p50)", ("sans-serif", 24))
            .map_err(plot_error)?;
        let (left, right) = body.split_horizontally(body.dim_in_pixel().0 / 2);
        let panels: [(&DrawingArea<DB, Shift>, &str, TurnValue); 2] = [
            // Bidirectional turns: both directions.
            (&left, "MiB moved", Box::new(move |t| Some(mib(t.bytes + t.back_bytes)))),
            (
                &right,
                "transfer p50 (ms)",
                Box::new(move |t| (t.transfer_ns.count > 0).then(|| ms(t.transfer_ns.p50 + t.back_ns.p50))),
            ),
        ];
        for (area, what, value) in panels {
            let hi = lines.iter().flat_map(|(_, c)| c.turns.iter().filter_map(&value)).fold(1e-6, f64::max);
            let mut chart = ChartBuilder::on(area)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0.5f64..turns + 0.5, 0f64..hi * 1.15)
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .x_desc("turn")
                .y_desc(what)
                .x_labels((turns as usize + 1).min(20))
                .x_label_formatter(&|v| if v.fract() == 0.0 { format!("{v:.0}") } else { String::new() })
                .y_label_formatter(&number)
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(plot_error)?;
            for (i, (label, c)) in lines.iter().enumerate() {
                let col = color(i);
                let points: Vec<(f64, f64)> =
                    c.turns.iter().filter_map(|t| value(t).map(|v| (t.turn as f64, v))).collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), col.stroke_width(3)))
                    .map_err(plot_error)?
                    .label(label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], col.stroke_width(3)));
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, col.filled())))
                    .map_err(plot_error)?;
            }
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    }
}

/// Every plot of a report into `dir`; returns the files written.
pub fn all(dir: &Path, series: &[Series], stamp: &str) -> Result<Vec<PathBuf>> {
    // Plots against prompt length take a mix's lengths one by one; those
    // against the rate take the mix whole.
    let lengths = &super::compare::by_length(series);
    let mut files = both(dir, "bandwidth", &Bandwidth(lengths), stamp)?;
    files.extend(both(dir, "latency", &Latency(lengths), stamp)?);
    let mut tokens: Vec<u32> =
        lengths.iter().flat_map(|s| s.points.iter().map(|p| p.prompt_tokens)).collect();
    tokens.sort_unstable();
    tokens.dedup();
    for t in tokens {
        files.extend(both(
            dir,
            &format!("histogram-{t}"),
            &HistogramAt { series: lengths, tokens: t },
            stamp,
        )?);
    }
    let ttft = Ttft(lengths);
    if !ttft.tokens().is_empty() {
        files.extend(both(dir, "ttft", &ttft, stamp)?);
    }
    if !Turns(series).lines().is_empty() {
        files.extend(both(dir, "turns", &Turns(series), stamp)?);
    }
    if !LoadLatency(series).lines().is_empty() {
        files.extend(both(dir, "load-latency", &LoadLatency(series), stamp)?);
        files.extend(both(dir, "resident", &Resident(series), stamp)?);
    }
    Ok(files)
}

/// An all-pairs matrix's figures as a heatmap: rows send, columns
/// receive, each cell's GB/s written in it; darker is faster, a failed
/// pair grey with an x, an outlier framed in red.
struct Heatmap<'a> {
    names: &'a [String],
    grid: &'a crate::matrix::Grid,
}

impl Figure for Heatmap<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let n = self.names.len();
        let top = self.grid.cells.iter().filter_map(|c| c.gbps).fold(0.0, f64::max);
        let median = self.grid.median_gbps.map(|m| format!("{m:.2} GB/s")).unwrap_or_else(|| "-".into());
        let title = format!("{}: GB/s, rows send, columns receive (median {median})", self.grid.label);
        let names = self.names;
        let label = move |v: &f64| {
            let i = v.floor() as usize;
            if v.fract() > 0.4 && v.fract() < 0.6 && i < n {
                names[i].clone()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(160)
            .build_cartesian_2d(0f64..n as f64, n as f64..0f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(4 * n + 1)
            .y_labels(4 * n + 1)
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .x_desc("receiving rank (decode)")
            .y_desc("sending rank (prefill)")
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(plot_error)?;
        for i in 0..n {
            for j in 0..n {
                let cell = self.grid.cell(i, j);
                let (fill, text) = match cell.and_then(|c| c.gbps) {
                    _ if i == j => (RGBColor(235, 235, 235), String::new()),
                    Some(g) => {
                        // White to Okabe-Ito blue with the figure.
                        let t = if top > 0.0 { g / top } else { 0.0 };
                        let mix = |w: u8, b: u8| (w as f64 + (b as f64 - w as f64) * t).round() as u8;
                        (RGBColor(mix(255, 0), mix(255, 114), mix(255, 178)), format!("{g:.2}"))
                    }
                    None => (RGBColor(170, 170, 170), "x".into()),
                };
                let (x, y) = (j as f64, i as f64);
                chart
                    .draw_series(std::iter::once(Rectangle::new([(x, y), (x + 1.0, y + 1.0)], fill.filled())))
                    .map_err(plot_error)?;
                if self.grid.is_outlier(i, j) {
                    let frame =
                        Rectangle::new([(x + 0.03, y + 0.03), (x + 0.97, y + 0.97)], RED.stroke_width(4));
                    chart.draw_series(std::iter::once(frame)).map_err(plot_error)?;
                }
                let ink = if cell.and_then(|c| c.gbps).is_some_and(|g| top > 0.0 && g / top > 0.55) {
                    WHITE
                } else {
                    BLACK
                };
                let style =
                    ("sans-serif", 18).into_font().color(&ink).pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ));
                chart
                    .draw_series(std::iter::once(Text::new(text, (x + 0.5, y + 0.5), style)))
                    .map_err(plot_error)?;
            }
        }
        Ok(())
    }
}

/// One heatmap per point of a matrix: `matrix-NAME-TOKENS-GRANULARITY`.
pub fn heatmaps(
    dir: &Path,
    name: &str,
    names: &[String],
    grids: &[crate::matrix::Grid],
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for grid in grids {
        let point: String = grid.label.replace(" tokens, ", "-");
        files.extend(both(dir, &format!("matrix-{name}-{point}"), &Heatmap { names, grid }, "")?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_drop_a_neighbour_that_would_print_over_another() {
        // Rates a user might sweep: 9.5/s sits on 10/s over a 1-100/s axis.
        assert_eq!(
            ticks([1.0, 2.0, 5.0, 9.5, 10.0, 20.0, 50.0, 100.0].into_iter()),
            [1.0, 2.0, 5.0, 9.5, 20.0, 50.0, 100.0]
        );
        // The last value stays, and displaces a close one before it.
        assert_eq!(ticks([1.0, 10.0, 95.0, 100.0].into_iter()), [1.0, 10.0, 100.0]);
        // Far apart, every value is a tick; one value is one tick.
        assert_eq!(ticks([128.0, 1024.0, 8192.0, 8192.0].into_iter()), [128.0, 1024.0, 8192.0]);
        assert_eq!(ticks([3.0].into_iter()), [3.0]);
    }

    #[test]
    fn log_ticks_give_three_or_more_round_values_on_any_span() {
        assert_eq!(log_ticks(0.5, 2000.0), [1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(log_ticks(30.0, 300.0), [50.0, 100.0, 200.0]);
        assert_eq!(log_ticks(40.0, 70.0), [40.0, 50.0, 60.0, 70.0]);
        // Narrower than any step: four even values, rounded.
        assert_eq!(log_ticks(1000.0, 1100.0), [1020.0, 1040.0, 1060.0, 1080.0]);
        for (lo, hi) in [(1.0, 1.3), (12.0, 19.0), (0.001, 0.0011), (7e5, 9e5)] {
            let t = log_ticks(lo, hi);
            assert!(t.len() >= 3, "{lo}..{hi}: {t:?}");
            assert!(t.iter().all(|v| (lo..=hi).contains(v)), "{lo}..{hi}: {t:?}");
        }
    }
}
