//! Theoretical peaks of the links a KV transfer crosses, one direction, in
//! GB/s (1e9 bytes per second), each with where the figure comes from.

pub mod detect;
pub mod nvml;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    /// Peak one-way bandwidth in GB/s (1e9 bytes per second).
    pub peak_gbps: f64,
    pub source: String,
}

struct Preset {
    name: &'static str,
    gbps: f64,
    source: &'static str,
}

const PRESETS: &[Preset] = &[
    // PCIe x16 per direction: GT/s x 16 lanes x encoding / 8 bits.
    Preset { name: "pcie3", gbps: 15.75, source: "PCIe 3.0 x16: 8 GT/s x 16 x 128/130 / 8" },
    Preset { name: "pcie4", gbps: 31.5, source: "PCIe 4.0 x16: 16 GT/s x 16 x 128/130 / 8" },
    Preset { name: "pcie5", gbps: 63.0, source: "PCIe 5.0 x16: 32 GT/s x 16 x 128/130 / 8" },
    Preset { name: "pcie6", gbps: 121.0, source: "PCIe 6.0 x16: 64 GT/s x 16 x 242/256 (FLIT) / 8" },
    // NVLink per direction, whole GPU: links x 25 GB/s.
    Preset { name: "nvlink3", gbps: 300.0, source: "NVLink 3 (A100 SXM): 12 links x 25 GB/s per direction" },
    Preset {
        name: "nvlink4",
        gbps: 450.0,
        source: "NVLink 4 (H100/H200 SXM): 18 links x 25 GB/s per direction",
    },
    Preset { name: "nvlink5", gbps: 900.0, source: "NVLink 5 (B200): 18 links x 50 GB/s per direction" },
    // Ethernet line rate (IEEE 802.3 MAC data rate) / 8.
    Preset { name: "10gbe", gbps: 1.25, source: "10 Gb/s Ethernet line rate / 8" },
    Preset { name: "25gbe", gbps: 3.125, source: "25 Gb/s Ethernet line rate / 8" },
    Preset { name: "100gbe", gbps: 12.5, source: "100 Gb/s Ethernet line rate / 8" },
    Preset { name: "200gbe", gbps: 25.0, source: "200 Gb/s Ethernet line rate / 8" },
    Preset { name: "400gbe", gbps: 50.0, source: "400 Gb/s Ethernet line rate / 8" },
    // InfiniBand 4x port data rate / 8.
    Preset { name: "hdr200", gbps: 25.0, source: "InfiniBand HDR 4x: 200 Gb/s / 8" },
    Preset { name: "ndr400", gbps: 50.0, source: "InfiniBand NDR 4x (ConnectX-7): 400 Gb/s / 8" },
    Preset { name: "xdr800", gbps: 100.0, source: "InfiniBand XDR 4x: 800 Gb/s / 8" },
    // AWS: per-GPU share of the instance's EFA bandwidth.
    Preset {
        name: "efa-p5",
        gbps: 50.0,
        source: "AWS p5.48xlarge: 3200 Gb/s EFA over 8 GPUs = 400 Gb/s per GPU / 8",
    },
    Preset { name: "efa-p5en", gbps: 50.0, source: "AWS p5en.48xlarge: 16 EFA x 200 Gb/s over 8 GPUs / 8" },
];

/// What the receiver knows when it looks for the peak of a run itself.
pub struct Sides<'a> {
    pub same_host: bool,
    /// The PCI bus ids of the sides' GPUs, where the buffers are GPU memory.
    pub sender_gpu: Option<&'a str>,
    pub receiver_gpu: Option<&'a str>,
    /// Whether the transport moves GPU memory from GPU to GPU (nccl, ucx),
    /// rather than staging it through host memory (tcp).
    pub gpu_to_gpu: bool,
    /// The receiver's network interface on the control connection.
    pub local_interface: Option<String>,
}

/// The link a run crosses, where kvxfer can tell: between two GPUs of one
/// host, moved GPU to GPU, the NVLinks joining them, else the slower of
/// their PCIe links; both sides on one GPU, moved GPU to GPU, no link but
/// that GPU's memory (its copy bandwidth); GPU memory staged through the
/// host, its PCIe link; across hosts, the NIC that carries the control
/// connection. Host memory on one host crosses no link: None.
pub fn detect(s: &Sides, sysfs: &detect::Sysfs) -> Option<Link> {
    if !s.same_host {
        let ifname = s.local_interface.as_deref()?;
        return sysfs.net(ifname).map(|mut l| {
            l.source = format!("the NIC of the control connection ({ifname}), {}", l.source);
            l
        });
    }
    if let (Some(a), Some(b), true) = (s.sender_gpu, s.receiver_gpu, s.gpu_to_gpu) {
        // Two processes on one GPU cross neither NVLink nor PCIe; without
        // NVML's memory figures there is no ceiling rather than a wrong one.
        if a == b {
            return nvml::memory_copy(a);
        }
        if let Some(l) = nvml::between(a, b) {
            return Some(l);
        }
    }
    let pcie: Vec<Link> =
        [s.sender_gpu, s.receiver_gpu].into_iter().flatten().filter_map(|g| sysfs.pcie(g)).collect();
    pcie.into_iter().min_by(|a, b| a.peak_gbps.total_cmp(&b.peak_gbps))
}

/// The ceiling of a fan's aggregate (N pairs at once through one hub):
/// the pairs' links, each counted once however many pairs share it (two
/// senders on one GPU share its NVLinks to the receiver), and never more
/// than the hub's own attachment (all its NVLinks, its PCIe link), which
/// every pair crosses. None unless every pair's link is known.
pub fn fan_ceiling(pairs: &[Option<Link>], hub_attachment: Option<Link>) -> Option<Link> {
    let pairs: Vec<&Link> = pairs.iter().map(Option::as_ref).collect::<Option<_>>()?;
    let mut distinct: Vec<&Link> = Vec::new();
    for l in pairs {
        if !distinct.iter().any(|d| d.name == l.name && d.source == l.source) {
            distinct.push(l);
        }
    }
    let sum = match distinct.as_slice() {
        [] => return None,
        [one] => (*one).clone(),
        many => Link {
            name: many.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(" + "),
            peak_gbps: many.iter().map(|l| l.peak_gbps).sum(),
            source: format!(
                "the sum of the pairs' {} distinct links: {}",
                many.len(),
                many.iter().map(|l| l.source.as_str()).collect::<Vec<_>>().join("; ")
            ),
        },
    };
    match hub_attachment {
        Some(cap) if cap.peak_gbps < sum.peak_gbps => Some(Link {
            source: format!("the hub's own attachment, which every pair crosses: {}", cap.source),
            ..cap
        }),
        _ => Some(sum),
    }
}

/// What GPU `bus` is attached by, of the kind of `like` (one of its
/// pairs' links): all its NVLinks, or its PCIe link. None for other links.
pub fn attachment(bus: &str, like: &Link, sysfs: &detect::Sysfs) -> Option<Link> {
    match like.name.split_whitespace().next() {
        Some("NVLink") => nvml::all_links(bus),
        Some("PCIe") => sysfs.pcie(bus),
        _ => None,
    }
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// The fastest link kvxfer takes, in GB/s: 100 TB/s, 50 times NVLink 5's
/// 1.8 TB/s a GPU. A peak or a floor past it is a typo, not a fabric.
pub const MAX_GBPS: f64 = 100_000.0;

/// A preset name (pcie5, nvlink4, 100gbe, efa-p5 ...) or a figure in GB/s ("37.5").
pub fn parse(s: &str) -> Result<Link> {
    let want = s.trim().to_ascii_lowercase();
    if let Some(p) = PRESETS.iter().find(|p| p.name == want) {
        return Ok(Link { name: p.name.to_string(), peak_gbps: p.gbps, source: p.source.to_string() });
    }
    let number = want.trim_end_matches("gb/s").trim();
    match number.parse::<f64>() {
        Ok(v) if v > MAX_GBPS => {
            Err(Error::usage(format!("--link {s}: past {MAX_GBPS} GB/s, the fastest link kvxfer takes")))
        }
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Link {
            name: format!("{v} GB/s"),
            peak_gbps: v,
            source: "given on the command line".to_string(),
        }),
        _ => Err(Error::usage(format!(
            "unknown --link '{s}': give a peak in GB/s (e.g. 37.5) or one of {}",
            preset_names().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_numbers() {
        assert_eq!(parse("nvlink4").unwrap().peak_gbps, 450.0);
        assert_eq!(parse("EFA-P5").unwrap().peak_gbps, 50.0);
        assert_eq!(parse("100gbe").unwrap().peak_gbps, 12.5);
        assert_eq!(parse("37.5").unwrap().peak_gbps, 37.5);
        assert_eq!(parse("12GB/s").unwrap().peak_gbps, 12.0);
        assert!(parse("warp-drive").is_err());
        assert!(parse("-4").is_err());
        assert!(parse("0").is_err());
        assert!(parse("1e30").unwrap_err().message.contains("past 100000 GB/s"));
    }

    fn link(name: &str, gbps: f64, source: &str) -> Link {
        Link { name: name.into(), peak_gbps: gbps, source: source.into() }
    }

    #[test]
    fn a_fan_counts_each_link_once_and_never_past_the_hub() {
        let nv01 = link("NVLink x18", 450.0, "NVML: 18 active NVLinks from 0:06 to 0:07");
        let nv21 = link("NVLink x18", 450.0, "NVML: 18 active NVLinks from 0:08 to 0:07");
        // Two senders on GPU 0 into GPU 1: one set of NVLinks.
        let two_on_one = fan_ceiling(&[Some(nv01.clone()), Some(nv01.clone())], None).unwrap();
        assert_eq!(two_on_one, nv01);
        // Senders on two GPUs: two sets, summed ...
        let two = fan_ceiling(&[Some(nv01.clone()), Some(nv21.clone())], None).unwrap();
        assert_eq!(two.peak_gbps, 900.0);
        assert_eq!(two.name, "NVLink x18 + NVLink x18");
        // ... but no more than the receiving GPU's own NVLinks.
        let hub = link("NVLink x18 (all of 0:07)", 450.0, "NVML: 18 active NVLinks of 0:07");
        let capped = fan_ceiling(&[Some(nv01.clone()), Some(nv21)], Some(hub)).unwrap();
        assert_eq!(capped.peak_gbps, 450.0);
        assert!(capped.source.starts_with("the hub's own attachment"), "{}", capped.source);
        // A pair without a known link leaves the fan without one.
        assert!(fan_ceiling(&[Some(nv01), None], None).is_none());
        assert!(fan_ceiling(&[], None).is_none());
    }

    #[test]
    fn pcie_figures_follow_their_formula() {
        let per_dir = |gts: f64| gts * 16.0 * 128.0 / 130.0 / 8.0;
        assert!((parse("pcie4").unwrap().peak_gbps - per_dir(16.0)).abs() < 0.05);
        assert!((parse("pcie5").unwrap().peak_gbps - per_dir(32.0)).abs() < 0.05);
    }
}
