//! Turns the raw measurements of `benches/load/run.sh` into the Markdown
//! tables of `benches/RESULTS.md`, and checks the goals of issue 6.
//!
//! `load_report RUNS.tsv`
//!
//! Each line of the input is one wrk run, tab-separated:
//! `round workload target requests duration_us cpu_ticks upstream_ticks
//! clk_tck p50_us p99_us`.
//!
//! Every figure is the median over rounds, with the minimum and maximum.
//! Ratios are taken to nginx *in the same round and workload*, then
//! summarised, so a round slowed by a busy machine slows both sides of its
//! ratio.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

const WORKLOADS: [&str; 4] = ["other", "authorize", "token", "flow"];
const TARGETS: [&str; 4] = ["direct", "nginx", "pkce-proxy", "pkce-proxy-before"];

/// One wrk run.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    round: u32,
    workload: String,
    target: String,
    requests: f64,
    seconds: f64,
    cpu_us: f64,
    upstream_cpu_us: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Run {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split('\t').collect();
        let [
            round,
            workload,
            target,
            requests,
            duration_us,
            cpu,
            up,
            clk,
            p50,
            p99,
        ] = f.as_slice()
        else {
            return None;
        };
        let num = |s: &str| s.trim().parse::<f64>().ok();
        let requests = num(requests)?;
        let clk = num(clk)?;
        if requests <= 0.0 || clk <= 0.0 {
            return None;
        }
        let per_request = |ticks: f64| ticks / clk * 1e6 / requests;
        Some(Self {
            round: round.trim().parse().ok()?,
            workload: (*workload).to_owned(),
            target: (*target).to_owned(),
            requests,
            seconds: num(duration_us)? / 1e6,
            cpu_us: per_request(num(cpu)?),
            upstream_cpu_us: per_request(num(up)?),
            p50_us: num(p50)?,
            p99_us: num(p99)?,
        })
    }

    fn rps(&self) -> f64 {
        self.requests / self.seconds
    }
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(mut values: Vec<f64>) -> Option<Spread> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: values[0],
        max: values[n - 1],
    })
}

fn show(s: Option<Spread>, decimals: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.d$} ({:.d$}–{:.d$})",
            s.median,
            s.min,
            s.max,
            d = decimals
        ),
        None => "–".to_owned(),
    }
}

type Key<'a> = (&'a str, &'a str, u32);

fn index(runs: &[Run]) -> BTreeMap<Key<'_>, &Run> {
    runs.iter()
        .map(|r| ((r.workload.as_str(), r.target.as_str(), r.round), r))
        .collect()
}

/// Per round, `metric(target) / metric(nginx)`.
fn ratios(
    runs: &[Run],
    workload: &str,
    target: &str,
    metric: impl Fn(&Run) -> f64,
) -> Option<Spread> {
    ratios_to(runs, workload, target, "nginx", metric)
}

/// Per round, `metric(target) / metric(base)`.
fn ratios_to(
    runs: &[Run],
    workload: &str,
    target: &str,
    base: &str,
    metric: impl Fn(&Run) -> f64,
) -> Option<Spread> {
    let by_key = index(runs);
    let values = runs
        .iter()
        .filter(|r| r.workload == workload && r.target == target)
        .filter_map(|r| {
            let base = by_key.get(&(workload, base, r.round))?;
            Some(metric(r) / metric(base))
        })
        .collect();
    spread(values)
}

fn of(runs: &[Run], workload: &str, target: &str, metric: impl Fn(&Run) -> f64) -> Option<Spread> {
    spread(
        runs.iter()
            .filter(|r| r.workload == workload && r.target == target)
            .map(metric)
            .collect(),
    )
}

/// One table row: workload, target, then the cells.
fn row(out: &mut String, workload: &str, target: &str, cells: impl IntoIterator<Item = String>) {
    let _ = write!(out, "| {workload} | {target} |");
    for cell in cells {
        let _ = write!(out, " {cell} |");
    }
    out.push('\n');
}

/// A row of ratios to `base`: CPU per request, req/s, p50, p99.
fn ratio_row(out: &mut String, runs: &[Run], workload: &str, target: &str, base: &str) {
    let ratio = |metric: fn(&Run) -> f64| show(ratios_to(runs, workload, target, base, metric), 3);
    row(
        out,
        workload,
        target,
        [
            ratio(|r| r.cpu_us),
            ratio(Run::rps),
            ratio(|r| r.p50_us),
            ratio(|r| r.p99_us),
        ],
    );
}

fn report(runs: &[Run]) -> String {
    let mut out = String::new();
    let rounds = runs.iter().map(|r| r.round).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "{rounds} round(s); median (min–max) over rounds.\n\n\
         ### Absolute figures\n\n\
         | workload | target | CPU µs/req (measured server) | req/s | p50 ms | p99 ms | upstream CPU µs/req |\n\
         | --- | --- | --- | --- | --- | --- | --- |"
    );
    for w in WORKLOADS {
        for t in TARGETS {
            if of(runs, w, t, |r| r.cpu_us).is_none() {
                continue;
            }
            row(
                &mut out,
                w,
                t,
                [
                    show(of(runs, w, t, |r| r.cpu_us), 2),
                    show(of(runs, w, t, Run::rps), 0),
                    show(of(runs, w, t, |r| r.p50_us / 1000.0), 2),
                    show(of(runs, w, t, |r| r.p99_us / 1000.0), 2),
                    show(of(runs, w, t, |r| r.upstream_cpu_us), 2),
                ],
            );
        }
    }
    let _ = writeln!(
        out,
        "\n### Ratios to nginx in the same round\n\n\
         CPU and latency: lower is better; req/s: higher is better.\n\n\
         | workload | target | CPU/req | req/s | p50 | p99 |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    for w in WORKLOADS {
        for t in ["pkce-proxy", "pkce-proxy-before", "direct"] {
            if of(runs, w, t, |r| r.cpu_us).is_none() {
                continue;
            }
            ratio_row(&mut out, runs, w, t, "nginx");
        }
    }
    if runs.iter().any(|r| r.target == "pkce-proxy-before") {
        let _ = writeln!(
            out,
            "\n### pkce-proxy against pkce-proxy-before in the same round\n\n\
             | workload | target | CPU/req | req/s | p50 | p99 |\n\
             | --- | --- | --- | --- | --- | --- |"
        );
        for w in WORKLOADS {
            ratio_row(&mut out, runs, w, "pkce-proxy", "pkce-proxy-before");
        }
    }
    let _ = writeln!(out, "\n### Goals (pkce-proxy, medians of the ratios)\n");
    let goal = |name: String, s: Option<Spread>, ok: fn(f64) -> bool| match s {
        Some(s) => format!(
            "- {name}: {:.3} — {}\n",
            s.median,
            if ok(s.median) { "met" } else { "NOT met" }
        ),
        None => format!("- {name}: not measured\n"),
    };
    out.push_str(&goal(
        "CPU/req ≤ 1.0× nginx, pass-through (`other`)".to_owned(),
        ratios(runs, "other", "pkce-proxy", |r| r.cpu_us),
        |m| m <= 1.0,
    ));
    out.push_str(&goal(
        "CPU/req ≤ 1.0× nginx, flow mix (`flow`)".to_owned(),
        ratios(runs, "flow", "pkce-proxy", |r| r.cpu_us),
        |m| m <= 1.0,
    ));
    for w in WORKLOADS {
        out.push_str(&goal(
            format!("req/s ≥ 1.0× nginx, `{w}`"),
            ratios(runs, w, "pkce-proxy", Run::rps),
            |m| m >= 1.0,
        ));
    }
    out
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: load_report RUNS.tsv");
        return ExitCode::from(64);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("load_report: cannot read {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut runs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match Run::parse(line) {
            Some(run) => runs.push(run),
            None => {
                eprintln!("load_report: {path}:{}: not a run: {line:?}", n + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{}", report(&runs));
    ExitCode::SUCCESS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = spread(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(vec![4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(spread(vec![]).is_none());
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round() {
        let text = "1\tother\tnginx\t1000\t1000000\t100\t50\t100\t100\t900\n\
                    1\tother\tpkce-proxy\t1000\t1000000\t90\t50\t100\t120\t800\n\
                    2\tother\tnginx\t2000\t1000000\t100\t50\t100\t100\t900\n\
                    2\tother\tpkce-proxy\t1000\t1000000\t100\t50\t100\t120\t800\n";
        let runs: Vec<Run> = text.lines().map(|l| Run::parse(l).unwrap()).collect();
        // 100 ticks at 100 Hz over 1000 requests: 1000 µs each.
        assert_eq!(runs[0].cpu_us, 1000.0);
        let cpu = ratios(&runs, "other", "pkce-proxy", |r| r.cpu_us).unwrap();
        // Round 1: 0.9; round 2: 2.0 (half the requests for the same CPU).
        assert_eq!((cpu.min, cpu.max), (0.9, 2.0));
        let text = report(&runs);
        assert!(text.contains("| other | pkce-proxy |"), "{text}");
        assert!(text.contains("flow mix (`flow`): not measured"), "{text}");
    }

    #[test]
    fn malformed_lines_are_refused() {
        assert!(Run::parse("1\tother\tnginx\t0\t1\t1\t1\t100\t1\t1").is_none());
        assert!(Run::parse("1\tother\tnginx").is_none());
    }
}
