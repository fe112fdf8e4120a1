//! `kvxfer matrix`: every ordered pair of N ranks (started by mpirun or
//! srun) measured, to find the slow link of a cluster. Every rank runs a
//! receiver in service mode and a worker that sends when told; rank 0 also
//! coordinates: it hands out the pairs of each step (matrix.rs), collects
//! what each measured, and prints the N x N figures with their median and
//! the pairs below it. Rank and coordinator talk in JSON lines with a
//! heartbeat each second, so a rank that dies or hangs is noticed within
//! --timeout, never waited on forever.

use super::{sender_options, service};
use crate::cli::args::{MatrixArgs, RecvArgs};
use crate::error::{Error, ErrorKind, Result};
use crate::launch::Launch;
use crate::matrix::{self, Cell, Grid};
use crate::memory::MemoryKind;
use crate::net;
use crate::plan::Granularity;
use crate::report::screen::Screen;
use crate::run::sender_side;
use crate::session;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// A rank joins: where its receiver listens.
    Hello {
        rank: usize,
        host: String,
        receiver: String,
    },
    /// Rank 0 to a rank: send to this receiver; `options`: the matrix's
    /// own command line, for a service that has none (--hosts).
    Send {
        to: String,
        peer: usize,
        options: Vec<String>,
    },
    /// What that pair measured.
    Result(Box<PairResult>),
    Beat,
    Quit,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairResult {
    pub from: usize,
    pub to: usize,
    pub points: Vec<PairPoint>,
    pub wrong_bytes: u64,
    pub error: Option<String>,
    /// The gate's verdict where it failed.
    pub gate: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairPoint {
    pub granularity: Granularity,
    pub prompt_tokens: u32,
    pub gbps: f64,
    pub request_p50_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Rank {
    rank: usize,
    host: String,
    receiver: String,
}

impl Rank {
    /// How the tables and heatmaps name it: "3 gpu-node-7".
    fn name(&self) -> String {
        format!("{} {}", self.rank, self.host)
    }
}

/// One rank's line to another: a heartbeat each second from a thread, and
/// reads that give up after `timeout` of silence.
struct Link {
    reader: BufReader<TcpStream>,
    writer: Arc<Mutex<TcpStream>>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
}

impl Link {
    fn new(stream: TcpStream, timeout: Duration) -> Result<Link> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(timeout))?;
        let writer = Arc::new(Mutex::new(stream.try_clone()?));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (writer.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Relaxed) {
                if write_line(&w, &Line::Beat).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Ok(Link { reader: BufReader::new(stream), writer, stop, timeout })
    }

    fn send(&self, line: &Line) -> Result<()> {
        write_line(&self.writer, line).map_err(|e| Error::run(format!("the line broke: {e}")))
    }

    /// The next line that is not a heartbeat.
    fn recv(&mut self) -> Result<Line> {
        loop {
            let mut text = String::new();
            match self.reader.read_line(&mut text) {
                Ok(0) => return Err(Error::run("it closed the connection")),
                Ok(_) => match serde_json::from_str(&text) {
                    Ok(Line::Beat) => continue,
                    Ok(line) => return Ok(line),
                    Err(e) => return Err(Error::run(format!("it sent an unreadable line: {e}"))),
                },
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Err(Error::run(format!("silent for {:?} (--timeout)", self.timeout)))
                }
                Err(e) => return Err(Error::run(format!("the connection failed: {e}"))),
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

fn write_line(w: &Mutex<TcpStream>, line: &Line) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).expect("a line serializes");
    text.push('\n');
    w.lock().unwrap_or_else(|e| e.into_inner()).write_all(text.as_bytes())
}

pub fn run(a: &MatrixArgs) -> Result<()> {
    if !a.hosts.is_empty() {
        return run_hosts(a);
    }
    let rendezvous = a.rendezvous.clone().expect("clap requires --rendezvous without --hosts");
    let me = Launch::from_env()?;
    let n = me.size as usize;
    if n < 2 {
        return Err(Error::usage(format!(
            "kvxfer matrix needs at least 2 ranks, not {n}: every pair is two"
        )));
    }
    a.run.check_gate(&a.run.plan()?)?;
    let coordinating = match me.rank {
        0 => {
            let port = net::split_host_port(&rendezvous)?.1;
            Some(net::listen(&format!("[::]:{port}"))?)
        }
        _ => None,
    };
    let working = {
        let (a, me) = (a.clone(), me.clone());
        std::thread::spawn(move || work(&a, &me))
    };
    let coordinated = coordinating.map(|l| {
        let (links, ranks) = gather(a, l, n)?;
        let gone = missing(&ranks, a.run.timeout);
        drive(a, links, ranks, gone)
    });
    let worked = working.join().unwrap_or_else(|_| Err(Error::run("the worker thread panicked")));
    match coordinated {
        // Rank 0's verdict is the job's; its own worker's trouble shows in the matrix.
        Some(result) => result,
        None => worked,
    }
}

/// A rank: a receiver in service mode, and a sender that sends when told.
fn work(a: &MatrixArgs, me: &Launch) -> Result<()> {
    let mut run = a.run.clone();
    let local = match a.ranks_per_node {
        Some(k) => me.rank % k,
        None => me.local_rank,
    };
    run.memory.device += local as usize;
    if run.memory.memory != MemoryKind::Host {
        crate::gpu::init()?;
    }
    let plan = run.plan()?;
    let listen = match a.bind {
        Some(ip) => SocketAddr::new(ip, 0),
        None => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
    };
    let listener = net::listen(&listen.to_string()).or_else(|_| net::listen("0.0.0.0:0"))?;
    let port = listener.local_addr()?.port();
    let recv_args = RecvArgs { forever: true, ..RecvArgs::for_rank(&run, String::new()) };
    let stop = Arc::new(AtomicBool::new(false));
    let receiving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            service::serve_until(
                listener,
                &recv_args,
                &stop,
                service::Service { log_runs: false, isolate: false },
            )
        })
    };
    let result = (|| {
        let deadline = Instant::now() + run.timeout;
        let rendezvous = a.rendezvous.as_deref().unwrap_or_default();
        let stream = net::connect_until(&net::resolve(rendezvous)?, deadline, "matrix rank 0", a.bind)?;
        // The address rank 0 was reached from is the one the others can reach.
        let receiver = SocketAddr::new(stream.local_addr()?.ip(), port).to_string();
        let mut link = Link::new(stream, run.timeout)?;
        let host = crate::env::EnvInfo::collect().hostname;
        link.send(&Line::Hello { rank: me.rank as usize, host, receiver })?;
        take_pairs(&mut link, Some((&run, &plan)), a.bind, me.rank as usize).map_err(|e| e.context("rank 0"))
    })();
    stop.store(true, Relaxed);
    let received = receiving.join().unwrap_or_else(|_| Err(Error::run("the receiver thread panicked")));
    result.and(received)
}

/// One pair, this rank sending: its figures, or why there are none.
fn pair(
    run: &crate::cli::args::RunArgs,
    plan: &crate::plan::Plan,
    bind: Option<std::net::IpAddr>,
    from: usize,
    to: usize,
    addr: &str,
) -> PairResult {
    let screen = Screen::silent();
    // The receiver may still be closing the last step's run when its sender is done.
    let until = Instant::now() + run.timeout;
    let (report, result) = loop {
        let (report, result) =
            sender_side(addr, bind, &sender_options(run), plan.clone(), run.memory.spec(), &screen, None);
        match &result {
            Err(e) if crate::session::is_busy(e) && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => break (report, result),
        }
    };
    let mut out = PairResult::none(from, to);
    if let Some(mut r) = report {
        r.close(result.as_ref().err());
        out.wrong_bytes = r.wrong_bytes;
        out.points = r
            .points
            .iter()
            .map(|p| PairPoint {
                granularity: p.granularity,
                prompt_tokens: p.prompt_tokens,
                gbps: p.gbps,
                request_p50_ns: p.request_ns.p50,
            })
            .collect();
        let gate = run.output.gate();
        if result.is_ok() && !gate.is_empty() {
            out.gate = gate.judge(&r).error().map(|e| e.message);
        }
    }
    out.error = result.err().map(|e| e.message);
    out
}

/// Sends each pair this rank is told to, until told to stop. `own`: the
/// rank's options, under a launcher; a service takes the matrix's own.
fn take_pairs(
    link: &mut Link,
    own: Option<(&crate::cli::args::RunArgs, &crate::plan::Plan)>,
    bind: Option<std::net::IpAddr>,
    me: usize,
) -> Result<()> {
    loop {
        match link.recv()? {
            Line::Send { to, peer, options } => {
                let measured = match own {
                    Some((run, plan)) => pair(run, plan, bind, me, peer, &to),
                    None => match options_of(&options) {
                        Ok((m, plan)) => pair(&m.run, &plan, m.bind, me, peer, &to),
                        Err(e) => PairResult { error: Some(e.message), ..PairResult::none(me, peer) },
                    },
                };
                link.send(&Line::Result(Box::new(measured)))?;
            }
            Line::Quit => return Ok(()),
            _ => {}
        }
    }
}

/// The matrix's options, as its command line gave them.
fn options_of(options: &[String]) -> Result<(MatrixArgs, crate::plan::Plan)> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        matrix: MatrixArgs,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(
        std::iter::once("kvxfer-matrix".to_string()).chain(options.iter().cloned()),
    )
    .map_err(|e| Error::usage(format!("the matrix's options do not parse here: {e}")))?;
    let plan = cli.matrix.run.plan()?;
    Ok((cli.matrix, plan))
}

impl PairResult {
    fn none(from: usize, to: usize) -> PairResult {
        PairResult { from, to, points: Vec::new(), wrong_bytes: 0, error: None, gate: None }
    }
}

/// Each rank's line to rank 0 and what it said of itself, by rank; None
/// where a rank did not join.
type Joined = (Vec<Option<Link>>, Vec<Option<Rank>>);

/// Rank 0 under a launcher: waits for every rank to report.
fn gather(a: &MatrixArgs, listener: TcpListener, n: usize) -> Result<Joined> {
    let timeout = a.run.timeout;
    let mut links: Vec<Option<Link>> = (0..n).map(|_| None).collect();
    let mut ranks: Vec<Option<Rank>> = vec![None; n];
    let deadline = Instant::now() + timeout;
    while ranks.iter().any(Option::is_none) {
        let Some(left) = net::remaining(deadline) else { break };
        let Some((stream, from)) = net::accept_within(&listener, left)? else { break };
        let joined = Link::new(stream, timeout).and_then(|mut link| match link.recv()? {
            Line::Hello { rank, host, receiver } if rank < n && ranks[rank].is_none() => {
                Ok((rank, link, Rank { rank, host, receiver }))
            }
            other => Err(Error::run(format!("{from} did not introduce itself as a new rank: {other:?}"))),
        });
        match joined {
            Ok((rank, link, r)) => {
                eprintln!("kvxfer-matrix: rank {rank} joined from {} ({})", r.host, r.receiver);
                (links[rank], ranks[rank]) = (Some(link), Some(r));
            }
            Err(e) => eprintln!("kvxfer-matrix: {e}"),
        }
    }
    Ok((links, ranks))
}

/// Why each rank that did not join is missing.
fn missing(ranks: &[Option<Rank>], timeout: Duration) -> Vec<Option<String>> {
    let why = |i| format!("rank {i} did not join within {timeout:?} (--timeout)");
    ranks.iter().enumerate().map(|(i, r)| r.is_none().then(|| why(i))).collect()
}

/// Runs the steps over the ranks that joined (`gone`: why each other is
/// missing); reports.
fn drive(
    a: &MatrixArgs,
    mut links: Vec<Option<Link>>,
    ranks: Vec<Option<Rank>>,
    mut gone: Vec<Option<String>>,
) -> Result<()> {
    let n = ranks.len();
    // A service (--hosts) takes the matrix's options from here; ranks have their own.
    let options: Vec<String> = std::env::args().skip_while(|w| w != "matrix").skip(1).collect();
    let steps = matrix::steps(n, a.concurrent_pairs);
    let mut results: Vec<PairResult> = Vec::new();
    let failed = |from, to, why: String| PairResult { error: Some(why), ..PairResult::none(from, to) };
    for (k, step) in steps.iter().enumerate() {
        let mut started = Vec::new();
        for &(i, j) in step {
            if let Some(why) = gone[i].clone().or_else(|| gone[j].clone()) {
                results.push(failed(i, j, why));
                continue;
            }
            let to = ranks[j].as_ref().expect("joined").receiver.clone();
            let send = Line::Send { to, peer: j, options: options.clone() };
            match links[i].as_ref().expect("joined").send(&send) {
                Ok(()) => started.push((i, j)),
                Err(e) => {
                    gone[i] = Some(format!("rank {i} was lost: {e}"));
                    results.push(failed(i, j, gone[i].clone().unwrap_or_default()));
                }
            }
        }
        for (i, j) in started {
            let answer = loop {
                match links[i].as_mut().expect("joined").recv() {
                    Ok(Line::Result(r)) => break Ok(PairResult { from: i, to: j, ..*r }),
                    Ok(_) => continue,
                    Err(e) => break Err(e),
                }
            };
            let r = answer.unwrap_or_else(|e| {
                gone[i] = Some(format!("rank {i} was lost: {e}"));
                failed(i, j, gone[i].clone().unwrap_or_default())
            });
            eprintln!("kvxfer-matrix: step {}/{}: {}", k + 1, steps.len(), pair_line(&r));
            results.push(r);
        }
    }
    for link in links.iter().flatten() {
        let _ = link.send(&Line::Quit);
    }
    let ranks: Vec<Rank> = ranks
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or(Rank { rank: i, host: "?".into(), receiver: "-".into() }))
        .collect();
    conclude(a, &ranks, results)
}

fn pair_line(r: &PairResult) -> String {
    match &r.error {
        Some(e) => format!("{} -> {}: failed: {e}", r.from, r.to),
        None => {
            let each: Vec<String> = r
                .points
                .iter()
                .map(|p| format!("{} {} {:.2} GB/s", p.prompt_tokens, p.granularity, p.gbps))
                .collect();
            format!("{} -> {}: {}", r.from, r.to, each.join(", "))
        }
    }
}

/// The grids, printed and written; the exit status the pairs earned.
fn conclude(a: &MatrixArgs, ranks: &[Rank], results: Vec<PairResult>) -> Result<()> {
    let mut points: Vec<(Granularity, u32)> = Vec::new();
    for p in results.iter().flat_map(|r| &r.points) {
        if !points.contains(&(p.granularity, p.prompt_tokens)) {
            points.push((p.granularity, p.prompt_tokens));
        }
    }
    let grids: Vec<Grid> = points
        .iter()
        .map(|&(g, tokens)| {
            let cells = results
                .iter()
                .map(|r| Cell {
                    from: r.from,
                    to: r.to,
                    gbps: r
                        .points
                        .iter()
                        .find(|p| (p.granularity, p.prompt_tokens) == (g, tokens))
                        .map(|p| p.gbps),
                    error: r.error.clone(),
                })
                .collect();
            Grid::new(label(tokens, g), cells, a.outlier_percent)
        })
        .collect();
    let names: Vec<String> = ranks.iter().map(Rank::name).collect();
    let mut out = String::new();
    let spec = a.run.transport_spec();
    let model = a.run.model.resolve().map(|s| s.model.name).unwrap_or_default();
    out += &format!(
        "# kvxfer matrix: {} ranks, {} over {}, {} memory; pairs of a step: {}\n",
        ranks.len(),
        model,
        spec.kind,
        a.run.memory.memory,
        match a.concurrent_pairs {
            matrix::Concurrency::All => "all at once (each rank sends once and receives once)",
            matrix::Concurrency::One => "one at a time",
        }
    );
    for r in ranks {
        out += &format!("# rank {:<4} {} (receiver {})\n", r.rank, r.host, r.receiver);
    }
    for g in &grids {
        let median = g.median_gbps.map(|m| format!("{m:.2} GB/s")).unwrap_or_else(|| "-".into());
        out += &format!(
            "\n# {}: GB/s, rows send (prefill), columns receive (decode); median {median}; * below {}% of it\n",
            g.label, a.outlier_percent
        );
        out += &g.table(&names);
        for o in &g.outliers {
            out += &format!(
                "# outlier  {} -> {}: {:.2} GB/s, {:.0}% of the median ({} -> {})\n",
                o.from, o.to, o.gbps, o.percent_of_median, ranks[o.from].host, ranks[o.to].host
            );
        }
    }
    let failed: Vec<&PairResult> = results.iter().filter(|r| r.error.is_some()).collect();
    for r in &failed {
        out += &format!("# failed   {}\n", pair_line(r));
    }
    if !a.run.output.quiet {
        print!("{out}");
    }
    let doc = serde_json::json!({
        "kind": "kvxfer-matrix",
        "build": crate::env::BuildInfo::current(),
        "model": model,
        "transport": spec,
        "memory": a.run.memory.memory,
        "concurrent_pairs": a.concurrent_pairs,
        "outlier_percent": a.outlier_percent,
        "ranks": ranks,
        "grids": grids,
        "pairs": results,
    });
    if let Some(path) = &a.run.output.json {
        let text = serde_json::to_string_pretty(&doc).expect("the matrix serializes") + "\n";
        crate::cli::outputs::write_text(path, text)?;
    }
    if let Some(path) = &a.run.output.csv {
        crate::cli::outputs::write_text(path, csv(ranks, &grids, &results))?;
    }
    let wrong: u64 = results.iter().map(|r| r.wrong_bytes).sum();
    if wrong > 0 {
        let pairs: Vec<String> =
            results.iter().filter(|r| r.wrong_bytes > 0).map(|r| format!("{} -> {}", r.from, r.to)).collect();
        return Err(Error::integrity(format!("{wrong} wrong bytes, in pairs {}", pairs.join(", "))));
    }
    if let Some(first) = failed.first() {
        return Err(Error::run(format!(
            "{} of {} pairs failed; first: {}",
            failed.len(),
            results.len(),
            pair_line(first)
        )));
    }
    let below: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.gate.as_ref().map(|g| {
                format!("{} -> {} ({} -> {}): {g}", r.from, r.to, ranks[r.from].host, ranks[r.to].host)
            })
        })
        .collect();
    if !below.is_empty() {
        return Err(Error::new(
            ErrorKind::Gate,
            format!("{} pair(s) below the gate: {}", below.len(), below.join("; ")),
        ));
    }
    Ok(())
}

/// A point's name in the grids: "1024 tokens, layer".
fn label(tokens: u32, g: Granularity) -> String {
    format!("{tokens} tokens, {g}")
}

/// One row per pair and point.
fn csv(ranks: &[Rank], grids: &[Grid], results: &[PairResult]) -> String {
    let mut out = String::from(
        "from_rank,from_host,to_rank,to_host,granularity,prompt_tokens,gbps,request_p50_ns,percent_of_median,outlier,error\n",
    );
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for r in results {
        let (from, to) = (&ranks[r.from].host, &ranks[r.to].host);
        if r.points.is_empty() {
            let why = quote(r.error.as_deref().unwrap_or(""));
            out += &format!("{},{},{},{},,,,,,,{why}\n", r.from, quote(from), r.to, quote(to));
        }
        for p in &r.points {
            let grid = grids.iter().find(|g| g.label == label(p.prompt_tokens, p.granularity));
            let median = grid.and_then(|g| g.median_gbps).filter(|m| *m > 0.0);
            let pct = median.map(|m| format!("{:.1}", 100.0 * p.gbps / m));
            let outlier = grid.is_some_and(|g| g.outliers.iter().any(|o| o.from == r.from && o.to == r.to));
            out += &format!(
                "{},{},{},{},{},{},{:.4},{},{},{},{}\n",
                r.from,
                quote(from),
                r.to,
                quote(to),
                p.granularity,
                p.prompt_tokens,
                p.gbps,
                p.request_p50_ns,
                pct.unwrap_or_default(),
                outlier,
                quote(r.error.as_deref().unwrap_or(""))
            );
        }
    }
    out
}

/// Whether a JSON file is a `kvxfer matrix` report.
pub fn is_matrix(path: &std::path::Path) -> bool {
    let Ok(text) = crate::input::read_text(path, "a report", crate::input::MOST_BYTES) else { return false };
    serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["kind"] == "kvxfer-matrix")
}

/// A matrix report's heatmaps, and its tables printed again.
pub fn draw(path: &std::path::Path, out: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let bad = |e: String| Error::usage(format!("{}: {e}", path.display()));
    let text = crate::input::read_text(path, "a matrix report", crate::input::MOST_BYTES)?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let ranks: Vec<Rank> = serde_json::from_value(doc["ranks"].clone()).map_err(|e| bad(e.to_string()))?;
    let grids: Vec<Grid> = serde_json::from_value(doc["grids"].clone()).map_err(|e| bad(e.to_string()))?;
    let names: Vec<String> = ranks.iter().map(Rank::name).collect();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for g in &grids {
        println!("# {} ({}): GB/s, rows send, columns receive", g.label, path.display());
        print!("{}", g.table(&names));
    }
    crate::report::plot::heatmaps(out, &stem, &names, &grids)
}

/// `kvxfer matrix --hosts a,b,c`: no launcher; each host's service
/// (`kvxfer-recv --forever --matrix`) receives, and sends when asked.
fn run_hosts(a: &MatrixArgs) -> Result<()> {
    if a.hosts.len() < 2 {
        return Err(Error::usage(format!("--hosts names {} host: a matrix needs at least 2", a.hosts.len())));
    }
    a.run.check_gate(&a.run.plan()?)?;
    let (mut links, mut ranks, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for (i, host) in a.hosts.iter().enumerate() {
        let addr = match net::split_host_port(host) {
            Ok(_) => host.clone(),
            Err(_) => format!("{host}:7477"),
        };
        match open_service(&addr, a) {
            Ok((link, name)) => {
                eprintln!("kvxfer-matrix: rank {i} is {addr} ({name})");
                links.push(Some(link));
                ranks.push(Some(Rank { rank: i, host: name, receiver: addr }));
                gone.push(None);
            }
            Err(e) => {
                eprintln!("kvxfer-matrix: rank {i} ({addr}): {e}");
                links.push(None);
                ranks.push(None);
                gone.push(Some(format!("rank {i} ({addr}): {e}")));
            }
        }
    }
    drive(a, links, ranks, gone)
}

/// Asks a host's service to take matrix work; its line and host name.
fn open_service(addr: &str, a: &MatrixArgs) -> Result<(Link, String)> {
    let timeout = a.run.timeout;
    let mut stream = net::connect_until(&net::resolve(addr)?, Instant::now() + timeout, "service", a.bind)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(&session::preamble(session::MATRIX_MAGIC, session::STATUS_OK))?;
    let mut reply = [0u8; 8];
    std::io::Read::read_exact(&mut stream, &mut reply)
        .map_err(|e| Error::run(format!("{addr} did not answer as a kvxfer service: {e}")))?;
    let status = u16::from_be_bytes([reply[6], reply[7]]);
    match (reply[..4] == session::MATRIX_MAGIC, status) {
        (true, session::STATUS_OK) => {}
        (true, session::STATUS_NO_MATRIX) => {
            return Err(Error::run(format!(
                "{addr} is a kvxfer service that does not send for a matrix: start it with kvxfer-recv --forever --matrix"
            )))
        }
        (true, _) => {
            return Err(Error::run(format!(
                "{addr} speaks protocol {}, this kvxfer {}: run the same version everywhere",
                u16::from_be_bytes([reply[4], reply[5]]),
                session::PROTOCOL
            )))
        }
        (false, _) => return Err(Error::run(format!("{addr} is not a kvxfer service in --forever mode"))),
    }
    let mut link = Link::new(stream, timeout)?;
    match link.recv()? {
        Line::Hello { host, .. } => Ok((link, host)),
        other => Err(Error::run(format!("{addr} did not introduce itself: {other:?}"))),
    }
}

/// A service's side of `kvxfer matrix --hosts`: answers, introduces
/// itself, then sends each pair it is told to.
pub fn serve_hosts_matrix(
    mut stream: TcpStream,
    from: SocketAddr,
    version: u16,
    allowed: bool,
    timeout: Duration,
) {
    let status = match (allowed, version == session::PROTOCOL) {
        (false, _) => session::STATUS_NO_MATRIX,
        (true, false) => session::STATUS_VERSION_REFUSED,
        (true, true) => session::STATUS_OK,
    };
    let _ = stream.write_all(&session::preamble(session::MATRIX_MAGIC, status));
    if status != session::STATUS_OK {
        eprintln!("kvxfer-recv: refused matrix work from {from} (status {status}: --matrix not given or another version)");
        return;
    }
    eprintln!("kvxfer-recv: sending for the matrix at {from}");
    let served = Link::new(stream, timeout).and_then(|mut link| {
        let host = crate::env::EnvInfo::collect().hostname;
        link.send(&Line::Hello { rank: 0, host, receiver: String::new() })?;
        take_pairs(&mut link, None, None, 0)
    });
    match served {
        Ok(()) => eprintln!("kvxfer-recv: the matrix at {from} is done"),
        Err(e) => eprintln!("kvxfer-recv: the matrix at {from} ended: {e}"),
    }
}
