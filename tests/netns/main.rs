//! Real hosts, real partitions: the coordinator and every worker each run in their own Linux network
//! namespace, joined by veth pairs to a bridge in a "switch" namespace (10.77.0.0/24, addresses that
//! exist only there); workers have their own cache folders, `--no-shared-fs`, and the coordinator's
//! folder hidden, so every byte goes over the (virtual) wire. Faults are injected on the links:
//! a switch port goes down (partition), the coordinator moves to another address behind a name the
//! workers re-resolve, a link is rate-limited with `tc tbf`.
//!
//! Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2; skips with a message otherwise.
//! Budgets are tiny (built-in synthetic dataset, 64 px); `NNUNET_NETNS_LONG=1` (scripts/netns_long.sh)
//! runs longer partitions and budgets. Each scenario prints a `NETNS-RESULT {json}` line with its timings.
mod cluster;
mod lab;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The scenarios share the machine's cores and time faults against training progress: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether the longer variant was asked for (`NNUNET_NETNS_LONG=1`).
pub fn long() -> bool {
    std::env::var("NNUNET_NETNS_LONG").is_ok_and(|v| v == "1")
}

/// A work folder, or `None` (with a SKIP message) where namespaces cannot be made.
pub fn setup(what: &str) -> Option<tempfile::TempDir> {
    if let Err(why) = lab::can_make_namespaces() {
        eprintln!("SKIP netns {what}: {why}");
        return None;
    }
    // Under /tmp: the workers' mount namespaces hide the coordinator's folder by path.
    Some(tempfile::Builder::new().prefix("nnunet-netns-").tempdir().unwrap())
}

/// The built-in synthetic dataset (`n` training cases, `n_test` test images, `size` px), converted
/// into `<work>/coord/raw/Dataset001_Synth`: the coordinator's side of the filesystem.
pub fn synth_dataset(work: &Path, n: usize, n_test: usize, size: usize) -> PathBuf {
    let nnunet = nnunet_tests::bin("nnunet");
    let data = work.join("data");
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok(Command::new(&nnunet).args(["synth", "--cases", &(n + n_test).to_string(), "--size", &size.to_string(), "--out"]).arg(&data));
    let mut names: Vec<PathBuf> = std::fs::read_dir(data.join("images")).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    std::fs::create_dir_all(data.join("test")).unwrap();
    for p in names.iter().skip(n) {
        std::fs::rename(p, data.join("test").join(p.file_name().unwrap())).unwrap();
        std::fs::remove_file(data.join("masks").join(p.file_name().unwrap())).unwrap();
    }
    let raw = work.join("coord/raw");
    let mut c = Command::new(&nnunet);
    c.arg("convert").arg("--images").arg(data.join("images")).arg("--masks").arg(data.join("masks"));
    if n_test > 0 {
        c.arg("--test-images").arg(data.join("test"));
    }
    ok(c.arg("--out").arg(&raw).args(["--id", "1", "--name", "Synth"]));
    raw.join("Dataset001_Synth")
}

#[test]
fn partitioned_worker_is_fenced_and_its_fold_resumes_elsewhere() {
    let _g = serial();
    let Some(work) = setup("worker partition") else { return };
    scenarios::worker_partition(work.path());
}

#[test]
fn coordinator_partitioned_from_all_workers_loses_no_epoch() {
    let _g = serial();
    let Some(work) = setup("coordinator partition") else { return };
    scenarios::coordinator_partition(work.path(), false);
}

#[test]
fn coordinator_partition_workers_keep_training() {
    let _g = serial();
    let Some(work) = setup("coordinator partition (strict)") else { return };
    scenarios::coordinator_partition(work.path(), true);
}

#[test]
fn coordinator_moves_to_another_address_and_the_run_completes() {
    let _g = serial();
    let Some(work) = setup("coordinator moves") else { return };
    scenarios::coordinator_moves(work.path());
}

#[test]
fn slow_link_checkpoint_streaming_barely_slows_training() {
    let _g = serial();
    let Some(work) = setup("slow link") else { return };
    scenarios::slow_link(work.path());
}

#[test]
fn lab_cleans_up_namespaces_links_and_processes() {
    let _g = serial();
    if let Err(why) = lab::can_make_namespaces() {
        eprintln!("SKIP netns cleanup: {why}");
        return;
    }
    let (prefix, mut child) = {
        let mut l = lab::Lab::new();
        let a = l.add_host("a", 2, std::net::Ipv4Addr::new(10, 77, 0, 2));
        let b = l.add_host("b", 3, std::net::Ipv4Addr::new(10, 77, 0, 2));
        let hosts = std::fs::read_to_string(format!("/etc/netns/{}/hosts", a.ns)).unwrap();
        assert!(hosts.contains(&format!("10.77.0.2 {}", lab::COORD_NAME)), "{hosts}");
        // a and b reach each other, and nothing else: no default route, no other address.
        assert!(lab::reachable(&a.ns, "10.77.0.3:9"), "a reaches b over the bridge");
        let routes = lab::sh("ip", &["-n", &a.ns, "route", "show"]).unwrap();
        assert!(!routes.contains("default"), "{routes}");
        l.partition(&b);
        assert!(!lab::reachable(&a.ns, "10.77.0.3:9"), "partitioned b still answers");
        l.heal(&b);
        assert!(lab::reachable(&a.ns, "10.77.0.3:9"), "healed b answers again");
        // A stray process in a namespace is killed by the guard.
        let child = Command::new("ip").args(["netns", "exec", &b.ns, "sleep", "300"]).spawn().unwrap();
        let t = std::time::Instant::now();
        while !lab::sh("ip", &["netns", "pids", &b.ns]).unwrap().split_whitespace().any(|p| p == child.id().to_string()) {
            assert!(t.elapsed() < std::time::Duration::from_secs(5), "the stray process never entered {}", b.ns);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (l.prefix.clone(), child)
    };
    let list = lab::sh("ip", &["netns", "list"]).unwrap();
    assert!(!list.contains(&prefix), "namespaces left behind:\n{list}");
    assert!(!Path::new(&format!("/etc/netns/{prefix}-a")).exists(), "/etc/netns entry left behind");
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > std::time::Duration::from_secs(5) {
            let _ = child.kill();
            panic!("process {} in the lab's namespace survived its clean-up", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the stray process was killed by the clean-up: {status}");
    let links = lab::sh("ip", &["link", "show"]).unwrap();
    assert!(!links.contains(&prefix), "links left in the root namespace:\n{links}");
}
