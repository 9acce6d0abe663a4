//! Root and the daemon user's state directory, as in production: the state
//! directory belongs to the daemon's user `macha`, and an administrator runs
//! macha's commands as root against it. The daemon's user may have been
//! taken over, so every name in that directory is the attacker's to choose.
//!
//! Shown here: with any state file, temporary file or subdirectory replaced
//! by a link to a file or directory outside (root's, writable by anyone, so
//! that only refusing the link protects it), every command that writes or
//! reads state, run as root, leaves the target untouched, and the command
//! names the link it refused. And what root's commands create there is the
//! daemon user's and readable by nobody else; a state directory others may
//! write is pointed out.

mod common;

use std::time::Duration;

use macha_testbed::container::Container;
use serde_json::Value;

const STATE: &str = "/var/lib/macha-autonomous";
const CONFIG: &str = "/etc/macha-autonomous/config.toml";
const TOKEN: &str = "/etc/macha-autonomous/gotify-token";
const MACHA: &str = "/opt/macha/macha";
const APPS: [&str; 2] = ["app-a.service", "app-b.service"];
/// Where the links point: root's files and directories, writable by anyone,
/// so that following a link would change them even after giving up root.
const TARGETS: &str = "/srv/targets";

/// A container set up as a host running macha: the daemon's user, the
/// polkit rule, the Ollama double, two failing units, the state directory
/// as the NixOS module creates it, and Gotify configured with a token file
/// only root can read (its server is absent: messages are held).
fn host(name: &str) -> Container {
    let c = common::macha_host(name);
    c.wait_for(Duration::from_secs(10), || {
        c.exec(&["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/11434"]).is_ok_and(|o| o.status.success())
    })
    .unwrap();
    for app in APPS {
        common::failing_app(&c, app);
    }
    c.exec_ok(&["install", "-d", "-o", "macha", "-g", "macha", "-m", "0750", STATE]).unwrap();
    c.write_file(TOKEN, "AbCdEfGh0123456789\n").unwrap();
    c.exec_ok(&["chmod", "0600", TOKEN]).unwrap();
    c.write_file(
        CONFIG,
        format!(
            "autonomy_level = \"suggest\"\ncheck_interval = 2\n\n[detect]\ndisk_full_percent = 100\nmemory_pressure_percent = 100\n\n[act]\nsettle_time = 1\njob_timeout = 20\n\n[gotify]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{TOKEN}\"\n"
        ),
    )
    .unwrap();
    c
}

/// `macha ARGS` as root; whether it succeeded, and what it printed.
fn macha(c: &Container, args: &[&str]) -> (bool, String) {
    let mut argv = vec![MACHA, "--config", CONFIG];
    argv.extend_from_slice(args);
    let out = c.exec(&argv).unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// The daemon as root for three seconds, then SIGTERM.
fn daemon_briefly(c: &Container) -> (bool, String) {
    let out = c.sh(&format!("timeout -s TERM 3 {MACHA} --config {CONFIG} daemon")).unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code() == Some(0) || out.status.code() == Some(124), said)
}

/// Fails each app once more, so the next cycle decides about it again.
fn fail_again(c: &Container) {
    for app in APPS {
        let invocation = c.unit_property(app, "InvocationID").unwrap();
        c.exec_ok(&["systemctl", "restart", "--no-block", app]).unwrap();
        c.wait_for(Duration::from_secs(20), || {
            c.unit_property(app, "InvocationID").unwrap() != invocation
                && c.unit_property(app, "ActiveState").unwrap() == "failed"
        })
        .unwrap();
    }
}

fn pending_ids(c: &Container) -> Vec<String> {
    let (ok, said) = macha(c, &["approve", "list", "--json"]);
    assert!(ok, "{said}");
    let items: Value = serde_json::from_str(&said).unwrap_or_else(|e| panic!("{e}: {said}"));
    items.as_array().unwrap().iter().map(|i| i["id"].to_string()).collect()
}

/// Everything about the targets that a write through a link would change:
/// names, sizes, modes, owners and contents.
fn targets(c: &Container) -> String {
    c.sh_ok(&format!(
        "cd {TARGETS} && find . -printf '%p %y %s %m %u:%g\\n' | sort && find . -type f | sort | xargs -r cat | sha256sum"
    ))
    .unwrap()
}

/// What a name in the state directory is.
#[derive(Clone, Copy, PartialEq)]
enum Is {
    File,
    Dir,
}

/// What macha must do about a link planted there, besides not following it.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Some command here opens it, and says by name that it refused the link.
    Refused,
    /// A temporary or rotated name, or one no command here reaches: the link
    /// may be refused or removed.
    NotFollowed,
}

const PLANTED: [(&str, Is, Then); 30] = [
    ("decisions.jsonl", Is::File, Then::Refused),
    ("actions.jsonl", Is::File, Then::Refused),
    ("incidents.jsonl", Is::File, Then::Refused),
    ("decisions.jsonl.head", Is::File, Then::Refused),
    ("actions.jsonl.head", Is::File, Then::Refused),
    ("incidents.jsonl.head", Is::File, Then::Refused),
    ("decisions.jsonl.head.tmp", Is::File, Then::NotFollowed),
    ("actions.jsonl.head.tmp", Is::File, Then::NotFollowed),
    ("incidents.jsonl.head.tmp", Is::File, Then::NotFollowed),
    ("journal.cursor", Is::File, Then::Refused),
    ("journal.tmp", Is::File, Then::NotFollowed),
    ("journal.cursor.tmp", Is::File, Then::NotFollowed),
    ("metrics.jsonl", Is::File, Then::Refused),
    ("metrics.1.jsonl", Is::File, Then::Refused),
    ("orchestrator.log", Is::File, Then::Refused),
    ("orchestrator.log.1", Is::File, Then::NotFollowed),
    ("state.db", Is::File, Then::Refused),
    ("state.db-wal", Is::File, Then::Refused),
    ("state.db-shm", Is::File, Then::Refused),
    ("state.db-journal", Is::File, Then::NotFollowed),
    ("status.json", Is::File, Then::Refused),
    ("status.json.tmp", Is::File, Then::NotFollowed),
    ("daemon.lock", Is::File, Then::Refused),
    ("notes", Is::Dir, Then::Refused),
    ("notes/pending", Is::Dir, Then::Refused),
    ("notes/archive", Is::Dir, Then::NotFollowed),
    ("model-calls", Is::Dir, Then::Refused),
    ("requests", Is::Dir, Then::NotFollowed),
    ("evidence", Is::Dir, Then::NotFollowed),
    ("proposals", Is::Dir, Then::NotFollowed),
];

/// Replaces `name` in the state directory by a link to a target of the same
/// kind outside it, as the daemon's user; what was there is kept aside.
fn plant(c: &Container, name: &str, is: Is) {
    let target = format!("{TARGETS}/{}", name.replace('/', "_"));
    let make = match is {
        Is::Dir => format!("mkdir -p {target} && chmod 0777 {target}"),
        Is::File => format!("printf 'precious %s\\n' {name} > {target} && chmod 0666 {target}"),
    };
    c.sh_ok(&make).unwrap();
    let script = format!(
        "cd {STATE} && mkdir -p \"$(dirname {name})\" && if [ -e {name} ] || [ -L {name} ]; then mv {name} {name}.saved; fi && ln -s {target} {name}"
    );
    c.exec_ok(&["runuser", "-u", "macha", "--", "sh", "-c", &script]).unwrap();
}

/// Puts back what `plant` kept aside.
fn restore(c: &Container, name: &str) {
    let script = format!(
        "cd {STATE} && rm -f {name} && if [ -e {name}.saved ] || [ -L {name}.saved ]; then mv {name}.saved {name}; fi"
    );
    c.exec_ok(&["runuser", "-u", "macha", "--", "sh", "-c", &script]).unwrap();
}

#[test]
fn no_command_run_as_root_follows_a_link_in_the_state_directory() {
    let c = host("links");
    c.exec_ok(&["mkdir", "-p", "-m", "0755", TARGETS]).unwrap();
    // A state directory as a running daemon leaves it: every file there.
    assert!(macha(&c, &["check"]).1.contains("incident"));
    assert!(macha(&c, &["note", "the apps are being migrated"]).0);
    fail_again(&c);
    assert!(macha(&c, &["check"]).1.contains("incident"));
    daemon_briefly(&c);
    assert!(macha(&c, &["ask", "what failed?"]).0);

    let mut missed = Vec::new();
    for (name, is, then) in PLANTED {
        fail_again(&c);
        let (ok, said) = macha(&c, &["check"]);
        assert!(!said.contains("symbolic link"), "before planting {name}: {said}");
        let ids = pending_ids(&c);
        assert!(ok || said.contains("incident"), "{said}");
        fail_again(&c);
        plant(&c, name, is);
        let before = targets(&c);

        let mut said_all = String::new();
        let approve = ids.first().cloned().unwrap_or_else(|| "1".into());
        let reject = ids.get(1).cloned().unwrap_or_else(|| "2".into());
        let commands: Vec<Vec<&str>> = vec![
            vec!["check"],
            vec!["approve", "approve", &approve],
            vec!["approve", "reject", &reject, "--reason", "test"],
            vec!["pause", "--reason", "test"],
            vec!["resume"],
            vec!["note", "the apps are being migrated"],
            vec!["logs", "decisions"],
            vec!["logs", "actions"],
            vec!["logs", "orchestrator"],
            vec!["logs", "verify"],
            vec!["stats"],
            vec!["status"],
            vec!["ask", "what failed?"],
            vec!["notify", "digest"],
        ];
        for args in &commands {
            let (_, said) = macha(&c, args);
            assert_eq!(
                targets(&c),
                before,
                "`macha {}` with {name} a link wrote outside the state directory:\n{said}",
                args.join(" ")
            );
            said_all.push_str(&format!("$ macha {}\n{said}\n", args.join(" ")));
        }
        let (_, said) = daemon_briefly(&c);
        assert_eq!(targets(&c), before, "the daemon with {name} a link wrote outside the state directory:\n{said}");
        said_all.push_str(&format!("$ macha daemon\n{said}\n"));

        let refused = said_all.lines().any(|l| l.contains(&format!("{STATE}/{name} is a symbolic link")));
        if then == Then::Refused && !refused {
            missed.push(format!("{name}: no command said it refused the link:\n{said_all}"));
        }
        restore(&c, name);
    }
    assert!(missed.is_empty(), "{}", missed.join("\n\n"));
}

/// Every file and directory below the state directory, with its owner and
/// mode, that is not the daemon user's alone.
fn not_owner_only(c: &Container) -> String {
    c.sh_ok(&format!(
        "find {STATE} -mindepth 1 \\( ! -user macha -o ! -group macha -o -perm /077 \\) -printf '%p %u:%g %m\\n'"
    ))
    .unwrap()
}

#[test]
fn root_commands_leave_owner_only_files_to_the_daemons_user() {
    let c = host("owneronly");
    // The daemon's user's own commands, with the umask of a login shell.
    for verb in ["pause", "resume"] {
        let script = format!("umask 022; {MACHA} --config {CONFIG} {verb}");
        let out = c.exec(&["runuser", "-u", "macha", "--", "sh", "-c", &script]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(macha(&c, &["check"]).1.contains("incident"));
    let ids = pending_ids(&c);
    assert_eq!(ids.len(), 2, "one item per failed app");
    let (ok, said) = macha(&c, &["approve", "reject", &ids[1], "--reason", "not now"]);
    assert!(ok, "{said}");
    // Carried out as the daemon's user, whom polkit lets restart the unit.
    c.write_file("/run/app.ok", "").unwrap();
    let (ok, said) = macha(&c, &["approve", "approve", &ids[0]]);
    assert!(ok && said.contains(": succeeded"), "{said}");
    c.exec_ok(&["rm", "/run/app.ok"]).unwrap();
    for args in [
        vec!["pause"],
        vec!["resume"],
        vec!["note", "the apps are being migrated"],
        vec!["ask", "what failed?"],
        vec!["notify", "digest"],
    ] {
        let (ok, said) = macha(&c, &args);
        assert!(ok, "macha {}: {said}", args.join(" "));
    }
    fail_again(&c);
    daemon_briefly(&c);
    assert!(macha(&c, &["check"]).1.contains("incident"));

    assert_eq!(not_owner_only(&c), "", "left to root or readable by others");
    let actions = c.exec_ok(&["cat", &format!("{STATE}/actions.jsonl")]).unwrap();
    let deciders: Vec<Value> = actions
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["origin"] == "approval")
        .map(|r| r["by"].clone())
        .collect();
    assert!(!deciders.is_empty() && deciders.iter().all(|b| b.as_str().unwrap().starts_with("root ")), "{deciders:?}");
    // Nothing of the token reached a file the daemon's user can read.
    let found = c.exec(&["grep", "-rl", "AbCdEfGh0123456789", STATE]).unwrap();
    assert!(found.stdout.is_empty(), "{}", String::from_utf8_lossy(&found.stdout));
}

#[test]
fn a_state_directory_others_may_write_is_pointed_out() {
    let c = host("openstate");
    c.exec_ok(&["chmod", "0777", STATE]).unwrap();
    for args in [vec!["status"], vec!["check"]] {
        let (_, said) = macha(&c, &args);
        let warnings: Vec<&str> = said.lines().filter(|l| l.contains("warning") && l.contains(STATE)).collect();
        assert_eq!(warnings.len(), 1, "macha {}: {said}", args.join(" "));
        assert!(warnings[0].contains("0777"), "{}", warnings[0]);
    }
    c.exec_ok(&["chmod", "0750", STATE]).unwrap();
    let (_, said) = macha(&c, &["status"]);
    assert!(!said.contains("warning"), "{said}");
}
