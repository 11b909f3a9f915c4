//! mTLS for workers: `nnunet serve --tls-client-ca` over real loopback with certificates made here
//! (rcgen). A worker without a client certificate is refused with a hint, one whose certificate
//! another CA signed is refused at the handshake, and one with a certificate of the right CA trains a
//! fold to the end. Users' clients (submit, status) still connect with the token alone.
use super::{free_port, run_ok, SERIAL, TOKEN};
use nnunet_tests::bin;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A self-signed CA named `name`.
fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate signed by `ca`, written to `<dir>/<name>.pem` and `<name>.key`.
fn leaf(dir: &Path, name: &str, ca: &CertifiedIssuer<'static, KeyPair>, sans: &[&str], usage: ExtendedKeyUsagePurpose) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

/// Runs a process to its end, killed after `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child: Child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn workers_need_a_client_certificate_of_the_coordinators_ca() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (ours, theirs) = (ca("nnunet test CA"), ca("another CA"));
    std::fs::write(d.join("ca.pem"), ours.pem()).unwrap();
    leaf(d, "server", &ours, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    leaf(d, "worker", &ours, &["worker"], ExtendedKeyUsagePurpose::ClientAuth);
    leaf(d, "intruder", &theirs, &["worker"], ExtendedKeyUsagePurpose::ClientAuth);
    let token = d.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let ds = nnunet_tests::synthetic_dataset(d, 8, 32, 1, "Synth");

    let port = free_port();
    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let mut serve = Command::new(bin("nnunet"));
    serve.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--lease-ttl-secs", "10", "--threads", "1"]);
    serve.arg("--state-dir").arg(d.join("state")).arg("--token-file").arg(&token);
    serve.arg("--tls-cert").arg(d.join("server.pem")).arg("--tls-key").arg(d.join("server.key"));
    serve.arg("--tls-client-ca").arg(d.join("ca.pem"));
    let _serve = Serve(serve.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).spawn().unwrap());
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the coordinator did not start:\n{}",
            std::fs::read_to_string(d.join("serve.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("https://127.0.0.1:{port}");
    let worker = |cache: &str, cert: Option<&str>| {
        let mut c = Command::new(bin("nnunet-worker"));
        c.args(["--coordinator", &url, "--device", "cpu", "--threads", "1", "--reconnect-timeout-secs", "3", "--exit-when-idle"]);
        c.arg("--tls-ca").arg(d.join("ca.pem")).arg("--token-file").arg(&token).arg("--cache-dir").arg(d.join(cache));
        if let Some(name) = cert {
            c.arg("--tls-cert").arg(d.join(format!("{name}.pem"))).arg("--tls-key").arg(d.join(format!("{name}.key")));
        }
        c
    };

    // No client certificate: the TLS handshake passes (users' clients need none), the worker call is refused.
    let out = output_within(worker("cache-none", None), Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "a worker without a client certificate is refused for good (exit 3):\n{err}");
    assert!(err.contains("client certificate") && !err.contains("registered with"), "{err}");

    // A certificate of another CA: refused at the handshake, never registered.
    let out = output_within(worker("cache-intruder", Some("intruder")), Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("registered with"), "a certificate of another CA must be refused:\n{err}");

    // The user submits over TLS with the token alone; the worker with the right certificate trains the fold.
    let nnunet = |args: &[&str]| {
        let mut c = Command::new(bin("nnunet"));
        c.args(args).args(["--coordinator", &url]).arg("--tls-ca").arg(d.join("ca.pem")).arg("--token-file").arg(&token);
        c
    };
    let run = run_ok(nnunet(&["submit", "--epochs", "1", "--iters", "2", "--val-iters", "1", "--folds", "0"]).arg("--dataset").arg(&ds))
        .trim()
        .to_string();
    assert!(run.starts_with("run-"), "{run}");
    let out = output_within(worker("cache-ok", Some("worker")), Duration::from_secs(600));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("registered with") && err.contains("leased"), "{:?}\n{err}", out.status);
    let st: serde_json::Value = serde_json::from_str(&run_ok(&mut nnunet(&["status", &run, "--json"]))).unwrap();
    assert_eq!(st["state"], "DONE", "{st}");
    let serve_log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    assert!(serve_log.contains("workers need a client certificate"), "{serve_log}");
}
