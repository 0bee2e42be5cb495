//! A two-region lab in Linux network namespaces, for partition tests:
//! one namespace per region's proxy (`eu`, `us`), the test process (the
//! client group, and discovery) in the root namespace. Links are veth
//! pairs; this kernel has no netem, so partitions cut links (`ip link set
//! … down`), they never add delay.
//!
//! ```text
//!   root (clients, discovery) ──a── eu      a: 10.201.K.0/24   root .1, eu .2
//!        │                          │       b: 10.201.K+1.0/24 root .1, us .2
//!        └──────────b────────── us ─c─┘     c: 10.201.K+2.0/24 eu .1,  us .2
//! ```
//!
//! Clients reach each proxy over its own link (`a`, `b`). `eu` reaches
//! discovery through `us` (over `c`, forwarded by `us`), and `us` probes
//! `eu` over `c`, so cutting `a` alone is an asymmetric partition: the
//! clients lose `eu`, the proxies and discovery do not. Cutting `a` and `c`
//! isolates `eu` entirely.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2: [`Lab::try_new`] says why not
//! otherwise, and tests skip. Everything is removed on drop, also after a
//! panic (namespaces, veths, root routes).

use std::process::Command;

pub struct Lab {
    tag: String,
    pub eu_ns: String,
    pub us_ns: String,
    /// Third octet of link `a`; `b` and `c` follow.
    k: u8,
    root_routes: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// Builds the lab, or says why it cannot (not root, no iproute2, …).
    pub fn try_new() -> Result<Lab, String> {
        let pid = std::process::id();
        let tag = format!("t{}", pid % 100_000);
        let k = ((pid % 60) * 4) as u8 + 4;
        let mut lab = Lab {
            eu_ns: format!("{tag}-eu"),
            us_ns: format!("{tag}-us"),
            tag,
            k,
            root_routes: Vec::new(),
        };
        // The probe: may this process add a namespace at all?
        ip(&["netns", "add", &lab.eu_ns])
            .map_err(|e| format!("ip netns add is not permitted here: {e}"))?;
        lab.build()?;
        Ok(lab)
    }

    pub fn eu_ip(&self) -> String {
        format!("10.201.{}.2", self.k)
    }
    pub fn us_ip(&self) -> String {
        format!("10.201.{}.2", self.k + 1)
    }
    /// The root namespace's address on link `b`: where both proxies reach
    /// discovery.
    pub fn root_ip_for_proxies(&self) -> String {
        format!("10.201.{}.1", self.k + 1)
    }

    fn names(&self) -> [String; 6] {
        let t = &self.tag;
        [
            format!("{t}re"), // root end of a
            format!("{t}er"), // eu end of a
            format!("{t}ru"), // root end of b
            format!("{t}ur"), // us end of b
            format!("{t}ec"), // eu end of c
            format!("{t}uc"), // us end of c
        ]
    }

    fn build(&mut self) -> Result<(), String> {
        let [re, er, ru, ur, ec, uc] = self.names();
        let (eu, us) = (self.eu_ns.clone(), self.us_ns.clone());
        let (a, b, c) = (self.k, self.k + 1, self.k + 2);
        ip(&["netns", "add", &us])?;
        for ns in [&eu, &us] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["link", "add", &re, "type", "veth", "peer", "name", &er])?;
        ip(&["link", "set", &er, "netns", &eu])?;
        ip(&["link", "add", &ru, "type", "veth", "peer", "name", &ur])?;
        ip(&["link", "set", &ur, "netns", &us])?;
        ip(&["link", "add", &ec, "type", "veth", "peer", "name", &uc])?;
        ip(&["link", "set", &ec, "netns", &eu])?;
        ip(&["link", "set", &uc, "netns", &us])?;
        ip(&["addr", "add", &format!("10.201.{a}.1/24"), "dev", &re])?;
        ip(&["addr", "add", &format!("10.201.{b}.1/24"), "dev", &ru])?;
        ip(&[
            "-n",
            &eu,
            "addr",
            "add",
            &format!("10.201.{a}.2/24"),
            "dev",
            &er,
        ])?;
        ip(&[
            "-n",
            &us,
            "addr",
            "add",
            &format!("10.201.{b}.2/24"),
            "dev",
            &ur,
        ])?;
        ip(&[
            "-n",
            &eu,
            "addr",
            "add",
            &format!("10.201.{c}.1/24"),
            "dev",
            &ec,
        ])?;
        ip(&[
            "-n",
            &us,
            "addr",
            "add",
            &format!("10.201.{c}.2/24"),
            "dev",
            &uc,
        ])?;
        for dev in [&re, &ru] {
            ip(&["link", "set", dev, "up"])?;
        }
        for (ns, dev) in [(&eu, &er), (&eu, &ec), (&us, &ur), (&us, &uc)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // us forwards eu's traffic to and from discovery.
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &us,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "sysctl in {us}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Root: eu's link-c address through us; eu's link-a network
        // unreachable at once (not via the default route) when a is cut.
        let via_us = format!("10.201.{c}.0/24");
        ip(&["route", "replace", &via_us, "via", &format!("10.201.{b}.2")])?;
        self.root_routes.push(via_us);
        let eu_net = format!("10.201.{a}.0/24");
        ip(&["route", "replace", "unreachable", &eu_net, "metric", "1000"])?;
        self.root_routes
            .push(format!("unreachable {eu_net} metric 1000"));
        self.peer_routes()
    }

    /// The routes over link `c` (re-applied after it comes back up).
    fn peer_routes(&self) -> Result<(), String> {
        let (a, b, c) = (self.k, self.k + 1, self.k + 2);
        ip(&[
            "-n",
            &self.eu_ns,
            "route",
            "replace",
            &format!("10.201.{b}.0/24"),
            "via",
            &format!("10.201.{c}.2"),
        ])?;
        ip(&[
            "-n",
            &self.us_ns,
            "route",
            "replace",
            &format!("10.201.{a}.0/24"),
            "via",
            &format!("10.201.{c}.1"),
        ])
    }

    /// Cuts link `a`: the clients lose `eu`; the proxies and discovery
    /// still reach it (an asymmetric partition).
    pub fn cut_clients_from_eu(&self) {
        let [re, ..] = self.names();
        ip(&["link", "set", &re, "down"]).expect("cut link a");
    }

    /// Cuts links `a` and `c`: `eu` is isolated from everything.
    pub fn isolate_eu(&self) {
        let [re, _, _, _, ec, _] = self.names();
        ip(&["link", "set", &re, "down"]).expect("cut link a");
        ip(&["-n", &self.eu_ns, "link", "set", &ec, "down"]).expect("cut link c");
    }

    /// Restores every link and route.
    pub fn heal(&self) {
        let [re, _, _, _, ec, _] = self.names();
        ip(&["link", "set", &re, "up"]).expect("restore link a");
        ip(&["-n", &self.eu_ns, "link", "set", &ec, "up"]).expect("restore link c");
        self.peer_routes().expect("restore routes over c");
    }

    /// A command run inside namespace `ns`.
    pub fn command_in(ns: &str, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for r in &self.root_routes {
            let args: Vec<&str> = ["route", "del"]
                .into_iter()
                .chain(r.split_whitespace())
                .collect();
            let _ = ip(&args);
        }
        let [re, _, ru, ..] = self.names();
        // Deleting one end of a veth deletes the pair; deleting a
        // namespace deletes the ends inside it.
        let _ = ip(&["link", "del", &re]);
        let _ = ip(&["link", "del", &ru]);
        let _ = ip(&["netns", "del", &self.eu_ns]);
        let _ = ip(&["netns", "del", &self.us_ns]);
    }
}
