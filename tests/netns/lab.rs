//! A private network of Linux network namespaces: one "switch" namespace holding a bridge, and one
//! namespace per host (coordinator, workers, the user's machine) joined to it by a veth pair. The
//! addresses (10.77.0.0/24) exist only inside these namespaces, which have no default route: nothing
//! a process in them does can reach any other network.
//!
//! Names carry the test process's pid (`nn<pid>x<n>-<host>`) so parallel runs never collide, and a
//! new lab first removes the labs of test processes that are gone (killed before their Drop ran).
//! Dropping a [`Lab`] kills whatever still runs in its namespaces and deletes them with their links
//! and `/etc/netns/<ns>/` folders; `scripts/netns-cleanup.sh` does the same from a shell.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The name under which the hosts reach the coordinator (an `/etc/hosts` entry per namespace).
pub const COORD_NAME: &str = "coordinator.nnunet.internal";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip`/`tc` and returns stdout, or an error with its stderr.
pub fn sh(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog).args(args).output().map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{prog} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(prog: &str, args: &[&str]) -> String {
    sh(prog, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether this process may create network namespaces; the reason when it may not.
pub fn can_make_namespaces() -> Result<(), String> {
    if sh("ip", &["-V"]).is_err() {
        return Err("`ip` (iproute2) is not installed".into());
    }
    let probe = format!("nn{}probe", std::process::id());
    match sh("ip", &["netns", "add", &probe]) {
        Ok(_) => {
            let _ = sh("ip", &["netns", "del", &probe]);
            Ok(())
        }
        Err(e) => Err(format!("cannot create a network namespace (needs root or CAP_NET_ADMIN + CAP_SYS_ADMIN): {e}")),
    }
}

/// One host: a namespace with `eth0` at `addr`, plugged into the switch through `port`.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
    /// The switch side of the veth pair (in the switch namespace).
    pub port: String,
}

pub struct Lab {
    pub prefix: String,
    switch: String,
    hosts: Vec<Host>,
}

/// Removes labs whose owning test process no longer exists.
fn remove_stale() {
    let Ok(list) = sh("ip", &["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("nn") else { continue };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if pid.is_empty() || !rest[pid.len()..].starts_with('x') || !name.contains('-') {
            continue;
        }
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("netns: removing {name}, left over by test process {pid} that is gone");
        delete_ns(name);
    }
}

fn delete_ns(ns: &str) {
    if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
        for p in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain kill(2) of a process inside a namespace this harness created.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    if let Err(e) = sh("ip", &["netns", "del", ns]) {
        eprintln!("netns: {e}");
    }
    let etc = PathBuf::from("/etc/netns").join(ns);
    if etc.exists() {
        if let Err(e) = std::fs::remove_dir_all(&etc) {
            eprintln!("netns: removing {}: {e}", etc.display());
        }
    }
}

impl Lab {
    /// A switch namespace with a bridge; hosts are added with [`Lab::add_host`].
    pub fn new() -> Lab {
        remove_stale();
        let prefix = format!("nn{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let switch = format!("{prefix}-sw");
        must("ip", &["netns", "add", &switch]);
        let lab = Lab { prefix, switch, hosts: vec![] };
        must("ip", &["-n", &lab.switch, "link", "set", "lo", "up"]);
        must("ip", &["-n", &lab.switch, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &lab.switch, "link", "set", "br0", "up"]);
        lab
    }

    /// Adds a host `tag` (at most 3 characters) at 10.77.0.`last`, with `/etc/netns/<ns>/hosts`
    /// naming the coordinator at `coord`.
    pub fn add_host(&mut self, tag: &str, last: u8, coord: Ipv4Addr) -> Host {
        assert!(tag.len() <= 3, "host tags are short: interface names have 15 characters");
        let ns = format!("{}-{tag}", self.prefix);
        let port = format!("{}{tag}", self.prefix);
        let addr = Ipv4Addr::new(10, 77, 0, last);
        must("ip", &["netns", "add", &ns]);
        let h = Host { ns: ns.clone(), addr, port: port.clone() };
        self.hosts.push(h.clone());
        // Both ends are created inside their namespaces: nothing appears in the root namespace.
        must("ip", &["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &self.switch]);
        must("ip", &["-n", &self.switch, "link", "set", &port, "master", "br0", "up"]);
        must("ip", &["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        self.set_coordinator(&h, coord);
        h
    }

    /// Points the host's coordinator name at `coord`. The file is rewritten in place: `ip netns
    /// exec` bind-mounts it over /etc/hosts, and a rename would leave running processes on the old one.
    pub fn set_coordinator(&self, h: &Host, coord: Ipv4Addr) {
        use std::io::Write;
        let dir = PathBuf::from("/etc/netns").join(&h.ns);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!("127.0.0.1 localhost\n{} {}\n{coord} {COORD_NAME}\n", h.addr, h.ns);
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(dir.join("hosts")).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    /// Cuts the host off the switch (its switch port goes down, like a flapping port: the host's
    /// packets are dropped silently and its connections hang rather than fail).
    pub fn partition(&self, h: &Host) {
        must("ip", &["-n", &self.switch, "link", "set", &h.port, "down"]);
    }

    pub fn heal(&self, h: &Host) {
        must("ip", &["-n", &self.switch, "link", "set", &h.port, "up"]);
    }

    /// Rate-limits both directions of the host's link with a token bucket filter.
    pub fn throttle(&self, h: &Host, kbit: u32) -> Result<(), String> {
        let rate = format!("{kbit}kbit");
        // burst >= rate/HZ, latency bounds the queue; 64 KiB of burst at these rates.
        sh("tc", &["-n", &h.ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "64kb", "latency", "500ms"])?;
        sh(
            "tc",
            &["-n", &self.switch, "qdisc", "replace", "dev", &h.port, "root", "tbf", "rate", &rate, "burst", "64kb", "latency", "500ms"],
        )?;
        Ok(())
    }

    pub fn unthrottle(&self, h: &Host) {
        let _ = sh("tc", &["-n", &h.ns, "qdisc", "del", "dev", "eth0", "root"]);
        let _ = sh("tc", &["-n", &self.switch, "qdisc", "del", "dev", &h.port, "root"]);
    }

    /// Packets the host's veth end sent/received (to show that traffic went over the wire).
    pub fn link_bytes(&self, h: &Host) -> (u64, u64) {
        let read = |f: &str| sh("ip", &["netns", "exec", &h.ns, "cat", &format!("/sys/class/net/eth0/statistics/{f}")]);
        let n = |r: Result<String, String>| r.ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        (n(read("tx_bytes")), n(read("rx_bytes")))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in self.hosts.iter().rev() {
            delete_ns(&h.ns);
        }
        delete_ns(&self.switch);
    }
}

/// Runs `f` on a thread that has joined `ns`'s network namespace (for the test's own HTTP calls,
/// e.g. `/metrics`): the test process itself stays in the root namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on this thread only, with a namespace file descriptor we own.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {}: {}", path.display(), std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// `GET http://addr/path` from inside `ns`.
pub fn http_get(ns: &str, addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let path = path.to_string();
    in_netns(ns, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| e.to_string())?;
        Ok(body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(body))
    })
}

/// Whether `addr` answers from inside `ns` within 2 s: a connection, or a refusal (a reset sent by
/// the host), both mean the packets got there; a timeout or an unreachable network mean they did not.
pub fn reachable(ns: &str, addr: &str) -> bool {
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    in_netns(ns, move || match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    })
}
