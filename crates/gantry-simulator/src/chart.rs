//! The paper's picture: GPU allocation ratio against arrived GPU demand, one line per policy.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::{Error, Result};

/// One line of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(arrived %, allocation %)` points.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(128, 128, 128),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(0, 0, 0),
    RGBColor(23, 190, 207),
];

/// Makes `font` (TrueType bytes) the chart's sans-serif font. Call once per process; the
/// bytes live for the rest of it. Returns false if the bytes are not a usable font.
pub fn use_font(font: Vec<u8>) -> bool {
    let bytes: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
}

/// Draws the chart as a PNG at `path`, the x axis from `x_from` %, the y axis from `y_from` %.
/// With `text` false (no font available) it draws axes and lines only; the caller then writes the
/// legend beside it.
pub fn draw(
    path: &Path,
    title: &str,
    series: &[Series],
    text: bool,
    (x_from, y_from): (f64, f64),
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Chart {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(100.0f64, f64::max);
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, ("sans-serif", 26))
            .x_label_area_size(50)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(x_from..x_max, y_from..100f64)
        .map_err(|e| err(&e))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("Arrived GPU demand (% of cluster GPUs)")
            .y_desc("GPU allocation ratio (%)")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(|e| err(&e))?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| err(&e))?;
    }
    // the ideal: everything that arrives is allocated, up to the cluster's capacity
    chart
        .draw_series(LineSeries::new(
            [(x_from, x_from), (100.0, 100.0), (x_max, 100.0)],
            RGBColor(200, 200, 200).stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let drawn = chart
            .draw_series(LineSeries::new(
                s.points.iter().copied().filter(|p| p.0 >= x_from),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        if text {
            drawn.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The legend as text, for charts drawn without a font: `name: r,g,b` per line.
pub fn legend_text(series: &[Series]) -> String {
    let mut s =
        String::from("# line colours of the chart (RGB), in drawing order\nideal: 200,200,200\n");
    for (i, x) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        s.push_str(&format!("{}: {},{},{}\n", x.name, c.0, c.1, c.2));
    }
    s
}
