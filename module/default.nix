# services.macha-autonomous: the daemon as a hardened systemd service, its
# configuration file, its user, the polkit rule that limits that user, and
# the root helper units that are its only way to root.
#
# The options below cover what most hosts set; `settings` takes any other
# key of the configuration file (macha.example.toml lists them all). The
# module renders ONE file from both, /etc/macha-autonomous/config.toml, and
# the daemon is started with exactly that file (`--config`); the CLI reads
# it from the same place.
{ config
, lib
, pkgs
, ...
}:

let
  cfg = config.services.macha-autonomous;
  toml = pkgs.formats.toml { };

  unit = "macha-autonomous.service";
  user = "macha";
  stateDir = "/var/lib/macha-autonomous";
  # What systemd makes of LoadCredential=gotify-token:PATH: a copy only the
  # service can read, gone when it stops.
  gotifyCredential = "gotify-token";
  gotifyTokenPath = "/run/credentials/${unit}/${gotifyCredential}";
  chromaCredential = "chroma-token";
  chromaTokenPath = "/run/credentials/${unit}/${chromaCredential}";
  remoteCredential = "remote-key";
  remoteKeyPath = "/run/credentials/${unit}/${remoteCredential}";
  ntfyCredential = "ntfy-token";
  matrixCredential = "matrix-token";
  alertsCredential = "alertmanager-token";
  alertsTokenPath = "/run/credentials/${unit}/${alertsCredential}";
  # host:port, an IPv6 address in brackets.
  hostPort = address: port: if lib.hasInfix ":" address then "[${address}]:${toString port}" else "${address}:${toString port}";
  remote = cfg.remote;
  # A controller's key in the macha user's authorized_keys: it can do
  # nothing but run the protocol (no PTY, no forwarding, no agent, no X11,
  # no user rc; whatever command the client asks for is refused by it).
  controllerKey =
    c: ''restrict,command="${lib.getExe cfg.package} --config ${configFile} remote serve" ${c.key}'';

  kb = cfg.knowledgeBase;
  # A ChromaDB server on this host (nixpkgs' services.chromadb) is the one
  # macha uses when the chroma backend names no other, and is started first.
  localChroma = kb.backend == "chroma" && (config.services.chromadb.enable or false);
  localChromaUrl =
    let
      inherit (config.services.chromadb) host port;
      # A server listening on every address is reached on the loopback one.
      reach = if host == "0.0.0.0" then "127.0.0.1" else if host == "::" then "::1" else host;
    in
    "http://${if lib.hasInfix ":" reach then "[${reach}]" else reach}:${toString port}";
  chromaUrl = if kb.chroma.url == null && localChroma then localChromaUrl else kb.chroma.url;

  # What the sandbox below hides from the daemon: home directories
  # (ProtectHome=, unless an admin opens them read-only or not at all) and
  # /tmp, /var/tmp (PrivateTmp=).
  protectHome = config.systemd.services.macha-autonomous.serviceConfig.ProtectHome or false;
  hiddenDirs =
    [
      "/tmp"
      "/var/tmp"
    ]
    ++ lib.optionals (!(builtins.elem protectHome [ false "no" "read-only" ])) [
      "/home"
      "/root"
      "/run/user"
    ];
  runbooksDir = if kb.runbooks == null then null else "${kb.runbooks}";
  hiddenRunbooks =
    runbooksDir != null && lib.any (dir: runbooksDir == dir || lib.hasPrefix "${dir}/" runbooksDir) hiddenDirs;

  # A unit name with its type, as macha and polkit compare them. A bare name
  # is taken for a service: "postgresql" protects postgresql.service.
  unitTypes = "service|socket|target|device|mount|automount|swap|timer|path|slice|scope";
  unitName = lib.types.strMatching "[A-Za-z0-9:_.@\\\\-]+";
  withSuffix = name: if builtins.match ".*\\.(${unitTypes})" name != null then name else "${name}.service";

  # The rule in ./polkit carries the built-in protected list between two
  # markers; the generated copy replaces that block with the full list, so
  # the list has one source (a unit test in src/gate.rs checks that it holds
  # every built-in name).
  rule = builtins.readFile ./polkit/50-macha-autonomous.rules;
  ruleParts =
    let
      parts = builtins.match "(.*// BEGIN GENERATED: PROTECTED_UNITS\n)(.*)(    // END GENERATED: PROTECTED_UNITS\n.*)" rule;
    in
    if parts == null then
      throw "module/polkit/50-macha-autonomous.rules has lost its lines `// BEGIN GENERATED: PROTECTED_UNITS` and `    // END GENERATED: PROTECTED_UNITS`, between which the module writes the protected list"
    else
      parts;
  builtInProtected = map builtins.head (
    builtins.filter builtins.isList (builtins.split "\"([^\"]+)\"" (builtins.elemAt ruleParts 1))
  );
  # polkit sees a unit's primary name only: the admin's names must be primary
  # names (see module/README.md).
  protectedUnits = lib.unique (builtInProtected ++ cfg.settings.protected_units ++ [ unit ]);
  generatedRule = lib.concatStrings [
    (builtins.elemAt ruleParts 0)
    "    var PROTECTED_UNITS = ${builtins.toJSON protectedUnits};\n"
    (builtins.elemAt ruleParts 2)
  ];

  configFile = toml.generate "macha-autonomous.toml" cfg.settings;

  # A stopping daemon lets an action in flight finish its job and its check
  # (act.job_timeout + act.settle_time + 5 s, src/daemon.rs) before it exits;
  # systemd must wait longer than that before it kills it.
  stopTimeout = (cfg.settings.act.job_timeout or 60) + (cfg.settings.act.settle_time or 5) + 30;

  # What the root helpers run: the configured Nix (nix.package), git (for a
  # flake in a git checkout), and nixos-rebuild as the running system has it
  # (/run/current-system/sw/bin), the same tools an admin would use.
  helperPath = lib.makeBinPath [
    config.nix.package
    pkgs.git
    pkgs.coreutils
  ] + ":/run/current-system/sw/bin";
  helper = file: lib.replaceStrings [ "@macha@" "@config@" "@stateDir@" "@path@" ] [
    (lib.getExe cfg.package)
    "${configFile}"
    stateDir
    helperPath
  ]
    (builtins.readFile (./helpers + "/${file}"));
  helperFiles = lib.filterAttrs (name: type: type == "regular" && lib.hasSuffix ".service" name) (
    builtins.readDir ./helpers
  );
in
{
  options.services.macha-autonomous = {
    enable = lib.mkEnableOption ''
      macha, which watches this host's systemd units, journal and resources,
      asks a local model (Ollama) what is wrong, and carries out or queues a
      repair from a fixed catalog, as far as {option}`autonomyLevel` allows
    '';

    package = lib.mkPackageOption pkgs "macha" {
      example = "inputs.macha.packages.\${pkgs.stdenv.hostPlatform.system}.default";
    };

    autonomyLevel = lib.mkOption {
      type = lib.types.enum [
        "observe"
        "suggest"
        "auto-safe"
        "auto-full"
      ];
      default = "suggest";
      example = "auto-safe";
      description = ''
        How far macha may go on its own.

        - `observe`: watch and record; never act, never queue.
        - `suggest`: queue every proposed action for `macha-approve`.
        - `auto-safe`: restart or reset the failed unit, collect garbage and
          vacuum the journal by itself (within storm limits); queue the rest.
        - `auto-full`: also `nixos-rebuild dry-build` and `test` by itself;
          `switch`, `boot` and rollbacks are always queued for a human.

        Protected units are never touched at any level.
      '';
    };

    checkInterval = lib.mkOption {
      type = lib.types.ints.between 1 86400;
      default = 300;
      example = 60;
      description = "Seconds between two full passes of the daemon (`check_interval`; 1 to 86400, as the daemon accepts): the reconciliation that catches what no signal tells (disks, memory, a missed signal). Failures are seen at once from systemd's signals.";
    };

    model = lib.mkOption {
      type = lib.types.strMatching ".*[^[:space:]].*";
      default = "llama3.1:70b";
      example = "qwen2.5:32b";
      description = ''
        The Ollama model macha asks (`ollama.model`). It must be pulled on
        the server (`ollama pull MODEL`); `macha status` says when it is not.
      '';
    };

    ollamaUrl = lib.mkOption {
      type = lib.types.strMatching "https?://[^?@]+";
      default = "http://127.0.0.1:11434";
      example = "http://gpu-box.lan:11434";
      description = ''
        Base URL of the Ollama server (`ollama.url`). When
        {option}`services.ollama.enable` is set on this host, the daemon
        starts after `ollama.service`.
      '';
    };

    protectedServices = lib.mkOption {
      type = lib.types.listOf unitName;
      default = [ ];
      apply = map withSuffix;
      example = [
        "postgresql"
        "nginx.service"
        "backup.timer"
      ];
      description = ''
        Units macha never restarts or resets, in addition to the built-in
        list (ssh, networking, resolved, dbus, journald, logind, polkit,
        ollama, macha itself) and every unit with `RefuseManualStop=yes`.
        A name without a type is a service. Use a unit's primary name
        (`systemctl show -p Id UNIT`), not an alias: polkit, which enforces
        this list a second time, sees primary names only. Written to
        `protected_units` and to the polkit rule.
      '';
    };

    gotify = {
      url = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "https?://[^?@]+");
        default = null;
        example = "https://gotify.example.org";
        description = ''
          Base URL of a Gotify server for notifications (`gotify.url`);
          `null` turns notifications off. Requires {option}`gotify.tokenFile`.
        '';
      };
      tokenFile = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "/.+");
        default = null;
        example = "/run/secrets/macha-gotify-token";
        description = ''
          A file holding the Gotify application token, given as a string so
          that it is never copied into the world-readable Nix store. The
          service receives it through `LoadCredential=`, so the file may
          stay readable by root only; `gotify.token_file` in the
          configuration points at the credential.
        '';
      };
    };

    knowledgeBase = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = true;
        example = false;
        description = ''
          Incident memory (`knowledge_base.enable`): every incident is
          remembered from the audit trail with what came of each fix tried,
          and the nearest past incidents are shown to the next decisions;
          `macha kb` searches it. `false` turns it off (nothing is
          remembered or recalled; `macha kb export`, `import` and `forget`
          still work on what is kept).
        '';
      };
      backend = lib.mkOption {
        type = lib.types.enum [
          "embedded"
          "chroma"
        ];
        default = "embedded";
        example = "chroma";
        description = ''
          Where memories are kept (`knowledge_base.backend`).

          - `embedded`: `knowledge.db` in the state directory, full text and
            embeddings; no service to run.
          - `chroma`: the ChromaDB server of {option}`knowledgeBase.chroma.url`,
            a memory shared by a fleet. Chroma finds memories by their
            embeddings only: while the embedding model is down, new records
            wait in the audit trail and decisions go on without memory.
        '';
      };
      chroma = {
        url = lib.mkOption {
          type = lib.types.nullOr (lib.types.strMatching "https?://[^?@]+");
          default = null;
          example = "http://chroma.lan:8000";
          description = ''
            Base URL of the ChromaDB server, without `/api/v2`
            (`knowledge_base.chroma.url`); required with
            {option}`knowledgeBase.backend` `"chroma"`, unless
            {option}`services.chromadb.enable` is set on this host: then
            `null` means that server, `http://HOST:PORT` from
            {option}`services.chromadb.host` and
            {option}`services.chromadb.port` (`0.0.0.0` and `::` are reached
            on the loopback address). With the chroma backend and a local
            ChromaDB, the daemon wants `chromadb.service` and starts after
            it. No credentials in the URL: see
            {option}`knowledgeBase.chroma.tokenFile`. The tenant, database,
            collection and timeout are in `settings.knowledge_base.chroma`.
          '';
        };
        tokenFile = lib.mkOption {
          type = lib.types.nullOr (lib.types.strMatching "/.+");
          default = null;
          example = "/run/secrets/macha-chroma-token";
          description = ''
            A file holding the token Chroma, or a proxy in front of it,
            checks; given as a string so that it is never copied into the
            world-readable Nix store. The service receives it through
            `LoadCredential=`, so the file may stay readable by root only;
            `knowledge_base.chroma.token_file` in the configuration points at
            the credential. `null`: requests carry no token.
          '';
        };
      };
      embeddingModel = lib.mkOption {
        type = lib.types.strMatching ".*[^[:space:]].*";
        default = "nomic-embed-text";
        example = "mxbai-embed-large";
        description = ''
          The Ollama model that turns texts into vectors for incident memory
          (`ollama.embedding_model`), asked on {option}`ollamaUrl` only. It
          must be pulled there (`ollama pull nomic-embed-text`); without
          it, the embedded backend finds memories by their words alone. A
          Chroma collection is made for one model: name another collection
          (`settings.knowledge_base.chroma.collection`) when it changes.
        '';
      };
      runbooks = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        example = lib.literalExpression "./runbooks";
        description = ''
          A directory of your runbooks, markdown files (`*.md`), that
          decisions are shown the sections of nearest to an incident
          (`knowledge_base.runbooks`). A Nix path such as `./runbooks` is
          copied into the Nix store, where everyone can read it; that is
          fine for runbooks, and a change rebuilds the configuration. A
          string such as `"/srv/runbooks"` names a directory outside the
          store, read in place: the daemon reads it as the user `macha`,
          so its files must be readable by that user or by everyone, owned
          by root or `macha` and writable by no one else (other files are
          left out: the model reads what they say), and it must not be under `/home`, `/root`, `/run/user`, `/tmp` or
          `/var/tmp`, which the service's sandbox hides.
        '';
      };
    };

    approverGroup = lib.mkOption {
      type = lib.types.strMatching "[a-z_][a-z0-9_-]*";
      default = "wheel";
      example = "ops";
      description = ''
        Besides root, members of this group may approve and reject queued
        actions and leave notes (`act.approver_group`).
      '';
    };

    remote = {
      allowControllers = lib.mkOption {
        type = lib.types.listOf (
          lib.types.submodule {
            options.key = lib.mkOption {
              type = lib.types.strMatching
                "(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa|sk-ssh-ed25519@openssh.com) [A-Za-z0-9+/]+=*( [^\n]*)?";
              example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... macha@controller";
              description = "The controller's public key, as `ssh-keygen` writes it.";
            };
          }
        );
        default = [ ];
        example = [{ key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... macha@controller"; }];
        description = ''
          Controllers that may reach this host over SSH. Each key goes into
          the `${user}` user's authorized keys as
          `restrict,command="macha ... remote serve" KEY`: with it a
          controller gets the typed protocol and nothing else (no command,
          no shell or PTY, no forwarding), and this host judges every
          action with its own settings (its autonomy level, its protected
          services). The user gets a login shell to run that one command
          with. Needs {option}`services.openssh.enable`.
        '';
      };
      hosts = lib.mkOption {
        type = lib.types.listOf (
          lib.types.submodule {
            options = {
              name = lib.mkOption {
                type = lib.types.strMatching "[A-Za-z0-9._-]{1,64}";
                example = "web1";
                description = "The name its incidents carry (`web1/unit-failed:nginx.service`).";
              };
              address = lib.mkOption {
                type = lib.types.str;
                example = "192.0.2.10";
                description = "Its host name or IP address.";
              };
              port = lib.mkOption {
                type = lib.types.port;
                default = 22;
                example = 2222;
                description = "Its SSH port.";
              };
              hostKey = lib.mkOption {
                type = lib.types.nullOr lib.types.str;
                default = null;
                example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...";
                description = ''
                  The key it must show, as `known_hosts` writes it; or
                  `null` and {option}`knownHosts`.
                '';
              };
              knownHosts = lib.mkOption {
                type = lib.types.nullOr (lib.types.strMatching "/.+");
                default = null;
                example = "/etc/ssh/ssh_known_hosts";
                description = "A `known_hosts` file that holds its key, instead of {option}`hostKey`.";
              };
            };
          }
        );
        default = [ ];
        example = lib.literalExpression ''
          [
            { name = "web1"; address = "192.0.2.10"; hostKey = "ssh-ed25519 AAAA..."; }
            { name = "db1"; address = "192.0.2.11"; knownHosts = "/etc/ssh/ssh_known_hosts"; }
          ]
        '';
        description = ''
          The hosts this one reaches as a controller (`[[remote.hosts]]`),
          each as the user `${user}`, whose key there must be this
          controller's ({option}`remote.allowControllers` on that host). A
          host whose key is not the one given gets nothing. The daemon
          looks at every host at each check, decides for its incidents
          (`web1/unit-failed:nginx.service`) and asks the host to carry
          out what both sides' gates allow; at most
          `settings.remote.max_hosts_acting` hosts (1) are acted on
          automatically within `settings.remote.acting_window` seconds.
          Requires {option}`remote.privateKeyFile`.
        '';
      };
      privateKeyFile = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "/.+");
        default = null;
        example = "/run/secrets/macha-remote-key";
        description = ''
          The controller's private SSH key (OpenSSH format); given as a
          string so that it is never copied into the Nix store. The service
          receives it through `LoadCredential=`, and
          `remote.private_key_file` in the configuration points at the
          credential.
        '';
      };
    };

    metrics = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = false;
        example = true;
        description = ''
          The daemon's state for Prometheus (`metrics.listen`): `GET /metrics`
          in the Prometheus text format, and no other route. Incidents open
          and opened by kind, decisions, actions by kind and result,
          approvals waiting and the oldest one's age, the model's requests,
          failures, fallbacks, tokens and latency, the signal stream, cycles.
        '';
      };
      listenAddress = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = "The address the metrics are served on; loopback keeps them to this host.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = 9469;
        example = 9100;
        description = "The port the metrics are served on.";
      };
      openFirewall = lib.mkOption {
        type = lib.types.bool;
        default = false;
        example = true;
        description = "Open {option}`metrics.port` in the firewall, for a Prometheus on another host.";
      };
    };

    ntfy = {
      url = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "https?://[^?@]+");
        default = null;
        example = "https://ntfy.example.org";
        description = ''
          Notifications through ntfy too (`ntfy.url`): the same messages as
          Gotify's, with its limits, digest and priorities, delivered on
          their own so that one service down holds up no other.
        '';
      };
      topic = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "[A-Za-z0-9_-]{1,64}");
        default = null;
        example = "macha-web1";
        description = "The topic published to; required with {option}`ntfy.url`.";
      };
      tokenFile = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "/.+");
        default = null;
        example = "/run/secrets/macha-ntfy-token";
        description = ''
          An access token (`tk_...`) for a topic that needs one; given as a
          string so that it is never copied into the Nix store. The service
          receives it through `LoadCredential=`.
        '';
      };
    };

    matrix = {
      homeserver = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "https?://[^?@]+");
        default = null;
        example = "https://matrix.example.org";
        description = ''
          Notifications into a Matrix room too (`matrix.homeserver`, the
          client-server API): the same messages, their markdown as HTML.
        '';
      };
      roomId = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "![^ /]+:.+");
        default = null;
        example = "!abcdef:example.org";
        description = "The room's id (not an alias), which macha's Matrix user has joined.";
      };
      tokenFile = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "/.+");
        default = null;
        example = "/run/secrets/macha-matrix-token";
        description = ''
          The access token of macha's Matrix user; given as a string so that
          it is never copied into the Nix store. The service receives it
          through `LoadCredential=`.
        '';
      };
    };

    alertmanager = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = false;
        example = true;
        description = ''
          Take Alertmanager's webhook (`alertmanager.listen`, `POST /alertmanager`):
          each firing alert whose labels name this host (`host`, `hostname`,
          `instance` without its port, or `nodename`; more names in
          `settings.alertmanager.host_names`) becomes the incident
          `alert:ALERTNAME`, decided like any other, and resolves with the
          alert. Requires {option}`alertmanager.tokenFile`.
        '';
      };
      listenAddress = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        example = "0.0.0.0";
        description = "The address the webhook is taken on.";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = 9469;
        example = 9470;
        description = "The port the webhook is taken on; the same as {option}`metrics.port` shares one listener.";
      };
      tokenFile = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "/.+");
        default = null;
        example = "/run/secrets/macha-alertmanager-token";
        description = ''
          The bearer token Alertmanager sends (its receiver's
          `http_config.authorization.credentials_file`); given as a string so
          that it is never copied into the Nix store. The service receives it
          through `LoadCredential=`.
        '';
      };
    };

    settings = lib.mkOption {
      type = lib.types.submodule { freeformType = toml.type; };
      default = { };
      example = lib.literalExpression ''
        {
          act.cooldown = 600;
          detect.disk_full_percent = 85;
          nixos = {
            config_dir = "/etc/nixos";
            flake = "/etc/nixos#web1";
          };
          model.fallback = {
            url = "http://10.0.0.2:11434";
            model = "llama3.1:8b";
          };
        }
      '';
      description = ''
        Every other key of the configuration file, as in
        `macha.example.toml` (TOML tables become attribute sets). The
        options above write their own keys; setting one of those here as
        well is a conflict. An unknown key or a bad value stops the daemon
        at start-up with a message naming the key.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = remote.hosts == [ ] || remote.privateKeyFile != null;
        message = ''
          services.macha-autonomous.remote.hosts lists hosts, but remote.privateKeyFile is not set: the controller
          needs its private key to reach them.
        '';
      }
      {
        assertion = lib.all (h: (h.hostKey == null) != (h.knownHosts == null)) remote.hosts;
        message = ''
          services.macha-autonomous.remote.hosts: give each host exactly one of hostKey and knownHosts
          (${lib.concatMapStringsSep ", " (h: h.name) (lib.filter (h: (h.hostKey == null) == (h.knownHosts == null)) remote.hosts)}):
          a host whose key is not checked is never talked to.
        '';
      }
      {
        assertion = cfg.ntfy.url == null || cfg.ntfy.topic != null;
        message = "services.macha-autonomous.ntfy.url is set but ntfy.topic is not: name the topic to publish to.";
      }
      {
        assertion = cfg.matrix.homeserver == null || (cfg.matrix.roomId != null && cfg.matrix.tokenFile != null);
        message = ''
          services.macha-autonomous.matrix.homeserver is set: set matrix.roomId (the room's id, !abc:server) and
          matrix.tokenFile (the access token of macha's Matrix user) too.
        '';
      }
      {
        assertion = lib.all (f: f == null || !lib.hasPrefix builtins.storeDir f) [ cfg.ntfy.tokenFile cfg.matrix.tokenFile ];
        message = ''
          services.macha-autonomous: ntfy.tokenFile or matrix.tokenFile is in the Nix store, where every user
          can read it. Keep tokens in files only root can read, outside the store, and give their paths as strings.
        '';
      }
      {
        assertion = !cfg.alertmanager.enable || cfg.alertmanager.tokenFile != null;
        message = ''
          services.macha-autonomous.alertmanager.enable is set but alertmanager.tokenFile is not: the webhook
          takes only posts that carry Alertmanager's bearer token.
        '';
      }
      {
        assertion = cfg.alertmanager.tokenFile == null || !lib.hasPrefix builtins.storeDir cfg.alertmanager.tokenFile;
        message = ''
          services.macha-autonomous.alertmanager.tokenFile is in the Nix store, where every user can read it.
          Keep the token in a file only root can read, outside the store, and give its path as a string.
        '';
      }
      {
        assertion = remote.privateKeyFile == null || !lib.hasPrefix builtins.storeDir remote.privateKeyFile;
        message = ''
          services.macha-autonomous.remote.privateKeyFile is in the Nix store (${toString remote.privateKeyFile}),
          which every user can read. Keep the key outside the store, for example with agenix or sops-nix.
        '';
      }
      {
        assertion = remote.allowControllers == [ ] || (config.services.openssh.enable or false);
        message = ''
          services.macha-autonomous.remote.allowControllers lets controllers in over SSH, but
          services.openssh.enable is not set.
        '';
      }
      {
        assertion = cfg.gotify.tokenFile == null || !lib.hasPrefix builtins.storeDir cfg.gotify.tokenFile;
        message = ''
          services.macha-autonomous.gotify.tokenFile is in the Nix store (${cfg.gotify.tokenFile}),
          where every user can read it. Keep the token in a file only root can read, outside the
          store (for example one written by agenix or sops-nix), and give its path as a string.
        '';
      }
      {
        assertion = (cfg.gotify.url == null) == (cfg.gotify.tokenFile == null);
        message = ''
          services.macha-autonomous.gotify: set both url and tokenFile (notifications on) or
          neither (off); now only ${if cfg.gotify.url == null then "tokenFile" else "url"} is set.
        '';
      }
      {
        assertion = (cfg.settings.gotify.token_file or gotifyTokenPath) == gotifyTokenPath;
        message = ''
          services.macha-autonomous.settings.gotify.token_file is set; use
          services.macha-autonomous.gotify.tokenFile instead: the daemon runs as the user
          ${user} in a sandbox and gets the token through LoadCredential=.
        '';
      }
      {
        assertion = kb.backend != "chroma" || (cfg.settings.knowledge_base.chroma.url or null) != null;
        message = ''
          services.macha-autonomous.knowledgeBase.backend is "chroma" but no Chroma server is named:
          set services.macha-autonomous.knowledgeBase.chroma.url (for example "http://chroma.lan:8000"),
          or run ChromaDB on this host (services.chromadb.enable), or use the "embedded" backend.
        '';
      }
      {
        assertion = kb.chroma.tokenFile == null || !lib.hasPrefix builtins.storeDir kb.chroma.tokenFile;
        message = ''
          services.macha-autonomous.knowledgeBase.chroma.tokenFile is in the Nix store (${toString kb.chroma.tokenFile}),
          where every user can read it. Keep the token in a file only root can read, outside the
          store (for example one written by agenix or sops-nix), and give its path as a string.
        '';
      }
      {
        assertion = (cfg.settings.knowledge_base.chroma.token_file or chromaTokenPath) == chromaTokenPath;
        message = ''
          services.macha-autonomous.settings.knowledge_base.chroma.token_file is set; use
          services.macha-autonomous.knowledgeBase.chroma.tokenFile instead: the daemon runs as the user
          ${user} in a sandbox and gets the token through LoadCredential=.
        '';
      }
      {
        assertion = !hiddenRunbooks;
        message = ''
          services.macha-autonomous.knowledgeBase.runbooks is ${toString runbooksDir}, which the service's
          sandbox hides (${lib.concatStringsSep ", " hiddenDirs}): the daemon could not read it. Keep the
          runbooks elsewhere (for example /srv/runbooks, or a Nix path such as ./runbooks, copied into the store),
          or, for a home directory, set systemd.services.macha-autonomous.serviceConfig.ProtectHome = "read-only".
        '';
      }
    ];

    services.macha-autonomous.settings = {
      autonomy_level = cfg.autonomyLevel;
      check_interval = cfg.checkInterval;
      state_dir = stateDir;
      service_unit = unit;
      protected_units = cfg.protectedServices;
      ollama = {
        url = cfg.ollamaUrl;
        inherit (cfg) model;
        embedding_model = kb.embeddingModel;
      };
      knowledge_base = {
        inherit (kb) enable backend;
        runbooks = lib.mkIf (runbooksDir != null) runbooksDir;
        chroma = lib.mkIf (chromaUrl != null || kb.chroma.tokenFile != null) {
          url = lib.mkIf (chromaUrl != null) chromaUrl;
          token_file = lib.mkIf (kb.chroma.tokenFile != null) chromaTokenPath;
        };
      };
      act.approver_group = cfg.approverGroup;
      remote = lib.mkIf (remote.hosts != [ ] || remote.privateKeyFile != null) {
        private_key_file = lib.mkIf (remote.privateKeyFile != null) remoteKeyPath;
        hosts = map
          (
            h:
            {
              inherit (h) name address port;
            }
            // lib.optionalAttrs (h.hostKey != null) { host_key = h.hostKey; }
            // lib.optionalAttrs (h.knownHosts != null) { known_hosts = h.knownHosts; }
          )
          remote.hosts;
      };
      gotify = lib.mkIf (cfg.gotify.url != null) {
        inherit (cfg.gotify) url;
        token_file = gotifyTokenPath;
      };
      metrics = lib.mkIf cfg.metrics.enable {
        listen = hostPort cfg.metrics.listenAddress cfg.metrics.port;
      };
      ntfy = lib.mkIf (cfg.ntfy.url != null) {
        inherit (cfg.ntfy) url topic;
        token_file = lib.mkIf (cfg.ntfy.tokenFile != null) "/run/credentials/${unit}/${ntfyCredential}";
      };
      matrix = lib.mkIf (cfg.matrix.homeserver != null) {
        inherit (cfg.matrix) homeserver;
        room_id = cfg.matrix.roomId;
        token_file = "/run/credentials/${unit}/${matrixCredential}";
      };
      alertmanager = lib.mkIf cfg.alertmanager.enable {
        listen = hostPort cfg.alertmanager.listenAddress cfg.alertmanager.port;
        token_file = alertsTokenPath;
      };
    };

    networking.firewall.allowedTCPPorts = lib.mkIf (cfg.metrics.enable && cfg.metrics.openFirewall) [
      cfg.metrics.port
    ];

    users.users.${user} = {
      isSystemUser = true;
      group = user;
      # Reading the system journal.
      extraGroups = [ "systemd-journal" ];
      description = "macha-autonomous daemon";
    }
    // lib.optionalAttrs (remote.allowControllers != [ ]) {
      # sshd runs the forced command through the user's shell.
      useDefaultShell = true;
      openssh.authorizedKeys.keys = map controllerKey remote.allowControllers;
    };
    users.groups.${user} = { };

    # The commands (macha, macha-check, macha-approve, macha-logs) read the
    # daemon's file from its default place.
    environment.etc."macha-autonomous/config.toml".source = configFile;
    environment.systemPackages = [ cfg.package ];

    # The daemon's user may restart and reset unprotected units and start
    # the helpers, nothing else; the file name keeps its place in polkit's
    # order (module/README.md).
    security.polkit.enable = true;
    environment.etc."polkit-1/rules.d/50-macha-autonomous.rules".text = generatedRule;

    systemd.units = lib.mapAttrs' (file: _: lib.nameValuePair file { text = helper file; }) helperFiles;

    systemd.services.macha-autonomous = {
      description = "macha: keeps this host healthy";
      documentation = [ "man:macha(1)" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ] ++ lib.optional localChroma "chromadb.service";
      after =
        [ "network-online.target" ]
        ++ lib.optional (config.services.ollama.enable or false) "ollama.service"
        ++ lib.optional localChroma "chromadb.service";

      serviceConfig = {
        # READY=1 once started, WATCHDOG=1 pings from the daemon's own event
        # loop (src/service_manager.rs): a stuck daemon is restarted.
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = lib.mkDefault "60s";
        ExecStart = "${lib.getExe cfg.package} --config ${configFile} daemon";
        TimeoutStopSec = stopTimeout;
        Restart = "on-failure";
        RestartSec = "10s";

        User = user;
        Group = user;
        StateDirectory = "macha-autonomous";
        StateDirectoryMode = "0750";
        LoadCredential =
          lib.optional (cfg.gotify.tokenFile != null) "${gotifyCredential}:${cfg.gotify.tokenFile}"
          ++ lib.optional (kb.chroma.tokenFile != null) "${chromaCredential}:${kb.chroma.tokenFile}"
          ++ lib.optional (remote.privateKeyFile != null) "${remoteCredential}:${remote.privateKeyFile}"
          ++ lib.optional (cfg.alertmanager.tokenFile != null) "${alertsCredential}:${cfg.alertmanager.tokenFile}"
          ++ lib.optional (cfg.ntfy.tokenFile != null) "${ntfyCredential}:${cfg.ntfy.tokenFile}"
          ++ lib.optional (cfg.matrix.tokenFile != null) "${matrixCredential}:${cfg.matrix.tokenFile}";

        # Hardening. What stays open, and why: the network (Ollama, Gotify
        # and Chroma may be remote), D-Bus over AF_UNIX (systemd's manager and
        # polkit), reading the journal and /proc (the failed units' logs,
        # the host's load, the investigation probes; hence no ProtectProc=
        # or ProcSubset=, which would hide other users' processes and
        # /proc/meminfo). Everything else is closed.
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = lib.mkDefault true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        PrivateUsers = true;
        ProtectHostname = true;
        ProtectClock = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          "~@resources"
        ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
        # Idle it needs a few MiB; a decision's evidence a few more.
        MemoryMax = lib.mkDefault "512M";
      };
    };
  };
}
