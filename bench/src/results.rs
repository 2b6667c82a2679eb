//! Figures, the table on stdout and `target/bench/results.json`.

use std::path::Path;

use serde::Serialize;

/// One measured figure, with the baseline measured in the same run when there is one.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline_name: Option<String>,
    pub baseline_value: Option<f64>,
    /// value / baseline_value.
    pub ratio: Option<f64>,
}

impl Figure {
    /// A figure without a baseline.
    pub fn plain(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline_name: None,
            baseline_value: None,
            ratio: None,
        }
    }

    /// A figure beside its baseline.
    pub fn against(
        name: impl Into<String>,
        value: f64,
        unit: &str,
        baseline: impl Into<String>,
        base: f64,
    ) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline_name: Some(baseline.into()),
            baseline_value: Some(base),
            ratio: (base != 0.0).then(|| value / base),
        }
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The figures as a table.
pub fn table(figures: &[Figure]) -> String {
    let mut rows = vec![[
        "benchmark".to_string(),
        "value".into(),
        "unit".into(),
        "baseline".into(),
        "baseline value".into(),
        "ratio".into(),
    ]];
    for f in figures {
        rows.push([
            f.name.clone(),
            num(f.value),
            f.unit.clone(),
            f.baseline_name.clone().unwrap_or_default(),
            f.baseline_value.map(num).unwrap_or_default(),
            f.ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join(" | ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("-|-"),
            );
            out.push('\n');
        }
    }
    out
}

/// Writes the figures as JSON.
pub fn write_json(path: &Path, figures: &[Figure]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(figures).expect("JSON"))
}

/// The q-quantile (0..=1) of unsorted samples.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[idx]
}
