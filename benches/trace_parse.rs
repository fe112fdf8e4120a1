//! How long a conversation trace of a million lines takes to parse: the
//! fault matrix found 1.5 hours (a linear search per conversation id); it
//! must be seconds (issue 37).
//! Run: cargo bench --bench trace_parse [-- LINES]

use std::fmt::Write;
use std::time::Instant;

fn main() {
    let lines: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    // 200,000 conversations of 5 turns, their turns in order, 64 tokens in and 16 out.
    let conversations = (lines / 5).max(1);
    let mut text = String::from("arrival_ms,prompt_tokens,output_tokens,conversation,turn\n");
    let mut context = vec![0u64; conversations];
    for i in 0..lines {
        let c = i % conversations;
        let prompt = context[c] + 64;
        writeln!(text, "{:.3},{prompt},16,c{c},{}", i as f64 * 0.01, i / conversations + 1).unwrap();
        context[c] = prompt + 16;
    }
    let t = Instant::now();
    let arrivals = kvxfer::schedule::parse_trace(&text, "trace").expect("a good trace");
    let took = t.elapsed();
    assert_eq!(arrivals.len(), lines);
    println!(
        "{lines} lines ({} MB), {conversations} conversations: parsed in {:.2} s",
        text.len() / 1_000_000,
        took.as_secs_f64()
    );
}
