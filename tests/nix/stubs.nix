# Stand-ins for the parts of NixOS and nixpkgs that module/ uses, so the
# module can be evaluated with nothing but nixpkgs' `lib` (which Nix 2.8,
# the Nix of Debian bookworm, can still evaluate; all of nixpkgs cannot).
#
# The option declarations follow NixOS's own (same names, same kinds of
# types) for the options the module sets or reads; nothing else is declared,
# so a typo in the module is an error here as it would be on NixOS. The
# packages are fake derivations whose store paths are recognisable, and
# `formats.toml` keeps the value it was given, so the harness can read the
# configuration the module renders.
{ lib }:

let
  inherit (lib) mkOption types;

  # A name -> a fixed, fake store path (32 characters of hash, as Nix's).
  storePath = name: "${builtins.storeDir}/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";

  fakePackage = name: mainProgram: {
    type = "derivation";
    inherit name;
    outPath = storePath name;
    meta = { inherit mainProgram; };
  };

  # What a value of pkgs.formats.toml may hold: TOML has no null and no
  # functions.
  tomlValue =
    types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      types.path
      (types.attrsOf tomlValue)
      (types.listOf tomlValue)
    ]
    // {
      description = "TOML value";
    };

  # nixpkgs for one system, as far as the module, the package and the flake
  # use it. The builders return their arguments as a fake derivation, so the
  # harness can check what they were given.
  pkgsFor =
    system:
    let
      pkgs = {
        inherit lib;
        stdenv = {
          hostPlatform = { inherit system; };
          buildPlatform.canExecute = _: true;
        };
        # nixpkgs' callPackage in short: a function's named arguments are
        # taken from pkgs, unless given.
        callPackage =
          fn: args:
          let
            f = if builtins.isFunction fn then fn else import fn;
          in
          f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // args);
        rustPlatform.buildRustPackage = args: fakeBuild "${args.pname}-${args.version}" args;
        mkShell = args: fakeBuild "nix-shell" args;
        testers.runNixOSTest = args: fakeBuild "vm-test-run-${args.name}" args;

        macha = fakePackage "macha-0.1.0" "macha";
        nix = fakePackage "nix-2.28.4" "nix";
        git = fakePackage "git-2.50.0" "git";
        coreutils = fakePackage "coreutils-9.7" "ls";
        systemd = fakePackage "systemd-258.3" "systemctl";
        # `override { static = true; }` is nixpkgs' OpenSSL built with
        # static libraries only.
        openssl = fakePackage "openssl-3.6.0" "openssl" // {
          override = args: fakePackage "openssl-3.6.0${if args.static or false then "-static" else ""}" "openssl";
        };
        pkg-config = fakePackage "pkg-config-0.29.2" "pkg-config";
        installShellFiles = fakePackage "install-shell-files" null;
        clippy = fakePackage "clippy-1.95.0" "cargo-clippy";
        rustfmt = fakePackage "rustfmt-1.95.0" "rustfmt";
        rust-analyzer = fakePackage "rust-analyzer-2026-06-08" "rust-analyzer";
        nixpkgs-fmt = fakePackage "nixpkgs-fmt-1.3.0" "nixpkgs-fmt";
        deadnix = fakePackage "deadnix-1.3.1" "deadnix";

        formats.toml = _: {
          type = types.attrsOf tomlValue;
          # A file in the store on NixOS; here its path, and the value it holds.
          generate = name: value: {
            outPath = storePath name;
            inherit value;
          };
        };
      };
    in
    pkgs;

  fakeBuild =
    name: args:
    args
    // {
      type = "derivation";
      inherit name;
      outPath = storePath name;
      meta = args.meta or { };
    };

  pkgs = pkgsFor "x86_64-linux";

  # Values of a [Section] of a unit: NixOS's `unitOption` concatenates list
  # definitions and requires single values to agree.
  unitValue = types.oneOf [
    types.bool
    types.int
    types.str
    (types.listOf (
      types.oneOf [
        types.bool
        types.int
        types.str
      ]
    ))
  ];

  unitNames = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  service = types.submodule {
    options = {
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = unitNames;
      wantedBy = unitNames;
      wants = unitNames;
      requires = unitNames;
      after = unitNames;
      before = unitNames;
      unitConfig = mkOption {
        type = types.attrsOf unitValue;
        default = { };
      };
      serviceConfig = mkOption {
        type = types.attrsOf unitValue;
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
in
{
  inherit pkgs pkgsFor storePath;

  module = {
    config._module.args.pkgs = pkgs;

    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf service;
        default = { };
      };
      systemd.units = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.text = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
          }
        );
        default = { };
      };
      users.users = mkOption {
        type = types.attrsOf (
          types.submodule {
            options = {
              isSystemUser = mkOption {
                type = types.bool;
                default = false;
              };
              group = mkOption {
                type = types.str;
                default = "";
              };
              extraGroups = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              description = mkOption {
                type = types.str;
                default = "";
              };
              useDefaultShell = mkOption {
                type = types.bool;
                default = false;
              };
              openssh.authorizedKeys.keys = mkOption {
                type = types.listOf types.singleLineStr;
                default = [ ];
              };
            };
          }
        );
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.submodule { });
        default = { };
      };
      security.polkit.enable = mkOption {
        type = types.bool;
        default = false;
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            options = {
              source = mkOption {
                type = types.nullOr types.path;
                default = null;
              };
              text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
            };
          }
        );
        default = { };
      };
      nix.package = mkOption {
        type = types.package;
        default = pkgs.nix;
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      services.openssh.enable = mkOption {
        type = types.bool;
        default = false;
      };
      services.ollama.enable = mkOption {
        type = types.bool;
        default = false;
      };
      services.chromadb = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        host = mkOption {
          type = types.str;
          default = "127.0.0.1";
        };
        port = mkOption {
          type = types.port;
          default = 8000;
        };
      };
    };
  };
}
