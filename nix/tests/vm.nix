# The module on a real NixOS in a VM: a unit fails, macha (at the default
# level, suggest) queues its restart, and `macha-approve approve ID` carries
# it out. The model is the project's Ollama double, whose demo responder
# proposes restarting the unit an incident names.
#
# Needs KVM: `nix build .#checks.x86_64-linux.nixos-module`. It has not run
# on the project's CI machines (Debian, Nix 2.8, no binary cache); the same
# steps run there against a systemd container (tests/service_unit.rs,
# tests/least_privilege.rs).
{ pkgs, self }:

let
  macha = self.packages.${pkgs.stdenv.hostPlatform.system}.macha;
  ollamaDouble = pkgs.callPackage ../ollama-double.nix { inherit macha; };
in
pkgs.testers.runNixOSTest {
  name = "macha-autonomous";

  nodes.machine =
    { lib, ... }:
    {
      imports = [ self.nixosModules.default ];

      services.macha-autonomous = {
        enable = true;
        checkInterval = 5;
        settings = {
          # Incidents come from the failing unit, not from the VM's small disk.
          detect = {
            disk_full_percent = 100;
            memory_pressure_percent = 100;
          };
          act.settle_time = 2;
        };
      };

      systemd.services.ollama-double = {
        description = "Ollama double (the project's test stand-in for Ollama)";
        wantedBy = [ "multi-user.target" ];
        before = [ "macha-autonomous.service" ];
        serviceConfig = {
          ExecStart = "${lib.getExe ollamaDouble} --listen 127.0.0.1:11434 --model llama3.1:70b";
          DynamicUser = true;
        };
      };

      systemd.services.demo-web = {
        description = "a web application that fails until its configuration exists";
        wantedBy = [ "multi-user.target" ];
        unitConfig.StartLimitIntervalSec = 0;
        script = ''
          if [ -e /run/demo-web.ok ]; then exec sleep infinity; fi
          echo "demo-web: cannot open /etc/demo-web.conf: No such file or directory" >&2
          exit 3
        '';
      };
    };

  testScript = ''
    import json
    import re

    machine.wait_for_unit("ollama-double.service")
    # Type=notify: active only once the daemon sent READY=1.
    machine.wait_for_unit("macha-autonomous.service")
    machine.wait_until_succeeds("systemctl is-failed demo-web.service")

    with subtest("the daemon runs as its own user and reports its state to systemd"):
        pid = machine.succeed("systemctl show -p MainPID --value macha-autonomous.service").strip()
        machine.succeed(f"test \"$(stat -c %U /proc/{pid})\" = macha")
        machine.wait_until_succeeds(
            "systemctl show -p StatusText --value macha-autonomous.service | grep -q '^idle'"
        )

    with subtest("the failed unit's restart is queued"):
        machine.wait_until_succeeds("macha-approve list --json | grep -q demo-web.service", timeout=120)
        items = json.loads(machine.succeed("macha-approve list --json"))
        item = next(i for i in items if i["target"] == "demo-web.service")
        assert item["kind"] == "restart_unit", item

    with subtest("approving it restarts the unit"):
        machine.succeed("touch /run/demo-web.ok")
        print(machine.succeed(f"macha-approve approve {item['id']}"))
        machine.wait_for_unit("demo-web.service")
        machine.succeed("macha-logs actions | grep 'restart_unit demo-web.service' | grep -q succeeded")

    with subtest("the service's sandbox"):
        report = machine.succeed("systemd-analyze security --no-pager macha-autonomous.service")
        print(report)
        level = re.search(r"Overall exposure level for macha-autonomous.service: ([0-9.]+)", report)
        assert level is not None, report
        exposure = float(level.group(1))
        assert exposure <= 2.5, f"exposure {exposure} is above 2.5"

    with subtest("the commands, completions and man pages are installed"):
        machine.succeed("macha-check --help", "macha-logs verify", "man -w macha-approve")
        machine.succeed("test -e /run/current-system/sw/share/bash-completion/completions/macha-check.bash")
  '';
}
