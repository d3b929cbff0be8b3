//! `ferrovsd`: the per-node ferrovs switch service.
//!
//! Reads its config file, opens the ports (AF_XDP), starts the poll
//! threads, installs the initial flows, then serves `ferrovs-ctl` on a Unix
//! socket and Prometheus metrics over HTTP until SIGTERM/SIGINT, when it
//! stops the threads and detaches every XDP program it attached.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use datapath::port::{MemPort, Port};
use datapath::switch::{Switch, SwitchConfig};
use datapath::xsk::{XskMode, XskOptions, XskPort};
use tools::config::{Config, PortConfig, PortKind};
use tools::mgmt::{interface_mac, Daemon, Request, Response};

#[derive(Parser, Debug)]
#[command(name = "ferrovsd", version, about = "ferrovs switch service")]
struct Args {
    /// Configuration file (TOML).
    #[arg(short, long)]
    config: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn open_port(pc: &PortConfig) -> Result<Box<dyn Port>, String> {
    match &pc.kind {
        PortKind::Memory => Ok(Box::new(MemPort::new(&pc.name))),
        PortKind::Afxdp { mode } => {
            let mode = match mode.as_str() {
                "native" => XskMode::Native,
                "skb" => XskMode::Skb,
                _ => XskMode::Auto,
            };
            let opts = XskOptions {
                mode,
                ..XskOptions::default()
            };
            XskPort::open(&pc.name, opts)
                .map(|p| Box::new(p) as Box<dyn Port>)
                .map_err(|e| e.to_string())
        }
        PortKind::Vxlan { .. } => Err(format!("port '{}': vxlan ports have no interface", pc.name)),
    }
}

fn open_underlay(ifname: &str) -> Result<(Box<dyn Port>, [u8; 6]), String> {
    let mac = interface_mac(ifname)?;
    let p = XskPort::open(ifname, XskOptions::default()).map_err(|e| e.to_string())?;
    Ok((Box::new(p), mac))
}

fn serve_one(daemon: &mut Daemon, listener: &UnixListener) {
    loop {
        let (stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::warn!("management socket accept: {e}");
                return;
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let r = daemon.handle(&req);
                if r.ok {
                    tracing::info!(cmd = ?req.args.first(), "management command");
                } else {
                    tracing::warn!(cmd = ?req.args.first(), error = %r.error, "management command failed");
                }
                r
            }
            Err(e) => Response {
                ok: false,
                output: String::new(),
                error: format!("malformed request: {e}"),
            },
        };
        let mut w = &stream;
        if let Ok(text) = serde_json::to_string(&resp) {
            let _ = writeln!(w, "{text}");
        }
    }
}

fn main() {
    if let Err(e) = run() {
        // One line, no backtrace: the error already says what and where.
        eprintln!("ferrovsd: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = Config::load(&args.config)?;
    if args.check {
        println!("{}: ok ({} ports)", args.config.display(), cfg.ports.len());
        return Ok(());
    }
    let initial_flows = match &cfg.flows {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading flows file {}", path.display()))?;
            flows::syntax::parse_flows_file(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Vec::new(),
    };

    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;

    let switch = Switch::start(&SwitchConfig {
        threads: cfg.threads,
        cores: cfg.cores.clone(),
        conntrack: cfg.conntrack,
        max_sleep: cfg.poll_max_sleep,
        tx_flush_interval: cfg.tx_flush_interval,
        poll_nice: Some(cfg.poll_nice),
    })?;
    let mut daemon = Daemon::new(
        switch,
        &cfg.bridge,
        Box::new(open_port),
        Box::new(open_underlay),
    );
    for pc in &cfg.ports {
        match daemon.add_port(pc) {
            Ok(no) => tracing::info!(port = %pc.name, ofport = no, "port added"),
            Err(e) => {
                daemon.switch.shutdown();
                bail!("{}: {e}", args.config.display());
            }
        }
    }
    let mods: Vec<_> = initial_flows
        .into_iter()
        .map(flows::pipeline::FlowMod::Add)
        .collect();
    if let Err(e) = daemon.switch.apply(&mods) {
        daemon.switch.shutdown();
        bail!("initial flows: {e}");
    }

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if cfg.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
            daemon.switch.shutdown();
            bail!(
                "{}: another ferrovsd is serving this socket",
                cfg.socket.display()
            );
        }
        let _ = std::fs::remove_file(&cfg.socket);
    }
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("binding management socket {}", cfg.socket.display()))?;
    listener.set_nonblocking(true)?;

    if let Some(addr) = cfg.metrics {
        let bound = tools::metrics::serve(addr, daemon.switch.shared().clone())
            .with_context(|| format!("metrics address {addr}"))?;
        tracing::info!(%bound, "serving Prometheus metrics");
    }

    let mut poll = mio::Poll::new()?;
    let fd = listener.as_raw_fd();
    poll.registry().register(
        &mut mio::unix::SourceFd(&fd),
        mio::Token(0),
        mio::Interest::READABLE,
    )?;
    let mut events = mio::Events::with_capacity(8);
    tracing::info!(bridge = %cfg.bridge, socket = %cfg.socket.display(), "ferrovsd running");
    let mut last_expire = Instant::now();
    while !term.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(200))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if !events.is_empty() {
            serve_one(&mut daemon, &listener);
        }
        if last_expire.elapsed() >= Duration::from_secs(1) {
            let n = daemon.switch.expire();
            if n > 0 {
                tracing::info!(flows = n, "expired flows");
            }
            last_expire = Instant::now();
        }
    }
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&cfg.socket);
    daemon.switch.shutdown();
    Ok(())
}
