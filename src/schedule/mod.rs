//! When requests arrive (serving load): a pure, seeded schedule of
//! arrivals and prompt lengths, the same on both sides for the same plan,
//! so tests assert on it without a network. The engine paces each
//! request's go at its arrival (measure::load); what the decode side holds
//! meanwhile is worked out in `residency`, and what each turn of a
//! conversation moves in `conversation`.

pub mod conversation;
pub mod residency;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How requests arrive at one load point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// Exponential gaps at `qps` requests per second (a Poisson process), seeded.
    Poisson { qps: f64 },
    /// One request every 1/qps seconds.
    Fixed { qps: f64 },
    /// The requests of a trace (`--arrivals trace:FILE`), at `qps` on average.
    Trace { qps: f64 },
}

impl Arrivals {
    /// `--arrivals poisson:2,5,10` or `fixed:20`: one load point per rate.
    pub fn parse_list(s: &str) -> Result<Vec<Arrivals>> {
        let (kind, rates) = s.split_once(':').ok_or_else(|| {
            Error::usage(format!("--arrivals wants poisson:QPS[,QPS...] or fixed:QPS[,QPS...], got '{s}'"))
        })?;
        let make: fn(f64) -> Arrivals = match kind.trim() {
            "poisson" => |qps| Arrivals::Poisson { qps },
            "fixed" => |qps| Arrivals::Fixed { qps },
            other => {
                return Err(Error::usage(format!("--arrivals: unknown kind '{other}' (poisson or fixed)")))
            }
        };
        crate::units::list_items(rates, "--arrivals' rates")?
            .into_iter()
            .map(|r| match r.parse::<f64>() {
                Ok(qps) if qps.is_finite() && (RATES.0..=RATES.1).contains(&qps) => Ok(make(qps)),
                Ok(qps) if qps.is_finite() && qps > 0.0 => Err(Error::usage(format!(
                    "--arrivals: {r} requests per second is outside what kvxfer takes: {} (one in 10,000 s) to \
                     {:.0}",
                    RATES.0, RATES.1
                ))),
                _ => {
                    Err(Error::usage(format!("--arrivals: '{r}' is not a rate above 0 requests per second")))
                }
            })
            .collect()
    }

    pub fn qps(&self) -> f64 {
        match *self {
            Arrivals::Poisson { qps } | Arrivals::Fixed { qps } | Arrivals::Trace { qps } => qps,
        }
    }
}

impl std::fmt::Display for Arrivals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arrivals::Poisson { qps } => write!(f, "poisson {qps}/s"),
            Arrivals::Fixed { qps } => write!(f, "fixed {qps}/s"),
            Arrivals::Trace { qps } => write!(f, "trace {qps:.2}/s"),
        }
    }
}

/// `--prompt-mix 1k:60,8k:30,32k:10`: prompt lengths and their weights.
pub fn parse_mix(s: &str) -> Result<Vec<(u32, f64)>> {
    let mix = crate::units::list_items(s, "--prompt-mix")?
        .into_iter()
        .map(|item| {
            let (tokens, weight) = item
                .split_once(':')
                .ok_or_else(|| Error::usage(format!("--prompt-mix wants TOKENS:WEIGHT, got '{item}'")))?;
            let tokens = match crate::units::parse_token_list(tokens)?.as_slice() {
                [t] if *t > 0 => *t,
                _ => return Err(Error::usage(format!("--prompt-mix: '{tokens}' is not one prompt length"))),
            };
            match weight.trim().parse::<f64>() {
                Ok(w) if w.is_finite() && w >= 0.0 => Ok((tokens, w)),
                _ => Err(Error::usage(format!("--prompt-mix: '{weight}' is not a weight of 0 or more"))),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if mix.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
        return Err(Error::usage(format!("--prompt-mix '{s}': the weights sum to zero")));
    }
    Ok(mix)
}

/// One request of a load point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arrival {
    /// From the point's start.
    pub at_ns: u64,
    pub tokens: u32,
    /// Tokens decode generates for it (a trace's third column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u32>,
    /// A conversation's turn (a trace's fourth and fifth columns): the
    /// conversation, numbered from 0 as the trace first names it, and the
    /// turn, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<(u32, u32)>,
}

/// How many requests a load point makes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Requests(u32),
    /// Those that arrive before this many ns.
    Duration(u64),
}

/// The most requests one load point may make (`--duration` at a high rate).
pub const MOST_REQUESTS: u64 = 10_000_000;

/// Arrivals at the given rate up to `bound`, prompt lengths drawn from
/// `mix` by weight; `seed` makes it reproducible (each load point takes
/// its own). A trace's requests come from `parse_trace` instead.
pub fn schedule(arrivals: Arrivals, mix: &[(u32, f64)], bound: Bound, seed: u64) -> Vec<Arrival> {
    let mut rng = SplitMix64(seed);
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    let gap_ns = 1e9 / arrivals.qps();
    let mut at = 0f64;
    let mut out = Vec::new();
    for k in 0..MOST_REQUESTS {
        at = match arrivals {
            Arrivals::Fixed { .. } | Arrivals::Trace { .. } => k as f64 * gap_ns,
            // The first arrives after a gap too: a stream already running.
            Arrivals::Poisson { .. } => at - (1.0 - rng.unit()).ln() * gap_ns,
        };
        let enough = match bound {
            Bound::Requests(n) => k >= n as u64,
            Bound::Duration(ns) => at >= ns as f64,
        };
        if enough {
            break;
        }
        out.push(draw(&mut rng, mix, total, at));
    }
    out
}

/// One request at `at` ns, its prompt length drawn from the mix by weight.
fn draw(rng: &mut SplitMix64, mix: &[(u32, f64)], total: f64, at: f64) -> Arrival {
    let mut pick = rng.unit() * total;
    let tokens = mix
        .iter()
        .find(|(_, w)| {
            pick -= w;
            pick < 0.0
        })
        .or(mix.iter().rev().find(|(_, w)| *w > 0.0))
        .map_or(0, |(t, _)| *t);
    Arrival { at_ns: at.round() as u64, tokens, output_tokens: None, turn: None }
}

/// The latest arrival a trace may name: 30 days, in ms (the longest wait kvxfer takes).
pub const MOST_TRACE_MS: f64 = 30.0 * 24.0 * 3600e3;

/// Arrival rates kvxfer takes, per second: one request in 10,000 s to ten
/// million a second.
pub const RATES: (f64, f64) = (1e-4, 1e7);

/// A trace: CSV lines `arrival_ms,prompt_tokens[,output_tokens]` in time
/// order (a header line is allowed, `#` starts a comment), or, for
/// conversations, `arrival_ms,prompt_tokens,output_tokens,conversation,turn`
/// on every line: each turn's whole prompt (the conversation so far and the
/// turn's input), the conversation's id (any word) and the turn, from 1, in
/// order. `what` names the file in errors, which give the line.
pub fn parse_trace(text: &str, what: &str) -> Result<Vec<Arrival>> {
    let mut out: Vec<Arrival> = Vec::new();
    // Per conversation, as first named: its id, last turn and context after it.
    let mut conversations: Vec<(String, u32, u64)> = Vec::new();
    let mut named: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || (out.is_empty() && line.starts_with(|c: char| c.is_ascii_alphabetic())) {
            continue;
        }
        let bad = |why: String| Error::usage(format!("{what}, line {}: {why}: '{line}'", n + 1));
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if !matches!(fields.len(), 2 | 3 | 5) {
            return Err(bad(
                "wants arrival_ms,prompt_tokens[,output_tokens], or arrival_ms,prompt_tokens,output_tokens,\
                 conversation,turn"
                    .into(),
            ));
        }
        let ms = match fields[0].parse::<f64>() {
            Ok(ms) if ms.is_finite() && (0.0..=MOST_TRACE_MS).contains(&ms) => ms,
            Ok(ms) if ms.is_finite() && ms > MOST_TRACE_MS => {
                return Err(bad(format!("{} ms is past 30 days, the longest trace kvxfer runs", fields[0])))
            }
            _ => return Err(bad(format!("'{}' is not a time of 0 ms or more", fields[0]))),
        };
        let count = |f: &str, name: &str, least: u32| match f.parse::<u32>() {
            Ok(t) if t >= least => Ok(t),
            _ => Err(bad(format!("'{f}' is not a {name}"))),
        };
        let at_ns = (ms * 1e6).round() as u64;
        if out.last().is_some_and(|a| a.at_ns > at_ns) {
            return Err(bad("out of time order (arrivals must not go back)".into()));
        }
        let tokens = count(fields[1], "positive prompt length", 1)?;
        let conversational = fields.len() == 5;
        if out.first().is_some_and(|a| a.turn.is_some() != conversational) {
            return Err(bad("a trace's lines are all conversation turns (five columns) or none".into()));
        }
        // A conversation's turn may generate nothing; a request alone generates something.
        let (least, name) = match conversational {
            true => (0, "output token count of 0 or more"),
            false => (1, "positive output token count"),
        };
        let output_tokens = fields.get(2).map(|f| count(f, name, least)).transpose()?;
        let turn = match conversational {
            false => None,
            true => {
                let (id, turn) = (fields[3], count(fields[4], "turn number from 1", 1)?);
                // Found by name in a map: a million-line trace parses in linear time.
                let next = conversations.len();
                let c = *named.entry(id.to_string()).or_insert(next);
                if c == next {
                    conversations.push((id.to_string(), 0, 0));
                }
                let (_, last, context) = &mut conversations[c];
                if turn != *last + 1 {
                    return Err(bad(format!(
                        "turn {turn} of conversation '{id}' out of order: its turn {} comes next",
                        *last + 1
                    )));
                }
                if tokens as u64 <= *context {
                    return Err(bad(format!(
                        "turn {turn} of conversation '{id}': a prompt of {tokens} tokens does not hold the \
                         conversation so far ({context} tokens) and a new one"
                    )));
                }
                (*last, *context) = (turn, tokens as u64 + output_tokens.unwrap_or(0) as u64);
                Some((c as u32, turn))
            }
        };
        out.push(Arrival { at_ns, tokens, output_tokens, turn });
    }
    if out.is_empty() {
        return Err(Error::usage(format!("{what} holds no requests")));
    }
    Ok(out)
}

/// A conversation trace's conversations: each one's turns, in order.
pub fn traced_conversations(trace: &[Arrival]) -> Vec<Vec<conversation::Turn>> {
    let mut out: Vec<Vec<conversation::Turn>> = Vec::new();
    for a in trace {
        let Some((c, turn)) = a.turn else { continue };
        if out.len() <= c as usize {
            out.resize_with(c as usize + 1, Vec::new);
        }
        let before = out[c as usize].last().map_or(0, |t: &conversation::Turn| t.context_tokens);
        let prompt = a.tokens as u64;
        let context = prompt + a.output_tokens.unwrap_or(0) as u64;
        out[c as usize].push(conversation::Turn {
            turn,
            before_tokens: before,
            prompt_tokens: prompt,
            context_tokens: context,
        });
    }
    out
}

/// A trace's mean rate: requests over the span of their arrivals.
/// The shortest span an offered rate is taken over: requests that all
/// arrive at once offer a rate no clock can time.
pub const BURST_SPAN_NS: f64 = 1e6;

pub fn trace_qps(trace: &[Arrival]) -> f64 {
    let span = trace.last().map_or(0, |a| a.at_ns) as f64;
    match trace.len() {
        0 | 1 => 1.0,
        // A burst (all at one instant) counts as spread over a millisecond.
        n => (n - 1) as f64 / span.max(BURST_SPAN_NS) * 1e9,
    }
}

/// Steele, Lea and Flood's SplitMix64: small, fast, and the same on every
/// platform, so a seed names one schedule everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_parse_and_refuse_bad_rates() {
        assert_eq!(
            Arrivals::parse_list("poisson:2,5.5").unwrap(),
            vec![Arrivals::Poisson { qps: 2.0 }, Arrivals::Poisson { qps: 5.5 }]
        );
        assert_eq!(Arrivals::parse_list("fixed:20").unwrap(), vec![Arrivals::Fixed { qps: 20.0 }]);
        for bad in ["poisson:0", "fixed:-1", "poisson:", "poisson:inf", "uniform:3", "20"] {
            assert!(Arrivals::parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mixes_parse_and_refuse_zero_sums() {
        assert_eq!(parse_mix("1k:60,8k:30,32k:10").unwrap(), vec![(1024, 60.0), (8192, 30.0), (32768, 10.0)]);
        assert!(parse_mix("1k:0,8k:0").unwrap_err().message.contains("sum to zero"));
        for bad in ["1k", "1k:-1", "0:5", "1k,2k:3", "1k:x"] {
            assert!(parse_mix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_arrivals_are_evenly_spaced() {
        let s = schedule(Arrivals::Fixed { qps: 4.0 }, &[(128, 1.0)], Bound::Requests(5), 1);
        let at: Vec<u64> = s.iter().map(|a| a.at_ns).collect();
        assert_eq!(at, vec![0, 250_000_000, 500_000_000, 750_000_000, 1_000_000_000]);
        assert!(s.iter().all(|a| a.tokens == 128));
    }

    #[test]
    fn poisson_arrivals_keep_their_rate_and_seed() {
        let mix = [(1024, 60.0), (8192, 30.0), (32768, 10.0)];
        let a = schedule(Arrivals::Poisson { qps: 20.0 }, &mix, Bound::Requests(20_000), 7);
        assert_eq!(
            a,
            schedule(Arrivals::Poisson { qps: 20.0 }, &mix, Bound::Requests(20_000), 7),
            "the same seed, the same schedule"
        );
        assert_ne!(a, schedule(Arrivals::Poisson { qps: 20.0 }, &mix, Bound::Requests(20_000), 8));
        // 20,000 exponential gaps of mean 50 ms: the mean within 2% (5 sigma is 3.5%).
        let rate = 20_000.0 / (a.last().unwrap().at_ns as f64 / 1e9);
        assert!((rate / 20.0 - 1.0).abs() < 0.02, "rate {rate}");
        // Gaps are exponential: about e^-1 of them exceed the mean.
        let long = a.windows(2).filter(|w| w[1].at_ns - w[0].at_ns > 50_000_000).count() as f64 / 19_999.0;
        assert!((long - (-1f64).exp()).abs() < 0.02, "{long}");
        // Prompt lengths by weight, within 1.5 points of 60/30/10%.
        for (tokens, weight) in mix {
            let share = a.iter().filter(|r| r.tokens == tokens).count() as f64 / 200.0;
            assert!((share - weight).abs() < 1.5, "{tokens}: {share}%");
        }
        assert!(a.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    }

    #[test]
    fn a_duration_bounds_the_arrivals() {
        let fixed = schedule(Arrivals::Fixed { qps: 4.0 }, &[(128, 1.0)], Bound::Duration(1_000_000_000), 1);
        assert_eq!(fixed.len(), 4, "0, 250, 500 and 750 ms");
        let p =
            schedule(Arrivals::Poisson { qps: 100.0 }, &[(128, 1.0)], Bound::Duration(100_000_000_000), 1);
        assert!((p.len() as f64 / 10_000.0 - 1.0).abs() < 0.05, "{}", p.len());
        assert!(p.last().unwrap().at_ns < 100_000_000_000);
    }

    #[test]
    fn traces_parse_in_order_and_errors_name_the_line() {
        let t = parse_trace(
            "arrival_ms,prompt_tokens,output_tokens\n0,1024,128\n# a pause\n\n12.5,8192\n",
            "t.csv",
        )
        .unwrap();
        assert_eq!(
            t,
            vec![
                Arrival { at_ns: 0, tokens: 1024, output_tokens: Some(128), turn: None },
                Arrival { at_ns: 12_500_000, tokens: 8192, output_tokens: None, turn: None }
            ]
        );
        assert!((trace_qps(&t) - 80.0).abs() < 1e-9);
        for (text, needle) in [
            ("0,128\n5,x\n", "t.csv, line 2: 'x' is not a positive prompt length"),
            ("0,128\n5\n", "line 2: wants arrival_ms,prompt_tokens"),
            ("10,128\n5,128\n", "line 2: out of time order"),
            ("-1,128\n", "line 1: '-1' is not a time of 0 ms or more"),
            ("0,128,0\n", "line 1: '0' is not a positive output token count"),
            ("0,128,1,2\n", "line 1: wants"),
            ("# nothing\n", "t.csv holds no requests"),
        ] {
            let e = parse_trace(text, "t.csv").unwrap_err();
            assert!(e.message.contains(needle), "{text:?}: {}", e.message);
        }
    }

    /// Conversation traces: each turn's whole prompt, the conversation's id
    /// and the turn; ids numbered as first named, turns in order, each
    /// prompt holding the conversation so far.
    #[test]
    fn conversation_traces_keep_each_conversations_turns_in_order() {
        let text = "ms,prompt,output,conversation,turn\n0,100,20,alice,1\n1,50,0,bob,1\n2,220,20,alice,2\n3,80,5,bob,2\n";
        let t = parse_trace(text, "c.csv").unwrap();
        let turns: Vec<Option<(u32, u32)>> = t.iter().map(|a| a.turn).collect();
        assert_eq!(turns, vec![Some((0, 1)), Some((1, 1)), Some((0, 2)), Some((1, 2))]);
        let c = traced_conversations(&t);
        let alice: Vec<(u64, u64, u64)> =
            c[0].iter().map(|t| (t.before_tokens, t.prompt_tokens, t.context_tokens)).collect();
        assert_eq!(alice, vec![(0, 100, 120), (120, 220, 240)]);
        assert_eq!((c[1][1].before_tokens, c[1][1].prompt_tokens, c[1][1].context_tokens), (50, 80, 85));
        for (text, needle) in [
            ("0,100,0,a,2\n", "line 1: turn 2 of conversation 'a' out of order: its turn 1 comes next"),
            (
                "0,100,0,a,1\n1,200,0,a,1\n",
                "line 2: turn 1 of conversation 'a' out of order: its turn 2 comes next",
            ),
            ("0,100,0,a,1\n1,200,0,a,3\n", "line 2: turn 3 of conversation 'a' out of order"),
            (
                "0,100,20,a,1\n1,120,0,a,2\n",
                "a prompt of 120 tokens does not hold the conversation so far (120",
            ),
            (
                "0,100,0,a,1\n1,200\n",
                "line 2: a trace's lines are all conversation turns (five columns) or none",
            ),
            ("0,100,0,a,0\n", "'0' is not a turn number from 1"),
        ] {
            let e = parse_trace(text, "c.csv").unwrap_err();
            assert!(e.message.contains(needle), "{text:?}: {}", e.message);
        }
    }

    #[test]
    fn a_zero_weight_is_never_drawn() {
        let s = schedule(
            Arrivals::Fixed { qps: 1.0 },
            &[(128, 0.0), (256, 1.0), (512, 0.0)],
            Bound::Requests(1000),
            3,
        );
        assert!(s.iter().all(|a| a.tokens == 256));
    }
}
