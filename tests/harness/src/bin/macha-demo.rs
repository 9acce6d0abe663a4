//! The README's first command: one real macha cycle against a real systemd.
//!
//! Boots the test container, makes a unit fail, points macha at the
//! container's bus and journal and at Ollama (a real one on
//! 127.0.0.1:11434 if it answers, the project's double otherwise), and runs
//! `macha-check`, `macha-approve` and `macha-logs` as an admin would, printing
//! each command and its output. The container is torn down at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use macha_testbed::container::Container;
use macha_testbed::ollama::OllamaDouble;

const MODEL: &str = "llama3.1:70b";
const UNIT: &str = "demo-web.service";
const UNIT_TEXT: &str = "[Unit]
Description=demo web application

[Service]
ExecStart=/bin/sh -c 'if [ ! -e /etc/demo-web.conf ]; then echo \"demo-web: cannot open /etc/demo-web.conf: No such file or directory\" >&2; exit 3; fi; exec sleep infinity'
";

/// Whether a real Ollama answers on the default address.
fn real_ollama() -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&"127.0.0.1:11434".parse().unwrap(), Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /api/version HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.contains("version")
}

fn run(bin: &Path, name: &str, config: &Path, args: &[&str]) -> Result<i32> {
    println!("\n$ {name} {}", args.join(" "));
    std::io::stdout().flush()?;
    let status = Command::new(bin.join(name)).arg("--config").arg(config).args(args).status()?;
    Ok(status.code().unwrap_or(-1))
}

fn main() -> Result<()> {
    let exe_dir = std::env::current_exe()?.parent().context("executable has no directory")?.to_path_buf();
    let macha = exe_dir.join("macha");
    if !macha.exists() {
        bail!("{} not found: build it first (cargo build --workspace --bins)", macha.display());
    }
    let work = std::env::temp_dir().join(format!("macha-demo-{}", std::process::id()));
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    for name in ["macha-check", "macha-approve", "macha-logs"] {
        std::os::unix::fs::symlink(&macha, bin.join(name))?;
    }

    println!("booting a Debian systemd container ...");
    let c = Container::boot("demo")?;
    c.install_unit(UNIT, UNIT_TEXT)?;
    c.start_unit(UNIT)?;
    c.wait_unit_state(UNIT, "failed", Duration::from_secs(20))?;
    c.sync_journal()?;
    println!("container {} is up; {UNIT} has failed (its config file is missing)", c.name());

    let double;
    let url = if real_ollama() {
        println!("using the Ollama at http://127.0.0.1:11434 (model {MODEL})");
        "http://127.0.0.1:11434".to_string()
    } else {
        double = OllamaDouble::start(&[MODEL])?;
        println!("no Ollama on 127.0.0.1:11434: using the project's Ollama double at {}", double.url());
        double.url()
    };

    let config: PathBuf = work.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "autonomy_level = \"suggest\"\nstate_dir = \"{}\"\ndbus_address = \"{}\"\njournal_dir = \"{}\"\n\n[ollama]\nurl = \"{url}\"\nmodel = \"{MODEL}\"\n\n[act]\nsettle_time = 2\n",
            work.join("state").display(),
            c.bus_address(),
            c.journal_dir().display(),
        ),
    )?;
    println!("config: {}", config.display());

    run(&bin, "macha-check", &config, &[])?;
    run(&bin, "macha-approve", &config, &["list"])?;
    println!("\n# an admin fixes the config file, then approves the queued restart");
    c.write_file("/etc/demo-web.conf", "listen = 8080\n")?;
    let id = Command::new(bin.join("macha-approve"))
        .args(["--config".as_ref(), config.as_os_str(), "list".as_ref(), "--json".as_ref()])
        .output()?;
    let pending: serde_json::Value = serde_json::from_slice(&id.stdout).unwrap_or_default();
    match pending.get(0).and_then(|p| p["id"].as_i64()) {
        Some(id) => {
            run(&bin, "macha-approve", &config, &["approve", &id.to_string()])?;
            println!(
                "\n$ systemctl is-active {UNIT}   # inside the container\n{}",
                c.unit_property(UNIT, "ActiveState")?
            );
        }
        None => println!("(the model proposed nothing to approve)"),
    }
    run(&bin, "macha-logs", &config, &["decisions"])?;
    run(&bin, "macha-logs", &config, &["actions"])?;
    println!("\ndone; the container is being shut down (state kept in {})", work.display());
    Ok(())
}
