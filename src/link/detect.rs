//! The theoretical peak without `--link`: PCIe generation and width and NIC
//! speeds from sysfs, NVLinks between two GPUs from NVML. Each figure says
//! where it came from. Paths are read under a root, so tests run on fixture
//! trees.

use super::Link;
use std::path::{Path, PathBuf};

pub struct Sysfs {
    root: PathBuf,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// GB/s per direction of a PCIe link: GT/s x lanes x line-code efficiency / 8.
pub fn pcie_gbps(gts: f64, width: u32) -> f64 {
    let code = match gts {
        g if g <= 5.0 => 8.0 / 10.0,     // gen 1, 2: 8b/10b
        g if g <= 32.0 => 128.0 / 130.0, // gen 3 to 5
        _ => 242.0 / 256.0,              // gen 6: FLIT
    };
    gts * width as f64 * code / 8.0
}

impl Sysfs {
    pub fn system() -> Sysfs {
        Sysfs { root: PathBuf::from("/") }
    }

    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The PCIe link of a device ("0000:00:07.0"), as trained now.
    pub fn pcie(&self, bdf: &str) -> Option<Link> {
        let dir = self.root.join("sys/bus/pci/devices").join(bdf.to_ascii_lowercase());
        let speed = read(&dir.join("current_link_speed"))?; // "16.0 GT/s PCIe"
        let gts: f64 = speed.split_whitespace().next()?.parse().ok()?;
        let width: u32 = read(&dir.join("current_link_width"))?.parse().ok()?;
        (gts > 0.0 && width > 0).then(|| Link {
            name: format!("PCIe {gts} GT/s x{width}"),
            peak_gbps: pcie_gbps(gts, width),
            source: format!("{}: current_link_speed {speed}, current_link_width {width}", dir.display()),
        })
    }

    /// An Ethernet (or IPoIB) interface's negotiated speed.
    pub fn net(&self, ifname: &str) -> Option<Link> {
        let path = self.root.join("sys/class/net").join(ifname).join("speed");
        let mbps: f64 = read(&path)?.parse().ok().filter(|v: &f64| *v > 0.0)?;
        Some(Link {
            name: format!("{ifname} {} Gb/s", mbps / 1000.0),
            peak_gbps: mbps / 8000.0,
            source: format!("{}: {mbps} Mb/s", path.display()),
        })
    }

    /// Every network interface with a speed (not lo, not down).
    pub fn interfaces(&self) -> Vec<Link> {
        let Ok(dir) = std::fs::read_dir(self.root.join("sys/class/net")) else { return Vec::new() };
        let mut names: Vec<String> =
            dir.flatten().map(|d| d.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names.iter().filter_map(|n| self.net(n)).collect()
    }

    /// Every active RDMA port (InfiniBand, RoCE, EFA) and its rate; EFA
    /// devices are named so.
    pub fn rdma_ports(&self) -> Vec<Link> {
        let base = self.root.join("sys/class/infiniband");
        let Ok(devices) = std::fs::read_dir(&base) else { return Vec::new() };
        let mut names: Vec<String> =
            devices.flatten().map(|d| d.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let mut out = Vec::new();
        for dev in names {
            let driver = std::fs::read_link(base.join(&dev).join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let Ok(ports) = std::fs::read_dir(base.join(&dev).join("ports")) else { continue };
            let mut ports: Vec<PathBuf> = ports.flatten().map(|p| p.path()).collect();
            ports.sort();
            for port in ports {
                let active = read(&port.join("state")).is_some_and(|s| s.contains("ACTIVE"));
                let Some(rate) = read(&port.join("rate")) else { continue }; // "400 Gb/sec (4X NDR)"
                let Some(gbit) = rate.split_whitespace().next().and_then(|g| g.parse::<f64>().ok()) else {
                    continue;
                };
                if !active || gbit <= 0.0 {
                    continue;
                }
                let kind = if driver == "efa" { "EFA" } else { "RDMA" };
                let p = port.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(Link {
                    name: format!("{kind} {dev}:{p} {gbit} Gb/s"),
                    peak_gbps: gbit / 8.0,
                    source: format!("{}: {rate}", port.join("rate").display()),
                });
            }
        }
        out
    }
}

/// The network interface a local address is configured on (getifaddrs).
pub fn interface_with(ip: std::net::IpAddr) -> Option<String> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list freed below; each entry is read while it lives.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = head;
        while !cur.is_null() && found.is_none() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                let addr = match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(std::net::IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(std::net::IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => None,
                };
                if addr == Some(ip) {
                    found = Some(std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned());
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree as a Linux host with an H200 on PCIe 5 x16, a 100 GbE
    /// NIC, a ConnectX-7 port and two EFA devices (one port down) shows it.
    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let path = t.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{s}\n")).unwrap();
        };
        w("sys/bus/pci/devices/0000:18:00.0/current_link_speed", "32.0 GT/s PCIe");
        w("sys/bus/pci/devices/0000:18:00.0/current_link_width", "16");
        w("sys/bus/pci/devices/0000:19:00.0/current_link_speed", "8 GT/s");
        w("sys/bus/pci/devices/0000:19:00.0/current_link_width", "8");
        w("sys/class/net/eth0/speed", "100000");
        w("sys/class/net/eth1/speed", "-1");
        w("sys/class/infiniband/mlx5_0/ports/1/rate", "400 Gb/sec (4X NDR)");
        w("sys/class/infiniband/mlx5_0/ports/1/state", "4: ACTIVE");
        for (dev, state) in [("rdmap16s27", "4: ACTIVE"), ("rdmap17s27", "1: DOWN")] {
            w(&format!("sys/class/infiniband/{dev}/ports/1/rate"), "100 Gb/sec (4X EDR)");
            w(&format!("sys/class/infiniband/{dev}/ports/1/state"), state);
            let drv = t.path().join("sys/bus/pci/drivers/efa");
            std::fs::create_dir_all(&drv).unwrap();
            let dev_dir = t.path().join(format!("sys/class/infiniband/{dev}/device"));
            std::fs::create_dir_all(&dev_dir).unwrap();
            std::os::unix::fs::symlink(&drv, dev_dir.join("driver")).unwrap();
        }
        t
    }

    #[test]
    fn pcie_links_follow_generation_and_width() {
        let t = fixture();
        let s = Sysfs::at(t.path());
        let gen5 = s.pcie("0000:18:00.0").unwrap();
        assert!((gen5.peak_gbps - 63.0).abs() < 0.05, "{gen5:?}");
        assert_eq!(gen5.name, "PCIe 32 GT/s x16");
        assert!(gen5.source.ends_with("current_link_speed 32.0 GT/s PCIe, current_link_width 16"));
        let gen3x8 = s.pcie("0000:19:00.0").unwrap();
        assert!((gen3x8.peak_gbps - 7.877).abs() < 0.01, "{gen3x8:?}");
        assert!(s.pcie("0000:aa:00.0").is_none());
        assert!((pcie_gbps(2.5, 1) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn two_gpus_without_nvlink_meet_at_the_slower_pcie_link() {
        let t = fixture();
        let sides = super::super::Sides {
            same_host: true,
            sender_gpu: Some("0000:18:00.0"),
            receiver_gpu: Some("0000:19:00.0"),
            gpu_to_gpu: true,
            local_interface: None,
        };
        // No NVML here (or no such GPUs on a GPU machine): PCIe it is.
        let l = super::super::detect(&sides, &Sysfs::at(t.path())).unwrap();
        assert_eq!(l.name, "PCIe 8 GT/s x8");
        let host_only = super::super::Sides { sender_gpu: None, receiver_gpu: None, ..sides };
        assert!(super::super::detect(&host_only, &Sysfs::at(t.path())).is_none());
        // Across hosts: the NIC of the control connection.
        let remote =
            super::super::Sides { same_host: false, local_interface: Some("eth0".into()), ..host_only };
        let nic = super::super::detect(&remote, &Sysfs::at(t.path())).unwrap();
        assert_eq!(nic.peak_gbps, 12.5);
        assert!(nic.source.starts_with("the NIC of the control connection (eth0)"), "{}", nic.source);
    }

    #[test]
    fn nics_report_their_speed_and_down_ones_nothing() {
        let t = fixture();
        let s = Sysfs::at(t.path());
        assert_eq!(s.net("eth0").unwrap().peak_gbps, 12.5);
        assert!(s.net("eth1").is_none(), "speed -1: no carrier");
        let ports = s.rdma_ports();
        let names: Vec<&str> = ports.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["RDMA mlx5_0:1 400 Gb/s", "EFA rdmap16s27:1 100 Gb/s"]);
        assert_eq!(ports[0].peak_gbps, 50.0);
    }
}
