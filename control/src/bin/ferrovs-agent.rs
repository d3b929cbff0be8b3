//! `ferrovs-agent`: keeps a ferrovsd's ports and flows in line with the
//! Kubernetes cluster, read from an API server or a manifest directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use control::agent::{fingerprint, load_manifests, Agent, AgentConfig};
use control::compile::{full_bundle_text, Compiler, Config};
use control::model::parse_mac;
use control::ObjectRef;

#[derive(Parser, Debug)]
#[command(
    name = "ferrovs-agent",
    version,
    about = "Compile Kubernetes state (Pods, Services, EndpointSlices, NetworkPolicies, Nodes, Namespaces) into ferrovs flows"
)]
struct Args {
    /// This node's name (pods with this spec.nodeName are wired locally).
    #[arg(long, env = "FERROVS_NODE")]
    node: String,
    /// Read cluster state from this directory of YAML/JSON manifests
    /// (re-read when a file changes) instead of an API server.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Kubeconfig for the API server (default: $KUBECONFIG, ~/.kube/config,
    /// then the in-cluster service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// ferrovsd's management socket.
    #[arg(long, env = "FERROVS_SOCKET", default_value = "/run/ferrovs/br0.sock")]
    socket: PathBuf,
    /// Directory of ferrovs-cni attachment records.
    #[arg(long, default_value = "/run/ferrovs")]
    cni_state: PathBuf,
    /// Name of ferrovsd's flow-based VXLAN port.
    #[arg(long, default_value = "vxlan0")]
    tunnel_port: String,
    /// A VLAN trunk port to the other nodes, used instead of the tunnel:
    /// tenant traffic crosses it tagged with the tenant's VLAN id.
    #[arg(long)]
    trunk_port: Option<String>,
    /// MAC the switch answers ARP with for the gateway and proxied IPs.
    #[arg(long, default_value = "02:fe:00:00:00:01")]
    gateway_mac: String,
    /// Extra add-port arguments for pod ports (e.g. `mode=skb`).
    #[arg(long = "port-arg")]
    port_args: Vec<String>,
    /// How often to check the manifests and CNI records (milliseconds).
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Do one round and exit.
    #[arg(long)]
    once: bool,
    /// Print the flows the manifests compile to (bundle text) and exit,
    /// without talking to ferrovsd; pods are wired on ports 1.. in order.
    #[arg(long, requires = "manifests")]
    print: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // No colour codes in log files, `kubectl logs` or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let Some(gateway_mac) = parse_mac(&args.gateway_mac) else {
        eprintln!(
            "ferrovs-agent: --gateway-mac '{}' is not a unicast MAC",
            args.gateway_mac
        );
        std::process::exit(2);
    };
    if args.print {
        std::process::exit(print(&args, gateway_mac));
    }
    let cfg = AgentConfig {
        node: args.node.clone(),
        socket: args.socket.clone(),
        cni_state: args.cni_state.clone(),
        tunnel_port: args.tunnel_port.clone(),
        trunk_port: args.trunk_port.clone(),
        gateway_mac,
        port_args: args.port_args.clone(),
    };
    let agent = Agent::new(cfg);
    let code = match &args.manifests {
        Some(dir) => run_manifests(agent, dir, &args),
        None => run_kube(agent, &args),
    };
    std::process::exit(code);
}

fn print(args: &Args, gateway_mac: [u8; 6]) -> i32 {
    let Some(dir) = &args.manifests else { return 2 };
    let Some(snap) = load_manifests(dir) else {
        return 1;
    };
    let model = control::model::Model::build(&snap);
    let ports = model
        .pods_on(&args.node)
        .enumerate()
        .map(|(i, p)| (p.key(), i as u16 + 1))
        .collect();
    let mut c = Compiler::new(Config {
        node: args.node.clone(),
        tunnel_port: Some(0xff00 - 1),
        trunk_port: None,
        gateway_mac,
    });
    c.full(&snap, &ports);
    for i in c.issues() {
        tracing::warn!("{i}");
    }
    print!("{}", full_bundle_text(&c));
    0
}

fn round(agent: &mut Agent, changed: Vec<ObjectRef>) -> bool {
    let n = changed.len();
    let t = Instant::now();
    match agent.round(changed) {
        Ok(r) => {
            if r.mods > 0 || r.ports_added > 0 || r.ports_removed > 0 {
                tracing::info!(
                    changed = n,
                    edits = r.mods,
                    full = r.full,
                    ports_added = r.ports_added,
                    ports_removed = r.ports_removed,
                    ms = format_args!("{:.1}", t.elapsed().as_secs_f64() * 1e3),
                    "switch updated"
                );
            }
            true
        }
        Err(e) => {
            tracing::error!("{e}; retrying with a full resync");
            false
        }
    }
}

fn run_manifests(mut agent: Agent, dir: &std::path::Path, args: &Args) -> i32 {
    let interval = Duration::from_millis(args.interval_ms.max(10));
    let mut seen = None;
    loop {
        let fp = fingerprint(dir);
        let mut changed = Vec::new();
        if seen.as_ref() != Some(&fp) {
            if let Some(snap) = load_manifests(dir) {
                changed = agent.set_snapshot(snap);
                tracing::info!(dir = %dir.display(), objects = agent.snapshot().len(), changed = changed.len(), "manifests loaded");
            }
            seen = Some(fp);
        }
        let ok = round(&mut agent, changed);
        if args.once {
            return if ok { 0 } else { 1 };
        }
        std::thread::sleep(interval);
    }
}

fn run_kube(mut agent: Agent, args: &Args) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrovs-agent: cannot start the async runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        let client = match &args.kubeconfig {
            Some(p) => control::watch::client_from_kubeconfig(p, None).await,
            None => control::watch::client_from_env().await,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferrovs-agent: {e}");
                return 1;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(control::watch::watch_cluster(client, tx));
        let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(10)));
        loop {
            let mut changed = Vec::new();
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { return 1 };
                    changed.extend(control::watch::apply_event(agent.snapshot_mut(), ev));
                    // Take everything already queued as one change.
                    while let Ok(ev) = rx.try_recv() {
                        changed.extend(control::watch::apply_event(agent.snapshot_mut(), ev));
                    }
                }
                _ = tick.tick() => {}
            }
            if !round(&mut agent, changed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if args.once {
                return 0;
            }
        }
    })
}
