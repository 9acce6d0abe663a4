# Evaluates module/ with nixpkgs' real module system (lib.evalModules) and
# the stand-ins of ./stubs.nix. Run by ./eval.sh, which passes `lib`:
#
#   good      a host with every option set: the rendered unit (store paths
#             replaced by @package@ and @config@), the configuration file's
#             contents, the polkit rule and the helper units; the
#             expectations below are checked first, and ./eval.sh compares
#             the rest with the files in ./rendered/. The Chroma backend and
#             runbooks are not set there: tests/service_unit.rs starts that
#             unit in a container without a Chroma server or its token file.
#   chroma    a host with the Chroma backend next to a local ChromaDB, a
#             token file and runbooks: its expectations (configuration,
#             credential, ordering) are checked, `true`.
#   effects   one check per option: setting it changes what the option says
#             in the rendered file or unit. `true`, or an error naming the
#             option.
#   bad.NAME  configurations NixOS must refuse; each must fail, and
#             ./eval.sh checks the message.
{ lib }:

let
  stubs = import ./stubs.nix { inherit lib; };
  renderUnit = import ./render-unit.nix { inherit lib; };

  # NixOS refuses to build a system whose assertions fail; so does this.
  evaluate =
    modules:
    let
      inherit (lib.evalModules { modules = [ stubs.module ../../module ] ++ modules; }) config;
      failed = builtins.filter (a: !a.assertion) config.assertions;
    in
    if failed == [ ] then
      config
    else
      throw "Failed assertions:\n${lib.concatMapStrings (a: "- ${a.message}\n") failed}";

  host =
    options:
    evaluate [
      {
        _file = "the host's configuration (tests/nix/eval-module.nix)";
        services.macha-autonomous = {
          enable = true;
        }
        // options;
      }
    ];

  configFile = stubs.storePath "macha-autonomous.toml";
  placeholders = lib.replaceStrings [ stubs.pkgs.macha.outPath configFile ] [ "@package@" "@config@" ];

  render = config: {
    unit = placeholders (renderUnit config.systemd.services.macha-autonomous);
    settings = config.environment.etc."macha-autonomous/config.toml".source.value;
    polkitRule = config.environment.etc."polkit-1/rules.d/50-macha-autonomous.rules".text;
    helpers = lib.mapAttrs (_: u: placeholders u.text) config.systemd.units;
  };

  # `actual` must equal `expected`, or the error names `what` and shows both.
  expect =
    what: expected: actual:
    if expected == actual then
      true
    else
      throw "${what}:\n  expected ${builtins.toJSON expected}\n  got      ${builtins.toJSON actual}";

  goodHost = host {
    autonomyLevel = "auto-safe";
    checkInterval = 120;
    model = "qwen2.5:32b";
    ollamaUrl = "http://10.0.0.7:11434";
    protectedServices = [
      "postgresql"
      "backup.timer"
    ];
    gotify = {
      url = "https://gotify.example.org";
      tokenFile = "/run/secrets/gotify-token";
    };
    approverGroup = "ops";
    knowledgeBase.embeddingModel = "mxbai-embed-large";
    settings = {
      act.cooldown = 600;
      detect.disk_full_percent = 85;
      nixos.flake = "/etc/nixos#web1";
    };
  };
  good = render goodHost;
  service = goodHost.systemd.services.macha-autonomous;

  goodChecks = [
    (expect "the configuration file"
      {
        autonomy_level = "auto-safe";
        check_interval = 120;
        state_dir = "/var/lib/macha-autonomous";
        service_unit = "macha-autonomous.service";
        protected_units = [
          "postgresql.service"
          "backup.timer"
        ];
        ollama = {
          url = "http://10.0.0.7:11434";
          model = "qwen2.5:32b";
          embedding_model = "mxbai-embed-large";
        };
        knowledge_base = {
          enable = true;
          backend = "embedded";
        };
        act = {
          approver_group = "ops";
          cooldown = 600;
        };
        detect.disk_full_percent = 85;
        gotify = {
          url = "https://gotify.example.org";
          token_file = "/run/credentials/macha-autonomous.service/gotify-token";
        };
        nixos.flake = "/etc/nixos#web1";
      }
      good.settings)
    (expect "ExecStart" "${stubs.pkgs.macha.outPath}/bin/macha --config ${configFile} daemon" service.serviceConfig.ExecStart)
    (expect "the notify type and its watchdog" [ "notify" "main" "60s" ] [
      service.serviceConfig.Type
      service.serviceConfig.NotifyAccess
      service.serviceConfig.WatchdogSec
    ])
    (expect "the stop timeout: longer than an action in flight may take to finish" 95 service.serviceConfig.TimeoutStopSec)
    (expect "the user" [ "macha" "macha" ] [ service.serviceConfig.User service.serviceConfig.Group ])
    (expect "the system user"
      {
        isSystemUser = true;
        group = "macha";
        extraGroups = [ "systemd-journal" ];
        description = "macha-autonomous daemon";
        # No shell, no key: no controller may log in.
        useDefaultShell = false;
        openssh.authorizedKeys.keys = [ ];
      }
      goodHost.users.users.macha)
    (expect "the Gotify token's credential" [ "gotify-token:/run/secrets/gotify-token" ] service.serviceConfig.LoadCredential)
    (expect "the state directory" "macha-autonomous" service.serviceConfig.StateDirectory)
    (expect "the ordering" [ [ "network-online.target" ] [ "network-online.target" ] ] [ service.wants service.after ])
    (expect "the commands on PATH" [ stubs.pkgs.macha ] goodHost.environment.systemPackages)
    (expect "polkit" true goodHost.security.polkit.enable)
    (expect "the helper units" [
      "macha-action-gc.service"
      "macha-action-rebuild.service"
      "macha-action-rollback.service"
      "macha-action-vacuum-journal.service"
    ]
      (builtins.attrNames goodHost.systemd.units))
    (expect "placeholders left in the helpers" [ ] (
      lib.filter (u: builtins.match ".*@(macha|config|stateDir|path)@.*" u.text != null) (
        builtins.attrValues goodHost.systemd.units
      )
    ))
    (expect "the end of the protected list in the polkit rule: the built-in list, then the admin's units" [
      "ollama.service"
      "macha-autonomous.service"
      "postgresql.service"
      "backup.timer"
    ]
      (lib.sublist 24 4 (builtins.fromJSON (builtins.head (builtins.match ".*var PROTECTED_UNITS = (\\[[^]]*]);.*" good.polkitRule)))))
  ];

  # The Chroma backend served by ChromaDB on this host (services.chromadb),
  # with a token, runbooks outside the store and the tenant from settings.
  chromaHost = evaluate [
    {
      services.chromadb = {
        enable = true;
        host = "0.0.0.0";
        port = 8001;
      };
      services.macha-autonomous = {
        enable = true;
        knowledgeBase = {
          backend = "chroma";
          chroma.tokenFile = "/run/secrets/chroma-token";
          runbooks = "/srv/runbooks";
        };
        settings.knowledge_base.chroma.tenant = "fleet";
      };
    }
  ];
  chromaService = chromaHost.systemd.services.macha-autonomous;
  chromaChecks = [
    (expect "the knowledge base with the local ChromaDB"
      {
        enable = true;
        backend = "chroma";
        runbooks = "/srv/runbooks";
        chroma = {
          url = "http://127.0.0.1:8001";
          token_file = "/run/credentials/macha-autonomous.service/chroma-token";
          tenant = "fleet";
        };
      }
      (render chromaHost).settings.knowledge_base)
    (expect "the Chroma token's credential" [ "chroma-token:/run/secrets/chroma-token" ] chromaService.serviceConfig.LoadCredential)
    (expect "the ordering after the local ChromaDB"
      [
        [ "network-online.target" "chromadb.service" ]
        [ "network-online.target" "chromadb.service" ]
      ]
      [ chromaService.wants chromaService.after ])
    (expect "both credentials, Gotify's and Chroma's"
      [ "gotify-token:/run/secrets/gotify-token" "chroma-token:/run/secrets/chroma-token" ]
      (host {
        gotify = {
          url = "https://gotify.example.org";
          tokenFile = "/run/secrets/gotify-token";
        };
        knowledgeBase.chroma.tokenFile = "/run/secrets/chroma-token";
      }).systemd.services.macha-autonomous.serviceConfig.LoadCredential)
  ];

  # One host per option: the option's effect against a host without it.
  base = render (host { });
  effect =
    option: options: check:
    let
      changed = render (host options);
    in
    if check changed && !(check base) then true else throw "setting ${option} has no visible effect";
  setting = path: r: lib.attrByPath path null r.settings;
in
{
  good =
    assert lib.all (x: x) goodChecks;
    good;

  chroma = lib.all (x: x) chromaChecks;

  effects = {
    documented =
      let
        options = lib.collect lib.isOption
          (lib.evalModules { modules = [ stubs.module ../../module ]; }).options.services.macha-autonomous;
        undocumented = builtins.filter (o: (o.description or "") == "" || (o.example or null) == null) options;
      in
      expect "options without a description or an example" [ ] (map (o: lib.showOption o.loc) undocumented);
    enable =
      let
        off = evaluate [{ services.macha-autonomous.enable = false; }];
      in
      expect "a host without enable" [{ } { } [ ]] [
        off.systemd.services
        off.environment.etc
        off.environment.systemPackages
      ];
    defaults = expect "the configuration with every option at its default"
      {
        autonomy_level = "suggest";
        check_interval = 300;
        state_dir = "/var/lib/macha-autonomous";
        service_unit = "macha-autonomous.service";
        protected_units = [ ];
        ollama = {
          url = "http://127.0.0.1:11434";
          model = "llama3.1:70b";
          embedding_model = "nomic-embed-text";
        };
        knowledge_base = {
          enable = true;
          backend = "embedded";
        };
        act.approver_group = "wheel";
      }
      base.settings;
    package =
      let
        other = stubs.pkgs.macha // {
          outPath = stubs.storePath "macha-9.9.9";
        };
      in
      effect "package" { package = other; } (r: lib.hasInfix "macha-9.9.9/bin/macha" r.unit);
    autonomyLevel = effect "autonomyLevel" { autonomyLevel = "observe"; } (r: setting [ "autonomy_level" ] r == "observe");
    checkInterval = effect "checkInterval" { checkInterval = 30; } (r: setting [ "check_interval" ] r == 30);
    model = effect "model" { model = "llama3.1:8b"; } (r: setting [ "ollama" "model" ] r == "llama3.1:8b");
    ollamaUrl = effect "ollamaUrl" { ollamaUrl = "https://llm.lan"; } (r: setting [ "ollama" "url" ] r == "https://llm.lan");
    protectedServices = effect "protectedServices" { protectedServices = [ "nginx" ]; } (
      r: setting [ "protected_units" ] r == [ "nginx.service" ] && lib.hasInfix "\"nginx.service\"" r.polkitRule
    );
    gotify = effect "gotify.url and gotify.tokenFile"
      {
        gotify = {
          url = "http://gotify.lan";
          tokenFile = "/etc/macha/token";
        };
      }
      (r: setting [ "gotify" "url" ] r == "http://gotify.lan" && lib.hasInfix "LoadCredential=gotify-token:/etc/macha/token\n" r.unit);
    approverGroup = effect "approverGroup" { approverGroup = "ops"; } (r: setting [ "act" "approver_group" ] r == "ops");
    settings = effect "settings" { settings.gotify.digest_hour = 7; } (r: setting [ "gotify" "digest_hour" ] r == 7)
      && effect "settings.act.job_timeout" { settings.act.job_timeout = 600; } (r: lib.hasInfix "TimeoutStopSec=635\n" r.unit);
    knowledgeBaseEnable = effect "knowledgeBase.enable" { knowledgeBase.enable = false; } (
      r: setting [ "knowledge_base" "enable" ] r == false
    );
    knowledgeBaseBackend = effect "knowledgeBase.backend and knowledgeBase.chroma.url"
      {
        knowledgeBase = {
          backend = "chroma";
          chroma.url = "https://chroma.lan";
        };
      }
      (r: setting [ "knowledge_base" "backend" ] r == "chroma" && setting [ "knowledge_base" "chroma" "url" ] r == "https://chroma.lan");
    knowledgeBaseChromaTokenFile = effect "knowledgeBase.chroma.tokenFile" { knowledgeBase.chroma.tokenFile = "/etc/macha/chroma-token"; } (
      r:
      setting [ "knowledge_base" "chroma" "token_file" ] r == "/run/credentials/macha-autonomous.service/chroma-token"
      && lib.hasInfix "LoadCredential=chroma-token:/etc/macha/chroma-token\n" r.unit
    );
    knowledgeBaseEmbeddingModel = effect "knowledgeBase.embeddingModel" { knowledgeBase.embeddingModel = "mxbai-embed-large"; } (
      r: setting [ "ollama" "embedding_model" ] r == "mxbai-embed-large"
    );
    remoteAllowControllers =
      let
        c = evaluate [
          {
            services.openssh.enable = true;
            services.macha-autonomous = {
              enable = true;
              remote.allowControllers = [{ key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq ctl"; }];
            };
          }
        ];
        u = c.users.users.macha;
      in
      expect "a controller's key, restricted to the protocol, and a shell to run it with"
        [
          true
          [ ''restrict,command="${stubs.pkgs.macha.outPath}/bin/macha --config ${configFile} remote serve" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMq ctl'' ]
        ]
        [
          u.useDefaultShell
          u.openssh.authorizedKeys.keys
        ];
    remoteHosts = effect "remote.hosts and remote.privateKeyFile"
      {
        remote = {
          privateKeyFile = "/etc/macha/remote-key";
          hosts = [
            { name = "web1"; address = "192.0.2.10"; hostKey = "ssh-ed25519 AAAA"; }
            { name = "db1"; address = "192.0.2.11"; port = 2222; knownHosts = "/etc/ssh/ssh_known_hosts"; }
          ];
        };
      }
      (
        r:
        setting [ "remote" "private_key_file" ] r == "/run/credentials/macha-autonomous.service/remote-key"
        && lib.hasInfix "LoadCredential=remote-key:/etc/macha/remote-key\n" r.unit
        && setting [ "remote" "hosts" ] r == [
          { name = "web1"; address = "192.0.2.10"; port = 22; host_key = "ssh-ed25519 AAAA"; }
          { name = "db1"; address = "192.0.2.11"; port = 2222; known_hosts = "/etc/ssh/ssh_known_hosts"; }
        ]
      );
    metrics = effect "metrics.enable, listenAddress and port" { metrics = { enable = true; listenAddress = "::"; port = 9100; }; } (
      r: setting [ "metrics" "listen" ] r == "[::]:9100"
    );
    metricsOnLoopback = expect "the metrics on loopback, port 9469, by default" "127.0.0.1:9469" (
      setting [ "metrics" "listen" ] (render (host { metrics.enable = true; }))
    );
    metricsFirewall =
      let
        ports = options: (evaluate [{ services.macha-autonomous = { enable = true; } // options; }]).networking.firewall.allowedTCPPorts;
      in
      expect "the metrics port opened only with openFirewall" [ [ ] [ ] [ 9469 ] ] [
        (ports { })
        (ports { metrics.enable = true; })
        (ports { metrics = { enable = true; openFirewall = true; }; })
      ];
    alertmanager = effect "alertmanager.enable and alertmanager.tokenFile"
      { alertmanager = { enable = true; port = 9470; tokenFile = "/etc/macha/am-token"; }; }
      (
        r:
        setting [ "alertmanager" "listen" ] r == "127.0.0.1:9470"
        && setting [ "alertmanager" "token_file" ] r == "/run/credentials/macha-autonomous.service/alertmanager-token"
        && lib.hasInfix "LoadCredential=alertmanager-token:/etc/macha/am-token\n" r.unit
      );
    ntfy = effect "ntfy.url, ntfy.topic and ntfy.tokenFile"
      { ntfy = { url = "https://ntfy.example.org"; topic = "macha-web1"; tokenFile = "/etc/macha/ntfy-token"; }; }
      (
        r:
        setting [ "ntfy" ] r == {
          url = "https://ntfy.example.org";
          topic = "macha-web1";
          token_file = "/run/credentials/macha-autonomous.service/ntfy-token";
        }
        && lib.hasInfix "LoadCredential=ntfy-token:/etc/macha/ntfy-token\n" r.unit
      );
    matrix = effect "matrix.homeserver, matrix.roomId and matrix.tokenFile"
      { matrix = { homeserver = "https://matrix.example.org"; roomId = "!ops:example.org"; tokenFile = "/etc/macha/matrix-token"; }; }
      (
        r:
        setting [ "matrix" ] r == {
          homeserver = "https://matrix.example.org";
          room_id = "!ops:example.org";
          token_file = "/run/credentials/macha-autonomous.service/matrix-token";
        }
        && lib.hasInfix "LoadCredential=matrix-token:/etc/macha/matrix-token\n" r.unit
      );
    knowledgeBaseRunbooks = effect "knowledgeBase.runbooks" { knowledgeBase.runbooks = "/srv/runbooks"; } (
      r: setting [ "knowledge_base" "runbooks" ] r == "/srv/runbooks"
    );
    # A Nix path is copied into the store, and the configuration names the copy.
    knowledgeBaseRunbooksInStore =
      let
        runbooks = setting [ "knowledge_base" "runbooks" ] (render (host { knowledgeBase.runbooks = ./rendered; }));
      in
      expect "runbooks given as a Nix path: its copy in the store" true (
        lib.hasPrefix "${builtins.storeDir}/" runbooks && lib.hasSuffix "-rendered" runbooks
      );
    # Home directories opened read-only to the service: runbooks there are allowed.
    knowledgeBaseRunbooksInHome =
      let
        c = evaluate [
          {
            services.macha-autonomous = {
              enable = true;
              knowledgeBase.runbooks = "/home/ops/runbooks";
            };
            systemd.services.macha-autonomous.serviceConfig.ProtectHome = "read-only";
          }
        ];
      in
      expect "runbooks under /home with ProtectHome=read-only" "/home/ops/runbooks" (render c).settings.knowledge_base.runbooks;
    # The local ChromaDB orders the daemon only when memory is kept there.
    chromaOrdering =
      let
        embedded = evaluate [
          {
            services.chromadb.enable = true;
            services.macha-autonomous.enable = true;
          }
        ];
        chromaOn = address: (evaluate [
          {
            services.chromadb = {
              enable = true;
              host = address;
            };
            services.macha-autonomous = {
              enable = true;
              knowledgeBase.backend = "chroma";
            };
          }
        ]);
        explicitUrl = evaluate [
          {
            services.chromadb.enable = true;
            services.macha-autonomous = {
              enable = true;
              knowledgeBase = {
                backend = "chroma";
                chroma.url = "http://chroma.lan:8000";
              };
            };
          }
        ];
        url = c: (render c).settings.knowledge_base.chroma.url;
      in
      expect "a local ChromaDB with the embedded backend, then its URL from host and port"
        [
          [ "network-online.target" ]
          {
            enable = true;
            backend = "embedded";
          }
          "http://10.1.2.3:8000"
          "http://[::1]:8000"
          "http://chroma.lan:8000"
        ]
        [
          embedded.systemd.services.macha-autonomous.after
          (render embedded).settings.knowledge_base
          (url (chromaOn "10.1.2.3"))
          (url (chromaOn "::"))
          (url explicitUrl)
        ];
    ollamaOrdering =
      let
        withOllama = evaluate [
          {
            services.ollama.enable = true;
            services.macha-autonomous.enable = true;
          }
        ];
      in
      expect "the order after a local Ollama" [
        "network-online.target"
        "ollama.service"
      ]
        withOllama.systemd.services.macha-autonomous.after;
  };

  bad = {
    autonomyLevel = render (host { autonomyLevel = "yolo"; });
    tokenFileInStore = render (host {
      gotify = {
        url = "https://gotify.example.org";
        tokenFile = "${builtins.storeDir}/0a7bqvaa6r2sibqqwkn2vmrzl4fw3mfl-gotify-token";
      };
    });
    tokenFileAsPath = render (host {
      gotify = {
        url = "https://gotify.example.org";
        tokenFile = ./stubs.nix;
      };
    });
    tokenWithoutUrl = render (host { gotify.tokenFile = "/run/secrets/gotify-token"; });
    settingOfUnknownType = render (host { settings.act.cooldown = _: 600; });
    settingOwnedByAnOption = render (host { settings.state_dir = "/srv/macha"; });
    tokenFileInSettings = render (host { settings.gotify.token_file = "/etc/gotify-token"; });
    protectedServiceName = render (host { protectedServices = [ "ssh; reboot" ]; });
    checkInterval = render (host { checkInterval = 0; });
    chromaWithoutUrl = render (host { knowledgeBase.backend = "chroma"; });
    chromaTokenFileInStore = render (host {
      knowledgeBase.chroma.tokenFile = "${builtins.storeDir}/0a7bqvaa6r2sibqqwkn2vmrzl4fw3mfl-chroma-token";
    });
    chromaTokenFileAsPath = render (host { knowledgeBase.chroma.tokenFile = ./stubs.nix; });
    chromaTokenFileInSettings = render (host { settings.knowledge_base.chroma.token_file = "/etc/chroma-token"; });
    chromaUrlWithCredentials = render (host { knowledgeBase.chroma.url = "http://admin:secret@chroma.lan:8000"; });
    runbooksInHome = render (host { knowledgeBase.runbooks = "/home/ops/runbooks"; });
    runbooksInTmp = render (host { knowledgeBase.runbooks = "/tmp/runbooks"; });
    remoteHostsWithoutKey = render (host { remote.hosts = [{ name = "web1"; address = "a"; hostKey = "ssh-ed25519 AAAA"; }]; });
    remoteHostUnchecked = render (host {
      remote = {
        privateKeyFile = "/etc/macha/remote-key";
        hosts = [{ name = "web1"; address = "a"; }];
      };
    });
    remoteKeyInStore = render (host { remote.privateKeyFile = "${builtins.storeDir}/0a7bqvaa6r2sibqqwkn2vmrzl4fw3mfl-key"; });
    ntfyWithoutTopic = render (host { ntfy.url = "https://ntfy.example.org"; });
    matrixWithoutRoom = render (host { matrix = { homeserver = "https://m.example.org"; tokenFile = "/etc/t"; }; });
    matrixRoomAlias = render (host { matrix = { homeserver = "https://m.example.org"; roomId = "#ops:m.example.org"; tokenFile = "/etc/t"; }; });
    matrixTokenInStore = render (host {
      matrix = {
        homeserver = "https://m.example.org";
        roomId = "!ops:m.example.org";
        tokenFile = "${builtins.storeDir}/0a7bqvaa6r2sibqqwkn2vmrzl4fw3mfl-token";
      };
    });
    alertmanagerWithoutToken = render (host { alertmanager.enable = true; });
    alertmanagerTokenInStore = render (host {
      alertmanager = {
        enable = true;
        tokenFile = "${builtins.storeDir}/0a7bqvaa6r2sibqqwkn2vmrzl4fw3mfl-token";
      };
    });
    controllersWithoutSshd = render (host { remote.allowControllers = [{ key = "ssh-ed25519 AAAA ctl"; }]; });
    # What it would write in authorized_keys.
    controllerKeyWithACommand =
      (evaluate [
        {
          services.openssh.enable = true;
          services.macha-autonomous = {
            enable = true;
            remote.allowControllers = [{ key = "command=\"sh\" ssh-ed25519 AAAA"; }];
          };
        }
      ]).users.users.macha.openssh.authorizedKeys.keys;
  };
}
