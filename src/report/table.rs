//! The table on stdout: a commented header that says what was measured and
//! how, one row per sweep point as it completes, a verdict line.

use super::{Exporter, RunReport};
use crate::error::Result;
use crate::figures::load::LoadFigures;
use crate::figures::prefill::PrefillFigures;
use crate::figures::PointResult;
use crate::plan::prefill::PrefillTime;
use crate::plan::{Overlap, VerifyMode};
use crate::session::Role;
use crate::units::{fmt_bytes, fmt_ns};
use std::io::Write;

pub struct Table {
    pub layout: Layout,
}

impl Exporter for Table {
    fn export(&self, report: &RunReport, out: &mut dyn Write) -> Result<()> {
        header(report, self.layout, out)?;
        for p in &report.points {
            row(report, p, self.layout, out)?;
        }
        footer(report, self.layout, out)
    }
}

/// How the table is laid out: its columns, and the width its `#` lines are
/// wrapped to (a terminal's; None leaves them whole, for files and grep).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub columns: Columns,
    pub wrap: Option<usize>,
}

impl Layout {
    /// `--wide` where it fits, on a terminal `terminal` columns wide (None:
    /// not a terminal): a terminal narrower than the wide table gets the
    /// narrow one, and `#` lines wrapped to its width.
    pub fn choose(wide: bool, terminal: Option<usize>) -> Layout {
        let columns = match (wide, terminal) {
            (true, Some(w)) if w < WIDE_WIDTH => Columns::Narrow,
            (true, _) => Columns::Wide,
            (false, _) => Columns::Narrow,
        };
        Layout { columns, wrap: terminal.map(|w| w.max(60)) }
    }

    pub const NARROW: Layout = Layout { columns: Columns::Narrow, wrap: None };
}

/// Which figures a row shows. CSV and JSON keep every figure either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    /// Fits 100 columns: gran, prompt, n, request, p50, p99, max, GB/s,
    /// %peak, wrong.
    Narrow,
    /// Every figure (`--wide`): messages, their sizes and times, p90, p99.9,
    /// mean ± σ and min too; about 190 columns.
    Wide,
}

/// The narrow table's width, and the least a terminal needs for the wide one.
pub const NARROW_WIDTH: usize = 100;
pub const WIDE_WIDTH: usize = 192;

/// Writes `text` with each `#` line longer than `wrap` wrapped.
fn write_lines(out: &mut dyn Write, text: &[u8], wrap: Option<usize>) -> Result<()> {
    for line in String::from_utf8_lossy(text).lines() {
        match wrap.filter(|_| line.starts_with('#')) {
            Some(width) => wrap_comment(line, width).iter().try_for_each(|l| writeln!(out, "{l}"))?,
            None => writeln!(out, "{line}")?,
        }
    }
    out.flush()?;
    Ok(())
}

/// A `#` line cut at spaces into lines of at most `width` characters (a
/// word longer than that stands alone), continuations indented under the
/// text after the label.
fn wrap_comment(line: &str, width: usize) -> Vec<String> {
    const INDENT: &str = "#            ";
    if line.chars().count() <= width {
        return vec![line.to_string()];
    }
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in line.split(' ') {
        let len = current.chars().count();
        if len > INDENT.len() && !word.is_empty() && len + 1 + word.chars().count() > width {
            lines.push(current.trim_end().to_string());
            current = INDENT.to_string();
        }
        match current.as_str() {
            "" => current.push_str(word),
            INDENT if word.is_empty() => {}
            INDENT => current.push_str(word),
            _ => {
                current.push(' ');
                current.push_str(word);
            }
        }
    }
    lines.push(current.trim_end().to_string());
    lines
}

/// Prefill and decode at different TP: the topology, and what each pair of
/// this report moves per block.
fn tp_header(r: &RunReport, t: &crate::plan::TpPlan, out: &mut dyn Write) -> Result<()> {
    let nixl = match (t.topology.layout, t.topology.ratio()) {
        (crate::plan::KvLayout::Nhd, ratio) if ratio != 1 && r.plan.shape.heads_per_rank().is_some() => {
            "; NixlConnector refuses NHD here (heads must be contiguous), kvxfer moves the strided pieces"
        }
        _ => "",
    };
    writeln!(out, "# tp         {}{nixl}", t.topology)?;
    let pairs: Vec<&RunReport> = match &r.fan {
        Some(f) if f.hub && !f.pair_reports.is_empty() => f.pair_reports.iter().collect(),
        _ => vec![r],
    };
    for p in pairs {
        if let (Some(cut), Some((pr, d))) = (p.plan.cut(), p.plan.tp.as_ref().and_then(|t| t.pair)) {
            writeln!(out, "#            prefill rank {pr} -> decode rank {d}: {}", cut.describe())?;
        }
    }
    Ok(())
}

pub fn header(r: &RunReport, layout: Layout, out: &mut dyn Write) -> Result<()> {
    let mut text = Vec::new();
    header_lines(r, layout.columns, &mut text)?;
    write_lines(out, &text, layout.wrap)
}

fn header_lines(r: &RunReport, columns: Columns, out: &mut dyn Write) -> Result<()> {
    who_and_what(r, out)?;
    link_line(r, out)?;
    timing_lines(r, out)?;
    blocks_line(r, out)?;
    prefill_lines(r, out)?;
    turns_line(r, out)?;
    load_lines(r, out)?;
    iterations_line(r, columns, out)?;
    column_heads(columns, out)
}

/// The build and hosts, the model, a fan's shape, the layout (and P x D's), memory and transports.
fn who_and_what(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    let shape = &r.plan.shape;
    let heads = match shape.heads_per_rank() {
        Some(h) => format!("{h} KV heads per rank"),
        None => "MLA latent replicated on every rank".into(),
    };
    writeln!(
        out,
        "# {} | sender {} | receiver {}",
        r.sender.build.line(),
        r.sender.hostname,
        r.receiver.hostname
    )?;
    writeln!(out, "# model      {}", r.model)?;
    if let Some(f) = &r.fan {
        fan_header(f, &r.plan, out)?;
    }
    writeln!(
        out,
        "# layout     {} {} ({heads}), block {} tokens, {} per token per rank",
        if r.plan.tp.is_some() { "decode TP" } else { "TP" },
        shape.tp,
        shape.block_size,
        fmt_bytes(r.kv_bytes_per_token)
    )?;
    if let Some(t) = &r.plan.tp {
        tp_header(r, t, out)?;
    }
    writeln!(
        out,
        "# memory     sender: {}; receiver: {}",
        r.sender_transport.memory, r.receiver_transport.memory
    )?;
    writeln!(out, "# transport  sender:   {}", r.sender_transport.summary)?;
    writeln!(out, "#            receiver: {}", r.receiver_transport.summary)?;
    Ok(())
}

/// The link the %peak column is against, if any.
fn link_line(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    match &r.link {
        Some(l) => {
            let gbps = (l.peak_gbps * 100.0).round() / 100.0;
            writeln!(out, "# link       {}: {gbps} GB/s one way ({})", l.name, l.source)?
        }
        None => writeln!(
            out,
            "# link       none given or found (host memory on one host crosses no link); --link PRESET or GB/s adds a \
             %peak column"
        )?,
    }
    Ok(())
}

/// What a request's time is, and by which clock.
fn timing_lines(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    let rtt = r
        .control_rtt
        .as_ref()
        .map(|c| format!("; control round trip {} median", fmt_ns(c.median_ns as f64)))
        .unwrap_or_default();
    let go = match r.transport.kind {
        crate::transport::TransportKind::Ucx => "its go travels as a UCX message",
        crate::transport::TransportKind::Ofi => "its go travels as a libfabric message",
        _ => "one control hop included",
    };
    writeln!(out, "# timing     request = receiver's go to its last byte, {go}{rtt}")?;
    if r.fan.is_some() {
        // See measure::run_receiver: GPUs shared by processes take turns.
        writeln!(
            out,
            "#            by the host clock: in a fan, GPU events would miss a shared GPU's turns"
        )?;
    }
    Ok(())
}

/// How blocks sit in their pools, at block granularity.
fn blocks_line(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    if r.plan.granularities.contains(&crate::plan::Granularity::Block) {
        writeln!(
            out,
            "# blocks     table {}, pools of {} blocks per (layer, K/V) on each side; {}",
            r.plan.block_table,
            r.plan.pool(),
            match r.plan.coalesce {
                true => "descriptors adjacent on both sides merged into one operation, as NIXL does",
                false => "one operation per block",
            }
        )?;
    }
    Ok(())
}

/// The emulated prefill, if any.
fn prefill_lines(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    if let Some(p) = &r.plan.prefill {
        let time = match &p.time {
            PrefillTime::PerPrompt(pairs) => {
                let each: Vec<String> = pairs.iter().map(|(t, ms)| format!("{t}:{ms}")).collect();
                format!("{} ms per prompt", each.join(","))
            }
            PrefillTime::Tflops(tf) => format!("the model's FLOPs at {tf} TFLOP/s"),
        };
        let style = match p.overlap {
            Overlap::Layer => {
                "each layer's KV handed to the transport as its compute ends (P2pNccl PUT_ASYNC)"
            }
            Overlap::None => "the request's KV handed over once the last layer ends (NixlConnector's pull)",
        };
        writeln!(out, "# prefill    emulated on the sender, {time}; overlap {}: {style}", p.overlap)?;
        writeln!(
            out,
            "#            each point runs twice: the transfer alone (the row), then with the compute (the line \
             under it); added TTFT = last layer's end to the decode side holding the last byte"
        )?;
    }
    Ok(())
}

/// The conversations, if any.
fn turns_line(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    if let Some(c) = &r.plan.conversation {
        let (what, how) = match (&c.conversation, &r.plan.load) {
            (Some(c0), None) => (
                format!("{} turns of {} input and {} output tokens a conversation", c0.turns, c0.input, c0.output),
                format!("{} conversations a mode, one after another", r.plan.iterations),
            ),
            (Some(c0), Some(l)) => (
                format!("{} turns of {} input and {} output tokens a conversation", c0.turns, c0.input, c0.output),
                format!(
                    "{} a mode under the arrivals, taking turns (every turn 1, then every turn 2, ...), each in a \
                     region of its own",
                    match l.duration_ns {
                        Some(_) => "as many conversations as the turns arriving in --duration make whole".to_string(),
                        None => format!("{} conversations", r.plan.iterations),
                    }
                ),
            ),
            (None, _) => (
                "the trace's conversations and turns".to_string(),
                "each conversation in a region of its own from its first turn to its last".to_string(),
            ),
        };
        writeln!(
            out,
            "# turns      {what}, {how}; each turn lands in its conversation's region, the receiver then checks all \
             of it and writes its generated tokens' KV itself; a row per mode, the line under it per turn"
        )?;
    }
    Ok(())
}

/// The arrivals and the decode side's buffer, under load.
fn load_lines(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    if let Some(l) = &r.plan.load {
        let mix: Vec<String> = l.mix.iter().map(|(t, w)| format!("{t}:{w}")).collect();
        let hold = match l.decode_hold_ns {
            0 => "released at its last byte".to_string(),
            ns => format!("held {} after its last byte", fmt_ns(ns as f64)),
        };
        let flight = match l.concurrency {
            1 => "the one before it is done, in order, one at a time".to_string(),
            n => format!("one of {n} lanes (connection and buffer each) is free, {n} in flight at most"),
        };
        writeln!(
            out,
            "# load       requests arrive (seed {}), prompts {}; the receiver starts each at its arrival or when \
             {flight}; decode KV {hold}{}",
            l.seed,
            mix.join(","),
            match l.decode_buffer {
                Some((cap, on_full)) => format!("; decode buffer {} ({on_full} past it)", fmt_bytes(cap)),
                None => String::new(),
            }
        )?;
        writeln!(
            out,
            "#            a row per arrival rate: the row's times are each request's transfer (go to last byte); \
             the line under it queueing (arrival to go) and latency (arrival to last byte)"
        )?;
    }
    Ok(())
}

/// Iterations, checks, what GB/s and n are.
fn iterations_line(r: &RunReport, columns: Columns, out: &mut dyn Write) -> Result<()> {
    let verify = match r.plan.verify {
        VerifyMode::After => "every byte, after each timed request",
        VerifyMode::Inline => "every byte, inside the timed region",
        VerifyMode::Off => "off",
    };
    let columns_note = match columns {
        Columns::Narrow => {
            "n = timed requests; a percentile its count cannot support shows - (p99 needs 100); \
                            --wide adds messages, p90, p99.9, mean ± σ and min"
        }
        Columns::Wide => {
            "n = timed requests; a percentile its count cannot support shows - (p90 needs 10, p99 \
                          100, p99.9 1000)"
        }
    };
    // GB/s is no median: say which figure it is.
    let gbps = match r.plan.load {
        Some(_) => "all bytes over the time some request was on the wire",
        None => "a request's bytes over the mean request time",
    };
    writeln!(
        out,
        "# iterations {} timed + {} warm-up per point; verify: {verify}; GB/s = {gbps}, 1e9 bytes/s; {columns_note}",
        r.plan.iterations, r.plan.warmup
    )?;
    Ok(())
}

/// The column heads.
fn column_heads(columns: Columns, out: &mut dyn Write) -> Result<()> {
    match columns {
        Columns::Narrow => writeln!(
            out,
            "#{:>8} {:>7} {:>5} {:>10} {:>10} {:>10} {:>10} {:>9} {:>6} {:>6}",
            "gran", "prompt", "n", "request", "p50", "p99", "max", "GB/s", "%peak", "wrong"
        )?,
        Columns::Wide => writeln!(
            out,
            "#{:>8} {:>8} {:>5} {:>8} {:>10} {:>10} {:>21} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} \
             {:>10} {:>8} {:>7} {:>6}",
            "gran",
            "prompt",
            "n",
            "msgs",
            "msg size",
            "request",
            "mean ± σ",
            "min",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "msg p50",
            "msg p99",
            "GB/s",
            "%peak",
            "wrong"
        )?,
    }
    Ok(())
}

/// What a fan's figures mean, and who its pairs are.
fn fan_header(f: &super::FanRun, plan: &crate::plan::Plan, out: &mut dyn Write) -> Result<()> {
    let (loaded, tp, turns) = (plan.load.is_some(), plan.tp.is_some(), plan.conversation.is_some());
    let s = &f.seat;
    let (many, one) = match s.shape {
        crate::topology::FanShape::ManyToOne => ("senders", "receiver"),
        crate::topology::FanShape::OneToMany => ("receivers", "sender"),
    };
    if !f.hub {
        writeln!(
            out,
            "# fan        pair {} of {} ({}, {}): this pair's own figures while the others run; the {one} reports \
             the aggregate",
            s.index,
            s.pairs,
            s.shape,
            s.arrow()
        )?;
        return Ok(());
    }
    if loaded {
        let streams = match (s.shape, tp) {
            (_, true) => "the ranks carry shares of one stream of requests (one seed)",
            (crate::topology::FanShape::ManyToOne, false) => {
                "each sender its own arrivals (its own seed), into one decode"
            }
            (crate::topology::FanShape::OneToMany, false) => "each receiver its own arrivals (its own seed)",
        };
        writeln!(
            out,
            "# fan        {} ({}): {} {many}, one buffer per lane each; {streams}",
            s.shape,
            s.arrow(),
            s.pairs
        )?;
        let rows = match s.shape {
            // Conversations under arrivals go one turn at a time on each pair's own lane.
            _ if turns => {
                "the row: every pair's turns together (GB/s and rates summed; a turn's bytes a conversation's, \
                 its times every pair's)"
            }
            crate::topology::FanShape::ManyToOne => {
                "the row: every pair's requests on one clock, one decode buffer; GB/s = all bytes over the time \
                 some request was on the wire"
            }
            crate::topology::FanShape::OneToMany => {
                "the row: the pairs' requests together (GB/s and rates summed; decode peaks summed step by step)"
            }
        };
        writeln!(out, "#            {rows}")?;
        writeln!(out, "#            under each row: each pair's own GB/s and request times")?;
    } else {
        writeln!(
            out,
            "# fan        {} ({}): {} {many}, one buffer each, every request started on all pairs together",
            s.shape,
            s.arrow(),
            s.pairs
        )?;
        writeln!(
            out,
            "#            request = first start to the last pair's last byte; GB/s = all pairs' bytes over it"
        )?;
        writeln!(
            out,
            "#            under each row: each pair's own GB/s and request times (the incast tail)"
        )?;
    }
    for (i, pair) in f.pair_reports.iter().enumerate() {
        let (peer, via) = match s.shape {
            crate::topology::FanShape::ManyToOne => (&pair.sender, &pair.sender_transport),
            crate::topology::FanShape::OneToMany => (&pair.receiver, &pair.receiver_transport),
        };
        let who = &many[..many.len() - 1];
        writeln!(out, "# pair {i:<6}{who} on {} (pid {}): {}", peer.hostname, peer.pid, via.memory)?;
    }
    Ok(())
}

pub fn row(r: &RunReport, p: &PointResult, layout: Layout, out: &mut dyn Write) -> Result<()> {
    let mut text = Vec::new();
    row_lines(r, p, layout.columns, &mut text)?;
    write_lines(out, &text, layout.wrap)
}

/// A row's columns after its first (`first`, 9 characters wide).
fn point_columns(first: &str, prompt: &str, p: &PointResult, wrong: &str, columns: Columns) -> String {
    let l = &p.request_ns;
    // Above 100% the peak is wrong, not the figure: marked, and said below the table.
    let peak = match p.percent_of_peak {
        Some(v) if v > 100.0 => format!("{v:.1}!"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    };
    match columns {
        Columns::Narrow => format!(
            "{first} {:>7} {:>5} {:>10} {:>10} {:>10} {:>10} {:>9.2} {:>6} {:>6}",
            prompt,
            l.count,
            fmt_bytes(p.request_bytes as u64),
            fmt_ns(l.p50 as f64),
            tail(l.p99_supported()),
            fmt_ns(l.max as f64),
            p.gbps,
            peak,
            wrong
        ),
        Columns::Wide => format!(
            "{first} {:>8} {:>5} {:>8} {:>10} {:>10} {:>21} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} \
             {:>8.2} {:>7} {:>6}",
            prompt,
            l.count,
            p.messages,
            fmt_bytes(p.message_bytes as u64),
            fmt_bytes(p.request_bytes as u64),
            format!("{} ± {}", fmt_ns(l.mean), fmt_ns(l.stdev)),
            fmt_ns(l.min as f64),
            fmt_ns(l.p50 as f64),
            tail(l.p90_supported()),
            tail(l.p99_supported()),
            tail(l.p999_supported()),
            fmt_ns(l.max as f64),
            message_ns(p.message_ns.count, p.message_ns.p50),
            tail(p.message_ns.p99_supported()),
            p.gbps,
            peak,
            wrong
        ),
    }
}

fn row_lines(r: &RunReport, p: &PointResult, columns: Columns, out: &mut dyn Write) -> Result<()> {
    let wrong = if r.plan.verify == VerifyMode::Off { "-".into() } else { p.wrong_bytes.to_string() };
    let first = format!(" {:>8}", p.granularity.to_string());
    writeln!(out, "{}", point_columns(&first, &p.prompt_label(), p, &wrong, columns))?;
    if p.is_mix() {
        // Each length of the mix on its own line in the same columns (its
        // bytes checked with the whole row's).
        for one in p.per_length() {
            writeln!(out, "{}", point_columns("#  of mix", &one.prompt_label(), &one, "-", columns))?;
        }
    }
    if let Some(f) = &p.load {
        load_line(f, out)?;
    }
    if let Some(f) = &p.prefill {
        prefill_line(f, out)?;
    }
    if let Some(c) = &p.conversation {
        conversation_line(c, out)?;
    }
    if let Some(f) = &p.fan {
        let each: Vec<String> = f.pair_gbps.iter().map(|g| format!("{g:.2}")).collect();
        let (lo, hi) = f.pair_gbps.iter().fold((f64::MAX, 0f64), |(lo, hi), g| (lo.min(*g), hi.max(*g)));
        let l = &f.pair_request_ns;
        writeln!(
            out,
            "#   pairs GB/s {} (slowest {:.0}% of fastest); pair request p50 {} p99 {} max {}",
            each.join(" "),
            100.0 * lo / hi.max(1e-12),
            fmt_ns(l.p50 as f64),
            tail(l.p99_supported()),
            fmt_ns(l.max as f64)
        )?;
    }
    out.flush()?;
    Ok(())
}

/// A point's figures with emulated prefill, under its row.
fn prefill_line(f: &PrefillFigures, out: &mut dyn Write) -> Result<()> {
    let (a, ms) = (&f.added_ns, |ns: u64| fmt_ns(ns as f64));
    if let Some(longest) = f.by_prompt.iter().max_by_key(|p| (p.asked_ns, p.tokens)) {
        let what = match longest.turn {
            Some(t) => format!("the longest turn's (turn {t}, {} tokens computed)", longest.tokens),
            None => format!("the mix's longest prompt ({} tokens)", longest.tokens),
        };
        writeln!(
            out,
            "#   prefill of {what} {} asked, {} alone | every request: added TTFT p50 {} p99 {} max {} | TTFT \
             p50 {}",
            ms(f.asked_ns),
            ms(f.alone_ns.p50),
            ms(a.p50),
            tail(a.p99_supported()),
            ms(a.max),
            ms(f.ttft_ns.p50)
        )?;
    } else {
        writeln!(
            out,
        "#   prefill {} asked, {} alone, {} during | added TTFT p50 {} p99 {} max {} ({:.1}% of the transfer, \
         bound {}) | TTFT p50 {}",
        ms(f.asked_ns),
        ms(f.alone_ns.p50),
        ms(f.during_ns.p50),
        ms(a.p50),
        tail(a.p99_supported()),
        ms(a.max),
        100.0 * f.exposed_share,
        ms(f.lower_bound_ns),
        ms(f.ttft_ns.p50)
        )?;
    }
    // A mix: the line above is over every request; each length's own
    // follows (a conversation's: each turn's).
    for p in &f.by_prompt {
        let what = match p.turn {
            Some(t) => format!("turn {t}, {} tokens computed", p.tokens),
            None => format!("{} tokens", p.tokens),
        };
        writeln!(
            out,
            "#     {what}: prefill {} asked, {} during | added TTFT p50 {} p99 {} ({:.1}% of its transfer {}, \
             bound {}) | {} requests",
            ms(p.asked_ns),
            ms(p.during_ns.p50),
            ms(p.added_ns.p50),
            tail(p.added_ns.p99_supported()),
            100.0 * p.exposed_share,
            ms(p.transfer_alone_p50_ns),
            ms(p.lower_bound_ns),
            p.added_ns.count
        )?;
    }
    if let Some(l) = &f.under_load {
        load_line_as("with prefill, ", l, out)?;
    }
    Ok(())
}

/// A conversation point's mode and turns, under its row: per turn the
/// tokens' KV moved and the transfer's median.
fn conversation_line(
    c: &crate::figures::conversation::ConversationFigures,
    out: &mut dyn Write,
) -> Result<()> {
    let turns: Vec<String> = c
        .turns
        .iter()
        .map(|t| {
            let back = match t.back_tokens {
                0 => String::new(),
                n => format!("back {n} ({}) {} + ", fmt_bytes(t.back_bytes), fmt_ns(t.back_ns.p50 as f64)),
            };
            match t.moved_tokens {
                0 => format!("{}: -", t.turn),
                n => format!(
                    "{}: {back}{n} ({}) {}",
                    t.turn,
                    fmt_bytes(t.bytes),
                    fmt_ns(t.transfer_ns.p50 as f64)
                ),
            }
        })
        .collect();
    writeln!(
        out,
        "#   {}: {} a conversation, {:.0}% of full's {}{} | turn: tokens moved (bytes) p50 | {}",
        c.mode,
        fmt_bytes(c.bytes),
        100.0 * c.bytes as f64 / c.full_bytes.max(1) as f64,
        fmt_bytes(c.full_bytes),
        match c.regions {
            0 | 1 => String::new(),
            n => format!(
                ", {n} conversations held at once ({} a region, each side)",
                fmt_bytes(c.region_bytes)
            ),
        },
        turns.join(", ")
    )?;
    if let Some(f) = c.decode_prefill_flops {
        writeln!(
            out,
            "#   d-direct: decode prefills the later turns itself, {:.2} TFLOP a conversation",
            f / 1e12
        )?;
    }
    Ok(())
}

/// A load point's figures, under its row.
fn load_line(f: &LoadFigures, out: &mut dyn Write) -> Result<()> {
    load_line_as("", f, out)
}

/// A load point's figures, `label` before its arrivals.
fn load_line_as(label: &str, f: &LoadFigures, out: &mut dyn Write) -> Result<()> {
    let ns = |ns: u64| fmt_ns(ns as f64);
    let (q, l) = (&f.queue_ns, &f.latency_ns);
    writeln!(
        out,
        "#   {label}{}: offered {:.1}/s {:.2} GB/s, achieved {:.1}/s {:.2} GB/s{} | queue p50 {} p99 {} max {} \
         (grew {}) | latency p50 {} p99 {} p99.9 {} max {} | decode holds peak {} p99 {}, prefill peak {}",
        f.arrivals,
        f.offered_qps,
        f.offered_gbps,
        f.achieved_qps,
        f.achieved_gbps,
        if f.saturated { " SATURATED" } else { "" },
        ns(q.p50),
        tail(q.p99_supported()),
        ns(q.max),
        fmt_ns(f.queue_growth_ns.max(0.0)),
        ns(l.p50),
        tail(l.p99_supported()),
        tail(l.p999_supported()),
        ns(l.max),
        fmt_bytes(f.resident.peak_bytes),
        fmt_bytes(f.resident.p99_bytes),
        fmt_bytes(f.prefill_resident.peak_bytes)
    )?;
    if let Some(t) = &f.queue_theory {
        let mg1 = match t.mg1_ns {
            Some(ns) => format!("M/G/1 (Pollaczek-Khinchine) {}, ", fmt_ns(ns)),
            None => String::new(),
        };
        let between = match t.between_ns {
            Some(ns) => format!("; last byte to the next queued request's go {}", fmt_ns(ns)),
            None => String::new(),
        };
        writeln!(
            out,
            "#   queue mean {} at rho {:.2}: {mg1}an ideal server on these arrivals {} (from this run's service \
             times){between}",
            fmt_ns(t.mean_ns),
            t.rho,
            fmt_ns(t.ideal_ns)
        )?;
        if let (true, Some(between)) = (t.harness_bound(), t.between_ns) {
            writeln!(
                out,
                "#   NOTE: kvxfer's own work between requests ({}, {:.0}% of a request's {}: checking the last, \
                 writing the next) is in this queue; --verify inline or off, or --concurrency 2 or more, keeps it \
                 out",
                fmt_ns(between),
                100.0 * between / t.service_ns.max(1.0),
                fmt_ns(t.service_ns)
            )?;
        }
    }
    if let Some(b) = &f.decode_buffer {
        writeln!(
            out,
            "#   decode buffer {} ({}): {} tensors ({}) of {} requests spilled, to the pool in p50 {} max {}, back in \
             p50 {}; pool peak {} | {} requests waited for room, p50 {} max {}",
            fmt_bytes(b.capacity_bytes),
            b.on_full,
            b.spilled_tensors,
            fmt_bytes(b.spilled_bytes),
            b.spilled_requests,
            ns(b.spill_store_ns.p50),
            ns(b.spill_store_ns.max),
            ns(b.spill_load_ns.p50),
            fmt_bytes(b.pooled.peak_bytes),
            b.waited_requests,
            ns(b.wait_ns.p50),
            ns(b.wait_ns.max)
        )?;
    }
    Ok(())
}

/// A tail its sample supports (`LatencySummary::p99_supported`), or "-"
/// where fewer than 1/(1-q) samples leave it no different from the maximum
/// (hyperfine's honesty).
pub fn tail(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), |ns| fmt_ns(ns as f64))
}

/// Whether a point's request times spread too wide for its median to speak
/// for it (as hyperfine warns of outliers): σ over a quarter of the mean, or
/// a maximum over three medians, among at least 5 requests.
pub fn wide_spread(l: &crate::figures::LatencySummary) -> bool {
    l.count >= 5 && (l.stdev > 0.25 * l.mean || l.max as f64 > 3.0 * l.p50 as f64)
}

/// How wide a point's times spread, where too wide (`wide_spread`): "σ 40%
/// of the mean, max 5.2x p50".
pub fn spread(l: &crate::figures::LatencySummary) -> Option<String> {
    wide_spread(l).then(|| {
        format!(
            "σ {:.0}% of the mean, max {:.1}x p50",
            100.0 * l.stdev / l.mean.max(1e-9),
            l.max as f64 / l.p50.max(1) as f64
        )
    })
}

/// A fan's aggregate rows have no message times of their own.
fn message_ns(count: u64, ns: u64) -> String {
    match count {
        0 => "-".into(),
        _ => fmt_ns(ns as f64),
    }
}

pub fn footer(r: &RunReport, layout: Layout, out: &mut dyn Write) -> Result<()> {
    let mut text = Vec::new();
    footer_lines(r, &mut text)?;
    write_lines(out, &text, layout.wrap)
}

fn footer_lines(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    let verdict = match (r.plan.verify, r.wrong_bytes) {
        (VerifyMode::Off, _) => "not verified (--verify off)".to_string(),
        // The receiver checks; a sender learns what it found as each point ends.
        _ if r.verified_bytes == 0 && r.written_by == Role::Sender && r.outcome.starts_with("error") => {
            "nothing verified here: the receiver checks the bytes, and no point finished".to_string()
        }
        _ if r.verified_bytes == 0 => "nothing verified".to_string(),
        (_, 0) => format!("0 wrong bytes in {} verified: OK", fmt_bytes(r.verified_bytes)),
        (_, n) => format!(
            "{n} WRONG BYTES in {} verified; first: {}",
            fmt_bytes(r.verified_bytes),
            r.first_wrong().unwrap_or("?")
        ),
    };
    if let Some(f) = r.points.iter().find_map(|p| p.prefill.as_ref()) {
        writeln!(out, "# prefill    computed by {}", f.compute)?;
    }
    // A mix spreads by its lengths: each is judged on its own.
    let lengths: Vec<PointResult> = r.points.iter().flat_map(|p| p.per_length()).collect();
    for p in &lengths {
        let Some(how) = spread(&p.request_ns) else { continue };
        writeln!(
            out,
            "# spread     {} {}: {how}: outliers (another process on the host or GPU, a cold path); more -n and -w \
             narrow it",
            p.granularity,
            p.prompt_label(),
        )?;
    }
    writeln!(out, "# integrity  {verdict}")?;
    if let Some(g) = &r.gate {
        writeln!(out, "# gate       {}", g.line())?;
    }
    if let Some(c) = &r.ceiling_exceeded {
        writeln!(out, "# CEILING    {} (points: {})", c.note, c.points.join(", "))?;
    }
    for (side, info) in [("sender", &r.sender_transport), ("receiver", &r.receiver_transport)] {
        if let Some(path) = &info.path {
            writeln!(out, "# path       {side}: {path}")?;
        }
    }
    nixl_lines(r, out)?;
    let setup =
        |i: &crate::transport::TransportInfo| i.setup_ns.map(|n| fmt_ns(n as f64)).unwrap_or("?".into());
    if let Some(first) = r.points.first() {
        writeln!(
            out,
            "# cold start transport setup: sender {}, receiver {}; first request of the run {} (not in the figures)",
            setup(&r.sender_transport),
            setup(&r.receiver_transport),
            fmt_ns(first.first_request_ns as f64)
        )?;
    }
    if r.outcome != "ok" && r.outcome != "wrong bytes" {
        writeln!(out, "# outcome    {}", r.outcome)?;
    }
    out.flush()?;
    Ok(())
}

/// NIXL: each point's steps (p50s), and each side's setup.
fn nixl_lines(r: &RunReport, out: &mut dyn Write) -> Result<()> {
    for p in &r.points {
        let Some(n) = &p.nixl else { continue };
        let [ids, make, post, done, notified, nixl_post, nixl_xfer] = n.p50s();
        writeln!(
            out,
            "# nixl       {} {}: p50 of {}: ids {ids}, make {make}, post {post}, post to DONE {done}, notified \
             +{notified}; NIXL's telemetry: post {nixl_post}, transfer {nixl_xfer}; {} descriptors, {} after NIXL \
             merged them",
            p.granularity, p.prompt_tokens, n.requests, n.descriptors, n.merged_descriptors
        )?;
    }
    if r.transport.kind != crate::transport::TransportKind::Nixl {
        return Ok(());
    }
    for (side, info) in [("sender", &r.sender_transport), ("receiver", &r.receiver_transport)] {
        let step =
            |k: &str| info.details.get(&format!("nixl_setup_{k}_ns")).and_then(|v| v.parse::<f64>().ok());
        let parts: Vec<String> = [
            ("agent", "agent"),
            ("backend", "backend"),
            ("register", "registration"),
            ("metadata", "metadata exchange"),
            ("first_transfer", "first transfer"),
        ]
        .iter()
        .filter_map(|(k, words)| step(k).map(|ns| format!("{words} {}", fmt_ns(ns))))
        .collect();
        if !parts.is_empty() {
            writeln!(out, "# nixl setup {side}: {}", parts.join(", "))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_lines_wrap_at_spaces_under_their_label() {
        let line = "# timing     request = receiver's go to its last byte, one control hop included; control round trip";
        let lines = wrap_comment(line, 60);
        assert_eq!(
            lines,
            [
                "# timing     request = receiver's go to its last byte, one",
                "#            control hop included; control round trip"
            ]
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 60));
        // The words, in order, nothing lost.
        let words =
            |s: &str| s.split_whitespace().filter(|w| *w != "#").map(str::to_string).collect::<Vec<_>>();
        assert_eq!(words(&lines.join(" ")), words(line));
        // Short lines and a word longer than the width stay whole.
        assert_eq!(wrap_comment("# short", 60), ["# short"]);
        let long = format!("# path       {}", "x".repeat(80));
        assert_eq!(wrap_comment(&long, 60), std::slice::from_ref(&long));
    }

    #[test]
    fn wide_is_chosen_only_where_it_fits() {
        assert_eq!(Layout::choose(false, None), Layout { columns: Columns::Narrow, wrap: None });
        assert_eq!(Layout::choose(true, None), Layout { columns: Columns::Wide, wrap: None });
        assert_eq!(Layout::choose(true, Some(WIDE_WIDTH - 1)).columns, Columns::Narrow);
        assert_eq!(Layout::choose(true, Some(WIDE_WIDTH)).columns, Columns::Wide);
        assert_eq!(Layout::choose(false, Some(80)).wrap, Some(80));
    }

    #[test]
    fn a_wide_spread_needs_five_requests_and_a_long_tail_or_a_large_sigma() {
        let l = |count, mean: f64, stdev: f64, p50, max| crate::figures::LatencySummary {
            count,
            mean,
            stdev,
            p50,
            max,
            ..Default::default()
        };
        assert!(!wide_spread(&l(20, 100.0, 5.0, 100, 120)));
        assert!(wide_spread(&l(20, 100.0, 30.0, 100, 120)));
        assert!(wide_spread(&l(20, 100.0, 5.0, 100, 301)));
        assert!(!wide_spread(&l(4, 100.0, 50.0, 100, 900)));
    }
}
