//! `ferrovs-ctl`: the ovs-ofctl-style command line of ferrovs. A thin
//! client: it sends the command to `ferrovsd` over the management socket
//! and prints the answer; all parsing happens in the daemon.

use std::path::PathBuf;

use clap::Parser;
use tools::mgmt::{call, Request, COMMANDS};

#[derive(Parser, Debug)]
#[command(
    name = "ferrovs-ctl",
    version,
    about = "Program and inspect a ferrovs switch (ovs-ofctl style)",
    after_help = COMMANDS
)]
struct Args {
    /// Management socket of the ferrovsd to talk to.
    #[arg(
        short,
        long,
        env = "FERROVS_SOCKET",
        default_value = "/run/ferrovs/br0.sock"
    )]
    socket: PathBuf,
    /// Command and its arguments (see below). `--strict` and `--no-stats`
    /// are passed through.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

const FILE_COMMANDS: [&str; 3] = ["add-flows", "replace-flows", "bundle"];

fn main() {
    let args = Args::parse();
    let mut words = args.command.clone();
    let mut input = None;
    if FILE_COMMANDS.contains(&words[0].as_str()) {
        let Some(pos) = words.iter().skip(1).position(|w| !w.starts_with("--")) else {
            eprintln!(
                "ferrovs-ctl: {} needs a FILE ('-' for standard input)",
                words[0]
            );
            std::process::exit(2);
        };
        let path = words.remove(pos + 1);
        let text = if path == "-" {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s);
            Ok(s)
        } else {
            std::fs::read_to_string(&path)
        };
        match text {
            Ok(t) => input = Some(t),
            Err(e) => {
                eprintln!("ferrovs-ctl: {path}: {e}");
                std::process::exit(1);
            }
        }
    }
    let req = Request { args: words, input };
    match call(&args.socket, &req) {
        Ok(resp) if resp.ok => {
            print!("{}", resp.output);
        }
        Ok(resp) => {
            eprintln!("ferrovs-ctl: {}", resp.error);
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!(
                "ferrovs-ctl: {}: {e} (is ferrovsd running?)",
                args.socket.display()
            );
            std::process::exit(1);
        }
    }
}
