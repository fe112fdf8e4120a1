//! `kvxfer compare`: transports run in alternation, round after round, on
//! this host (as `kvxfer pair`) or against a receiver's service elsewhere
//! (`--connect`, as kvxfer-send), then each point's median GB/s over the
//! rounds with its interval, and each candidate's ratio to the first
//! (report::rounds does the statistics).

use super::*;
use crate::report::rounds::{self, PointComparison};
use clap::Parser;

/// One run's command line: a pair on this host, or a sender to a service.
enum Candidate {
    Pair(Box<PairArgs>),
    Send(Box<SendArgs>),
}

#[derive(Parser)]
struct PairLine {
    #[command(flatten)]
    args: PairArgs,
}

#[derive(Parser)]
struct SendLine {
    #[command(flatten)]
    args: SendArgs,
}

impl Candidate {
    /// The shared options with this candidate's transport, quiet.
    fn parse(shared: &[String], transport: TransportKind) -> Result<Candidate> {
        let mut line = vec!["kvxfer compare".to_string()];
        line.extend(shared.iter().cloned());
        line.extend(["-t".to_string(), transport.to_string(), "-q".to_string()]);
        // clap's first line ("error: unexpected argument '--x' found"), without its "error: ".
        let bad = |e: clap::Error| {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            Error::usage(format!("the run's options, with -t {transport}: {first}"))
        };
        let across = shared.iter().any(|a| a == "-c" || a.starts_with("--connect"));
        Ok(match across {
            true => Candidate::Send(Box::new(SendLine::try_parse_from(&line).map_err(bad)?.args)),
            false => Candidate::Pair(Box::new(PairLine::try_parse_from(&line).map_err(bad)?.args)),
        })
    }

    fn run(&self) -> Result<RunReport> {
        let quiet = Screen::silent();
        let (report, result) = match self {
            Candidate::Pair(a) => super::pair::pair_run(a, &quiet)?,
            Candidate::Send(a) => {
                // The service may still be closing the round before (its
                // report, its GPU check): busy then, for a moment.
                let deadline = std::time::Instant::now() + a.run.timeout;
                loop {
                    match super::send::send_run(a, &quiet)? {
                        (_, Err(e)) if session::is_busy(&e) && std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_millis(200));
                        }
                        ended => break ended,
                    }
                }
            }
        };
        result?;
        report.ok_or_else(|| Error::run("internal error: a run ended well without a report"))
    }
}

pub(super) fn compare_rounds(a: &CompareArgs) -> Result<()> {
    // Before the rounds: an output that cannot be written is refused now, not after them.
    if let Some(path) = &a.json {
        crate::cli::outputs::refuse_special(path)?;
    }
    for (taken, why) in [
        (&["-t", "--transport"][..], "give the candidates with compare's own -t, before the run's options"),
        (&["--json", "--csv"], "compare writes its own --json, given before the run's options"),
        (&["--forever", "--senders"], "compare runs one pair a round"),
        (
            &["--min-gbps", "--min-percent-of-peak", "--max-p99", "--max-added-ttft"],
            "compare holds no gate: run the transport you choose with it",
        ),
    ] {
        if let Some(flag) = a.args.iter().find(|arg| taken.iter().any(|t| arg.split('=').next() == Some(*t)))
        {
            return Err(Error::usage(format!("{flag} among the run's options: {why}")));
        }
    }
    let mut candidates = Vec::new();
    for t in &a.transport {
        let c = Candidate::parse(&a.args, *t)?;
        if let Candidate::Send(s) = &c {
            if s.connect.len() > 1 {
                return Err(Error::usage("compare sends to one receiver a round: give one --connect"));
            }
        }
        // A repeated candidate (to see the noise) is told apart by its place.
        let before = a.transport[..candidates.len()].iter().filter(|u| *u == t).count();
        let label = match before {
            0 => t.to_string(),
            k => format!("{t}#{}", k + 1),
        };
        candidates.push((label, c));
    }
    let n = candidates.len();
    let mut reports: Vec<Vec<RunReport>> = vec![Vec::new(); n];
    for round in 0..a.rounds as usize {
        // Each round starts with the next candidate: none always goes first.
        for k in 0..n {
            let i = (round + k) % n;
            let (label, c) = &candidates[i];
            eprintln!("kvxfer compare: round {} of {}: {label}", round + 1, a.rounds);
            crate::signals::check()?;
            let report =
                c.run().map_err(|e| e.context(format!("round {} of {}, {label}", round + 1, a.rounds)))?;
            reports[i].push(report);
        }
    }
    let labelled: Vec<(String, Vec<RunReport>)> =
        candidates.iter().map(|(l, _)| l.clone()).zip(reports).collect();
    let points = rounds::compare(&labelled);
    let mut out = std::io::stdout().lock();
    print(&mut out, a, &labelled, &points)?;
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "rounds": a.rounds,
            "candidates": a.transport.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "run_options": a.args,
            "points": points,
        });
        crate::cli::outputs::write_text(
            path,
            serde_json::to_string_pretty(&doc).expect("serializes") + "\n",
        )?;
    }
    Ok(())
}

fn print(
    out: &mut dyn Write,
    a: &CompareArgs,
    runs: &[(String, Vec<RunReport>)],
    points: &[PointComparison],
) -> Result<()> {
    let first = &runs[0].1[0];
    writeln!(
        out,
        "# compare    {} rounds of {} in turn (each round starting with the next), {}, TP {}, {} timed \
         requests a point a round",
        a.rounds,
        runs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join(", "),
        first.plan.shape.model.name,
        first.plan.shape.tp,
        first.plan.iterations
    )?;
    let coverage = points.first().and_then(|p| p.candidates.first()).map_or(0.0, |c| c.gbps.coverage);
    writeln!(
        out,
        "#            GB/s: the median over the rounds of each round's row; interval: between two rounds' values, \
         {:.0}% sure to hold the median (no assumption on the distribution{})",
        100.0 * coverage,
        if coverage < rounds::COVERAGE { "; 6 rounds or more give 95%" } else { "" }
    )?;
    writeln!(
        out,
        "#            vs {}: the ratio of medians, within the ratio of the intervals' ends; where the intervals \
         overlap, the rounds tell no difference",
        runs[0].0
    )?;
    for (label, reports) in runs {
        // What each candidate moved over, as its library said (the last round's).
        let r = reports.last().expect("a round each");
        let path = [&r.sender_transport, &r.receiver_transport].into_iter().find_map(|t| t.path.clone());
        writeln!(
            out,
            "# {label:<10} {}{}",
            r.receiver_transport.summary,
            path.map(|p| format!("; path {p}")).unwrap_or_default()
        )?;
    }
    writeln!(
        out,
        "#{:>8} {:>7}  {:<9} {:>12} {:>19} {:>8} {:>14}",
        "gran",
        "prompt",
        "candidate",
        "GB/s median",
        "interval",
        format!("vs {}", runs[0].0),
        "interval"
    )?;
    for p in points {
        for c in &p.candidates {
            let vs = match &c.vs_first {
                None => String::new(),
                Some(r) => format!(
                    "{:>7.1}% {:>14}{}",
                    100.0 * r.ratio,
                    format!("{:.1}-{:.1}%", 100.0 * r.low, 100.0 * r.high),
                    if r.significant { "" } else { "  no significant difference" }
                ),
            };
            let row = format!(
                " {:>8} {:>7}  {:<9} {:>12.3} {:>19} {vs}",
                p.granularity.to_string(),
                p.prompt,
                c.candidate,
                c.gbps.median,
                format!("{:.3}-{:.3}", c.gbps.low, c.gbps.high)
            );
            writeln!(out, "{}", row.trim_end())?;
        }
    }
    Ok(())
}
