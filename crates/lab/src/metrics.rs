//! Parsing the Prometheus / OpenMetrics text format that the agents export.

use std::collections::HashMap;

/// Parses sample lines `name value` and `name{labels} value` (an optional timestamp after the value
/// is ignored; comments and blank lines are skipped; unparsable lines are skipped). The key is the
/// series as written: `name` or `name{labels}`.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<(String, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let series_end = if line[name_end..].starts_with('{') {
        // Find the closing brace outside quoted label values.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in line[name_end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    end = Some(name_end + i + 1);
                    break;
                }
                _ => {}
            }
        }
        end?
    } else {
        name_end
    };
    let series = &line[..series_end];
    if series[..name_end].is_empty() {
        return None;
    }
    let value = line[series_end..].split_whitespace().next()?;
    Some((series.to_string(), parse_value(value)?))
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// The sum of every series of metric `name` (`name` itself and `name{...}`), or `None` if absent.
pub fn metric_sum(metrics: &HashMap<String, f64>, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for (series, value) in metrics {
        let matches =
            series == name || (series.starts_with(name) && series[name.len()..].starts_with('{'));
        if matches {
            found = true;
            sum += value;
        }
    }
    found.then_some(sum)
}
