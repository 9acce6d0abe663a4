//! The test bed's Nix and its NixOS stand-in (tests/testbed/nixos): a real
//! Nix store and system profile in the container, switched by the stand-in
//! nixos-rebuild and cleaned by the real nix-collect-garbage, as macha's root
//! helpers will drive them. Needs root.

use std::process::Output;

use macha_testbed::container::{Container, SYSTEM_PROFILE};

const FLAKE: &str = "/etc/nixos#testhost";

/// A booted container with the stand-in installed; and generation 1's path.
fn nixos_host(name: &str) -> (Container, String) {
    let c = Container::boot(name).unwrap();
    let gen1 = c.install_nixos_standin().unwrap();
    (c, gen1)
}

fn rebuild(c: &Container, args: &[&str]) -> Output {
    let mut argv = vec!["nixos-rebuild"];
    argv.extend_from_slice(args);
    c.exec(&argv).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `nixos-rebuild switch --flake /etc/nixos#testhost`, which must succeed.
fn switch(c: &Container) {
    let out = rebuild(c, &["switch", "--flake", FLAKE]);
    assert!(out.status.success(), "nixos-rebuild switch failed: {}", stderr(&out));
}

fn failed_units(c: &Container) -> String {
    c.exec_ok(&["systemctl", "--failed", "--no-legend", "--plain"]).unwrap()
}

#[test]
fn switch_and_roll_back_by_hand() {
    let c = Container::boot("nix-switch").unwrap();
    // Nix 2.8 from Debian, no nix-daemon units, nothing failed.
    assert!(c.exec_ok(&["nix-store", "--version"]).unwrap().contains(" 2.8"));
    let nix_units = c.exec(&["systemctl", "list-unit-files", "--no-legend", "nix*"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&nix_units.stdout).trim(), "");
    assert_eq!(failed_units(&c), "");

    let gen1 = c.install_nixos_standin().unwrap();
    assert!(gen1.starts_with("/nix/store/") && gen1.ends_with("-nixos-system-testhost-1"), "{gen1}");
    assert_eq!(c.exec_ok(&["readlink", SYSTEM_PROFILE]).unwrap().trim(), "system-1-link");
    assert_eq!(c.generation_system(1).unwrap(), gen1);
    assert_eq!(c.system_generations().unwrap(), vec![1]);
    assert_eq!(c.current_system().unwrap(), gen1);
    assert_eq!(c.exec_ok(&["readlink", "/run/booted-system"]).unwrap().trim(), gen1);

    let out = rebuild(&c, &["switch", "--flake", FLAKE]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("building the system configuration..."), "{}", stderr(&out));
    assert!(stderr(&out).contains("switch-to-configuration: activated testhost-2"), "{}", stderr(&out));
    assert_eq!(c.system_generations().unwrap(), vec![1, 2]);
    assert_eq!(c.current_generation().unwrap(), 2);
    let gen2 = c.current_system().unwrap();
    assert_ne!(gen2, gen1);
    assert_eq!(gen2, c.generation_system(2).unwrap());
    assert_eq!(c.exec_ok(&["cat", "/run/current-system/nixos-version"]).unwrap().trim(), "testhost-2");

    // Rollback the way a root helper does it without nixos-rebuild.
    c.exec_ok(&["nix-env", "-p", SYSTEM_PROFILE, "--switch-generation", "1"]).unwrap();
    let stc = format!("{SYSTEM_PROFILE}/bin/switch-to-configuration");
    c.exec_ok(&[&stc, "switch"]).unwrap();
    assert_eq!(c.current_generation().unwrap(), 1);
    assert_eq!(c.current_system().unwrap(), gen1);
    assert_eq!(c.system_generations().unwrap(), vec![1, 2]);

    let out = c.exec(&[&stc, "frobnicate"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Usage:"), "{}", stderr(&out));
    assert_eq!(failed_units(&c), "");
}

#[test]
fn garbage_collection_deletes_garbage_and_aged_generations_only() {
    let (c, gen1) = nixos_host("nix-gc");
    for _ in 0..3 {
        switch(&c);
    }
    assert_eq!(c.system_generations().unwrap(), vec![1, 2, 3, 4]);
    let gen2 = c.generation_system(2).unwrap();
    let gen4 = c.generation_system(4).unwrap();
    assert_eq!(c.current_system().unwrap(), gen4);

    let garbage = c.add_store_garbage(2).unwrap();
    assert!(garbage.starts_with("/nix/store/"), "{garbage}");
    assert!(c.store_path_valid(&garbage).unwrap());
    let size = c.exec_ok(&["stat", "-c", "%s", &garbage]).unwrap();
    assert_eq!(size.trim(), "2097152");

    // The store is a read-only mount, as on NixOS: without CAP_SYS_ADMIN
    // (here: a unit with a smaller bounding set) nix cannot collect.
    let out = c
        .exec(&[
            "systemd-run",
            "--wait",
            "--pipe",
            "-p",
            "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_FOWNER",
            "nix-collect-garbage",
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("error: remounting /nix/store writable: Operation not permitted"), "{out:?}");
    assert!(c.store_path_valid(&garbage).unwrap());
    assert_eq!(c.exec(&["touch", "/nix/store/x"]).unwrap().status.code(), Some(1));

    // Ages decreasing with generation numbers (nix 2.8 aborts otherwise).
    c.age_generation(1, 50).unwrap();
    c.age_generation(2, 40).unwrap();
    c.age_generation(3, 30).unwrap();
    let out = c.exec_ok(&["nix-collect-garbage", "--delete-older-than", "14d"]).unwrap();
    eprintln!("nix-collect-garbage: {out}");

    // 1 and 2 are gone; 3 was the current one 14 days ago, so nix keeps it;
    // 4 is current.
    assert_eq!(c.system_generations().unwrap(), vec![3, 4]);
    assert_eq!(c.current_generation().unwrap(), 4);
    assert!(!c.store_path_valid(&garbage).unwrap(), "garbage survived");
    assert!(!c.root().join(garbage.trim_start_matches('/')).exists());
    assert!(!c.store_path_valid(&gen2).unwrap(), "generation 2's system survived");
    // Generation 1's system is still the booted one (a GC root, as on NixOS).
    assert!(c.store_path_valid(&gen1).unwrap());
    assert!(c.store_path_valid(&gen4).unwrap());
    assert_eq!(c.current_system().unwrap(), gen4);
}

#[test]
fn test_boot_rollback_and_failed_activation() {
    let (c, gen1) = nixos_host("nix-modes");

    // test: activates a new system, leaves the profile alone.
    let out = rebuild(&c, &["test", "--flake", FLAKE]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tested = c.current_system().unwrap();
    assert!(tested.ends_with("-nixos-system-testhost-2"), "{tested}");
    assert_eq!(c.system_generations().unwrap(), vec![1]);

    // boot: a new generation, not activated.
    let out = rebuild(&c, &["boot", "--flake", FLAKE]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.current_generation().unwrap(), 2);
    assert!(c.generation_system(2).unwrap().ends_with("-nixos-system-testhost-3"));
    assert_eq!(c.current_system().unwrap(), tested);

    // switch --rollback: back to generation 1, activated.
    let out = rebuild(&c, &["switch", "--rollback"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("switching profile from version 2 to 1"), "{}", stderr(&out));
    assert_eq!(c.current_generation().unwrap(), 1);
    assert_eq!(c.current_system().unwrap(), gen1);

    // A failed activation: like the real nixos-rebuild, the profile already
    // points to the new generation; the running system is unchanged.
    c.write_file("/etc/nixos/activation-fails", "").unwrap();
    let out = rebuild(&c, &["switch", "--flake", FLAKE]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("switch-to-configuration: activation failed"), "{}", stderr(&out));
    assert_eq!(c.system_generations().unwrap(), vec![1, 2, 3]);
    assert_eq!(c.current_generation().unwrap(), 3);
    assert_eq!(c.current_system().unwrap(), gen1);
}

#[test]
fn broken_or_missing_flake_fails_and_dry_build_changes_nothing() {
    let (c, gen1) = nixos_host("nix-broken");
    let store = || c.exec_ok(&["ls", "/nix/store"]).unwrap();
    let before = store();

    let out = rebuild(&c, &["dry-build", "--flake", FLAKE]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("these 2 derivations will be built:"), "{}", stderr(&out));
    assert_eq!(store(), before);
    assert_eq!(c.system_generations().unwrap(), vec![1]);
    assert_eq!(c.current_system().unwrap(), gen1);

    c.write_file("/etc/nixos/broken", "undefined variable 'pkgs' at /etc/nixos/configuration.nix:3:5\n").unwrap();
    for mode in ["dry-build", "switch", "test", "boot"] {
        let out = rebuild(&c, &[mode, "--flake", FLAKE]);
        assert_eq!(out.status.code(), Some(1), "{mode}");
        assert!(stderr(&out).contains("error: undefined variable 'pkgs'"), "{mode}: {}", stderr(&out));
    }
    assert_eq!(store(), before);
    assert_eq!(c.system_generations().unwrap(), vec![1]);
    assert_eq!(c.current_system().unwrap(), gen1);

    let out = rebuild(&c, &["dry-build", "--flake", "/tmp#testhost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("error: could not find a flake.nix file"), "{}", stderr(&out));
    let out = rebuild(&c, &["switch", "--flake", "/nonexistent#testhost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("error: getting status of '/nonexistent'"), "{}", stderr(&out));
}
