//! What a run's gate needs of its plan, checked before anything runs (on
//! the sender, and on the receiver when a sender's plan arrives): a floor
//! names a prompt length the plan measures, a percentage has a peak, a p99
//! has 100 requests a point, an added-TTFT ceiling has emulated prefill.
//! report::gate judges the run itself.

use super::Plan;

/// The gate's flags, as far as a plan can satisfy them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GateNeeds {
    /// Each flag with the prompt lengths it names.
    pub named: Vec<(&'static str, Vec<u32>)>,
    /// A flag that judges a share of the link's peak.
    pub peak: Option<&'static str>,
    /// Flags that judge a p99.
    pub tails: Vec<&'static str>,
    /// A flag that judges what the transfer adds to time-to-first-token.
    pub prefill: Option<&'static str>,
}

/// Requests a point needs for its p99 to be a tail rather than one of its
/// few largest values (figures::LatencySummary::p99_supported).
pub const TAIL_REQUESTS: u32 = 100;

impl GateNeeds {
    /// Why `plan` cannot be judged by this gate, if it cannot; `peak`:
    /// whether the sender named the link's peak (--link).
    pub fn check(&self, plan: &Plan, peak: bool) -> Result<(), String> {
        let lengths = || plan.prompt_lengths.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
        for (flag, named) in &self.named {
            if let Some(t) = named.iter().find(|t| !plan.prompt_lengths.contains(t)) {
                return Err(format!(
                    "{flag} names {t} tokens, which this run does not measure (its prompt lengths: {})",
                    lengths()
                ));
            }
        }
        if let (Some(flag), false) = (self.peak, peak) {
            return Err(format!(
                "{flag} needs the peak: give --link PRESET or GB/s to the sender (kvxfer-send or kvxfer pair)"
            ));
        }
        if let Some(flag) = self.prefill.filter(|_| plan.prefill.is_none()) {
            return Err(format!(
                "{flag} judges what the transfer adds to time-to-first-token, which needs emulated prefill \
                 (--prefill-tflops or --prefill-ms)"
            ));
        }
        // Under --duration the count is the arrivals', known only as they come.
        let counted = plan.load.as_ref().is_none_or(|l| l.duration_ns.is_none());
        if let Some(flag) = self.tails.first().filter(|_| counted && plan.iterations < TAIL_REQUESTS) {
            return Err(format!(
                "{flag} judges a p99, which takes {TAIL_REQUESTS} timed requests a point; this run times {} \
                 (-n {TAIL_REQUESTS} or more)",
                plan.iterations
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(lengths: &[u32], iterations: u32) -> Plan {
        let mut p = super::super::sample_plan("llama-3.1-8b", lengths);
        p.iterations = iterations;
        p
    }

    #[test]
    fn a_gate_the_plan_cannot_satisfy_is_refused_with_the_fix() {
        let none = GateNeeds::default();
        assert_eq!(none.check(&plan(&[128], 1), false), Ok(()));
        let named = GateNeeds { named: vec![("--min-gbps", vec![128, 8192])], ..GateNeeds::default() };
        let e = named.check(&plan(&[128, 1024], 1), false).unwrap_err();
        assert!(e.contains("--min-gbps names 8192 tokens") && e.contains("lengths: 128, 1024"), "{e}");
        assert_eq!(named.check(&plan(&[128, 8192], 1), false), Ok(()));
        let peak = GateNeeds { peak: Some("--min-percent-of-peak"), ..GateNeeds::default() };
        assert!(peak.check(&plan(&[128], 1), false).unwrap_err().contains("give --link"));
        assert_eq!(peak.check(&plan(&[128], 1), true), Ok(()));
        let tail = GateNeeds { tails: vec!["--max-p99"], ..GateNeeds::default() };
        assert!(tail.check(&plan(&[128], 99), false).unwrap_err().contains("this run times 99 (-n 100"));
        assert_eq!(tail.check(&plan(&[128], 100), false), Ok(()));
        let ttft = GateNeeds { prefill: Some("--max-added-ttft"), ..GateNeeds::default() };
        assert!(ttft.check(&plan(&[128], 100), false).unwrap_err().contains("--prefill-tflops"));
    }
}
