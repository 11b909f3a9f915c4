//! Client side of the Monitor API for the CLI: connecting (token, TLS), and `submit`, `status`,
//! `watch`, `logs`, `cancel`, `retry`.
use crate::domain::RunState;
use anyhow::{bail, Context, Result};
use nnunet_proto::v1 as pb;
use nnunet_proto::v1::monitor_client::MonitorClient;
use nnunet_proto::wire::{TokenInterceptor, MAX_MESSAGE_BYTES};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Coordinator address, e.g. http://127.0.0.1:50051 or https://coord:50051.
    #[arg(long, env = "NNUNET_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// File holding the shared-secret token (else NNUNET_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify a TLS coordinator.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

pub type Monitor = MonitorClient<InterceptedService<Channel, TokenInterceptor>>;

pub fn read_token(token_file: Option<&Path>) -> Result<Option<String>> {
    if let Some(f) = token_file {
        return Ok(Some(std::fs::read_to_string(f).with_context(|| format!("reading token file {}", f.display()))?.trim().to_string()));
    }
    Ok(std::env::var("NNUNET_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

pub async fn channel(addr: &str, tls_ca: Option<&Path>) -> Result<Channel> {
    match nnunet_proto::endpoint(addr, tls_ca)?.connect().await {
        Ok(c) => Ok(c),
        Err(e) => {
            let chain = format!("{:#}", anyhow::Error::from(e));
            let hint = tls_hint(addr, &chain).unwrap_or_else(|| "is `nnunet serve` running there?".into());
            bail!("cannot reach the coordinator at {addr}: {hint}\n  ({chain})")
        }
    }
}

/// An actionable hint for the TLS mistakes that otherwise show as cryptic errors.
pub fn tls_hint(addr: &str, err: &str) -> Option<String> {
    if err.contains("CaUsedAsEndEntity") {
        return Some(
            "the coordinator's certificate is a CA certificate (e.g. a default `openssl req -x509`), which TLS refuses as a server \
             certificate. Make a leaf certificate signed by your CA, e.g.: openssl req -new -newkey rsa:2048 -nodes -keyout server.key \
             -subj /CN=coord -out server.csr && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
             -extfile <(printf 'subjectAltName=DNS:coord,IP:127.0.0.1\\nbasicConstraints=CA:FALSE') -out server.pem; then serve with \
             --tls-cert server.pem --tls-key server.key and connect with --tls-ca ca.pem"
                .into(),
        );
    }
    if err.contains("UnknownIssuer") || err.contains("invalid peer certificate") {
        return Some("the coordinator's certificate is not trusted: pass its CA with --tls-ca".into());
    }
    let plaintext_to_tls =
        ["h2 protocol error", "frame with invalid size", "connection reset", "broken pipe", "unexpected end of file", "transport error"];
    let lower = err.to_ascii_lowercase();
    if !addr.starts_with("https://") && plaintext_to_tls.iter().any(|p| lower.contains(p)) {
        let target = if addr.starts_with("http://") { addr.replacen("http://", "https://", 1) } else { "https://HOST:PORT".into() };
        return Some(format!(
            "the connection broke during the HTTP/2 exchange; if the coordinator uses TLS, connect to {target} with --tls-ca CA.pem"
        ));
    }
    None
}

pub async fn monitor(args: &ConnectArgs) -> Result<Monitor> {
    let ch = channel(&args.coordinator, args.tls_ca.as_deref()).await?;
    let token = read_token(args.token_file.as_deref())?;
    Ok(MonitorClient::with_interceptor(ch, TokenInterceptor::new(token.as_deref())?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Every run, page by page.
pub async fn list_all_runs(c: &mut Monitor) -> Result<Vec<pb::RunInfo>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c.list_runs(pb::ListRunsRequest { page_size: 200, page_token: token }).await.map_err(explain)?.into_inner();
        out.extend(page.runs);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Whether a wire run state is final.
pub fn is_terminal(state: &str) -> bool {
    RunState::from_name(state).is_some_and(RunState::is_terminal)
}

/// A task's or event's fold for display: `0`..`4`, `all`, `-` (run level or preprocessing).
fn fold_label(fold_name: &str, fold: i32) -> String {
    if !fold_name.is_empty() {
        fold_name.to_string()
    } else if fold < 0 {
        "-".to_string()
    } else {
        fold.to_string()
    }
}

/// Turns gRPC errors into actionable messages.
pub fn explain(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unauthenticated => {
            anyhow::anyhow!("the coordinator refused the call: {} (pass --token-file or NNUNET_TOKEN)", s.message())
        }
        tonic::Code::PermissionDenied => {
            anyhow::anyhow!("the coordinator refused the call: {} (this token's role may not do that)", s.message())
        }
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
            let hint = tls_hint("", s.message()).map(|h| format!(" ({h})")).unwrap_or_default();
            anyhow::anyhow!("{}: {}{hint}", s.code(), s.message())
        }
        _ => anyhow::anyhow!("{}: {}", s.code(), s.message()),
    }
}

pub fn kind_name(k: i32) -> &'static str {
    match pb::TaskKind::try_from(k).unwrap_or(pb::TaskKind::Unspecified) {
        pb::TaskKind::Preprocess => "preprocess",
        pb::TaskKind::Train => "train",
        pb::TaskKind::Validate => "validate",
        pb::TaskKind::Predict => "predict",
        pb::TaskKind::Unspecified => "?",
    }
}

fn fmt_secs(s: f64) -> String {
    if !s.is_finite() || s <= 0.0 {
        return "-".into();
    }
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The per-fold table shown by `status` and `watch`.
pub fn fold_table(info: &pb::RunInfo) -> String {
    let mut out = format!("run {} ({}) dataset {} state {}\n", info.run_id, info.name, info.dataset_name, info.state);
    out.push_str(&format!(
        "{:<5} {:<9} {:<8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9}  {}\n",
        "fold", "task", "state", "epoch", "loss", "EMA Dice", "LR", "s/epoch", "ETA", "dev mem", "attempt", "worker"
    ));
    for t in &info.tasks {
        let m = t.last_metrics.clone().unwrap_or_default();
        let (ep, loss, ema, lr, spe, eta, mem) = if t.last_metrics.is_some() {
            let remaining = m.epochs.saturating_sub(m.epoch + 1) as f64;
            (
                format!("{}/{}", m.epoch + 1, m.epochs),
                format!("{:.4}", m.train_loss),
                format!("{:.4}", m.ema_fg_dice),
                format!("{:.2e}", m.lr),
                format!("{:.1}", m.epoch_seconds),
                if t.state == crate::domain::TaskState::Running.name() { fmt_secs(remaining * m.epoch_seconds) } else { "-".into() },
                if m.device_memory_peak_bytes > 0 { format!("{:.1}G", m.device_memory_peak_bytes as f64 / 1e9) } else { "-".into() },
            )
        } else {
            Default::default()
        };
        let fold = fold_label(&t.fold_name, t.fold);
        out.push_str(&format!(
            "{:<5} {:<9} {:<8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9}  {}\n",
            fold,
            kind_name(t.kind),
            t.state,
            ep,
            loss,
            ema,
            lr,
            spe,
            eta,
            mem,
            t.attempt,
            t.worker_id
        ));
    }
    if !info.summary_json.is_empty() {
        out.push_str(&summary_lines(&info.summary_json));
    }
    out
}

/// Human lines for the CV summary JSON.
pub fn summary_lines(summary_json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(summary_json) else { return format!("summary: {summary_json}\n") };
    if let Some(e) = v.get("error") {
        return format!("error: {}\n", e.as_str().unwrap_or(&e.to_string()));
    }
    let mut out = String::new();
    let f4 = |d: &serde_json::Value| d.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| "NaN".into());
    if let Some(per_fold) = v.get("fold_foreground_dice").and_then(|p| p.as_object()) {
        for (k, d) in per_fold {
            out.push_str(&format!("fold {k}: validation Dice {}\n", f4(d)));
        }
    }
    let names = v.get("label_names").and_then(|n| n.as_object()).cloned().unwrap_or_default();
    if let Some(per_label) = v.get("cv_dice_per_label").and_then(|p| p.as_object()) {
        for (k, d) in per_label {
            let name = names.get(k).and_then(|n| n.as_str()).unwrap_or("");
            out.push_str(&format!("label {k} {name}: cross-validation Dice {}\n", f4(d)));
        }
    }
    if let Some(d) = v.get("cv_foreground_dice") {
        out.push_str(&format!("cross-validation Dice (folds merged, foreground mean): {}\n", f4(d)));
    }
    if let Some(d) = v.get("cv_foreground_dice_postprocessed") {
        let pp: Vec<String> = v
            .get("postprocessing")
            .and_then(|p| p.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "with postprocessing: {} ({})\n",
            f4(d),
            if pp.is_empty() { "none selected".to_string() } else { pp.join("; ") }
        ));
    }
    if let Some(f) = v.get("summary_file").and_then(|f| f.as_str()) {
        out.push_str(&format!("summary: {f}\n"));
    }
    if out.is_empty() {
        out = format!("summary: {summary_json}\n");
    }
    out
}

/// One line per event, for logs and non-terminal watchers.
pub fn event_line(e: &pb::Event) -> String {
    use pb::event::Body;
    let fold = match fold_label(&e.fold_name, e.fold).as_str() {
        "-" => "run".to_string(),
        f => format!("fold {f}"),
    };
    match &e.body {
        Some(Body::RunState(s)) => format!("[{}] run is {s}", e.seq),
        Some(Body::TaskState(t)) => format!(
            "[{}] {fold} {} {} (attempt {}{}){}",
            e.seq,
            kind_name(t.kind),
            t.state,
            t.attempt,
            if t.worker_id.is_empty() { String::new() } else { format!(", worker {}", t.worker_id) },
            if t.detail.is_empty() { String::new() } else { format!(": {}", t.detail) }
        ),
        Some(Body::Metrics(m)) => format!(
            "[{}] {fold} epoch {}/{} train_loss {:.4} val_loss {:.4} pseudo-Dice {:.4} EMA {:.4} lr {:.2e} {:.1}s/epoch{}",
            e.seq,
            m.epoch + 1,
            m.epochs,
            m.train_loss,
            m.val_loss,
            m.mean_fg_dice,
            m.ema_fg_dice,
            m.lr,
            m.epoch_seconds,
            if m.new_best { " (new best)" } else { "" }
        ),
        Some(Body::Log(l)) => format!("[{}] {fold} {l}", e.seq),
        Some(Body::SummaryJson(s)) => format!("[{}] summary {s}", e.seq),
        None => format!("[{}] (empty event)", e.seq),
    }
}

/// Follows a run's events; on a terminal redraws the fold table, otherwise prints one line per
/// event. Reconnects after a lost connection from the last sequence number seen.
pub async fn watch(args: &ConnectArgs, run_id: &str, follow: bool, table: Option<bool>) -> Result<pb::RunInfo> {
    let tty = table.unwrap_or_else(|| std::io::stdout().is_terminal());
    let mut next = 0u64;
    let mut failures = 0;
    loop {
        let mut client = match monitor(args).await {
            Ok(c) => c,
            Err(e) if failures < 60 => {
                failures += 1;
                eprintln!("watch: {e:#}; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let stream = client.watch_run(pb::WatchRunRequest { run_id: run_id.into(), since_seq: next, follow }).await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && failures < 60 => {
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(s) => return Err(explain(s)),
        };
        let mut broke = false;
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    failures = 0;
                    next = e.seq + 1;
                    if tty {
                        if let Ok(info) = client.get_run(pb::GetRunRequest { run_id: run_id.into() }).await {
                            print!("\x1b[2J\x1b[H{}", fold_table(&info.into_inner()));
                            println!("{}", event_line(&e));
                        }
                    } else {
                        println!("{}", event_line(&e));
                    }
                }
                Ok(None) => break,
                Err(s) => {
                    eprintln!("watch: stream interrupted ({}); reconnecting from event {next}", s.message());
                    broke = true;
                    break;
                }
            }
        }
        if broke {
            failures += 1;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        let info = client.get_run(pb::GetRunRequest { run_id: run_id.into() }).await.map_err(explain)?.into_inner();
        if !follow || is_terminal(&info.state) {
            return Ok(info);
        }
    }
}

pub fn check_run_ok(info: &pb::RunInfo) -> Result<()> {
    match RunState::from_name(&info.state) {
        Some(RunState::Done) => Ok(()),
        _ => {
            let s = &info.state;
            let failed: Vec<String> = info
                .tasks
                .iter()
                .filter(|t| !t.error.is_empty())
                .map(|t| format!("{} fold {}: {}", kind_name(t.kind), fold_label(&t.fold_name, t.fold), t.error))
                .collect();
            bail!(
                "run {} ended {s}{}{}",
                info.run_id,
                if failed.is_empty() { String::new() } else { "\n  ".to_string() },
                failed.join("\n  ")
            )
        }
    }
}
