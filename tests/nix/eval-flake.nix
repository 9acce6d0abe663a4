# Evaluates flake.nix's outputs the way `nix flake check` would walk them,
# with nixpkgs' real lib and the stand-in packages of ./stubs.nix in place
# of nixpkgs (which Nix 2.8 cannot evaluate): every output exists for both
# systems, the package gets the right source, version and inputs, the apps
# point into it, the overlay adds it, the NixOS module from the flake runs
# the flake's package, and the VM test's machine is a valid configuration.
# Run by ./eval.sh; the result is `true` or an error naming what is wrong.
{ lib }:

let
  # lib.fileset (the package's source) asks builtins.readFileType for a
  # path's type; Nix 2.8 predates it. readDir of the parent says the same.
  nixpkgsLib =
    if builtins ? readFileType then
      lib
    else
      lib.extend (
        _final: prev: {
          filesystem = prev.filesystem // {
            pathType = path: if dirOf path == path then "directory" else (builtins.readDir (dirOf path)).${baseNameOf path};
          };
        }
      );
  stubs = import ./stubs.nix { lib = nixpkgsLib; };
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  nixpkgs = {
    lib = nixpkgsLib;
    legacyPackages = lib.genAttrs systems stubs.pkgsFor;
  };
  flake = import ../../flake.nix;
  # What Nix passes a flake's outputs: its own outputs, and its inputs.
  self = flake.outputs { inherit self nixpkgs; } // {
    outPath = ../..;
  };

  expect =
    what: expected: actual:
    if expected == actual then
      true
    else
      throw "${what}:\n  expected ${builtins.toJSON expected}\n  got      ${builtins.toJSON actual}";

  cargoToml = lib.importTOML ../../Cargo.toml;

  perSystem =
    system:
    let
      pkgs = stubs.pkgsFor system;
      macha = self.packages.${system}.macha;
      source = builtins.readDir macha.src;
      moduleHost = lib.evalModules {
        modules = [
          stubs.module
          self.nixosModules.default
          {
            _module.args.pkgs = lib.mkForce pkgs;
            services.macha-autonomous.enable = true;
          }
        ];
      };
      vmTest = self.checks.${system}.nixos-module;
      vmMachine = lib.evalModules {
        modules = [
          stubs.module
          vmTest.nodes.machine
          { _module.args.pkgs = lib.mkForce pkgs; }
        ];
      };
    in
    [
      (expect "${system}: the outputs"
        {
          packages = [ "default" "macha" ];
          apps = [ "default" "macha-approve" "macha-check" "macha-logs" ];
          checks = [ "nixos-module" "package" ];
          devShells = [ "default" ];
        }
        {
          packages = builtins.attrNames self.packages.${system};
          apps = builtins.attrNames self.apps.${system};
          checks = builtins.attrNames self.checks.${system};
          devShells = builtins.attrNames self.devShells.${system};
        })
      (expect "${system}: the package's name, version and main program" [
        "macha-${cargoToml.package.version}"
        "macha"
      ] [ macha.name macha.meta.mainProgram ])
      (expect "${system}: the package's lock file" ../../Cargo.lock macha.cargoLock.lockFile)
      (expect "${system}: the package's inputs, OpenSSL linked statically" [
        [ pkgs.pkg-config pkgs.installShellFiles ]
        [ pkgs.systemd (pkgs.openssl.override { static = true; }) ]
        "1"
      ] [ macha.nativeBuildInputs macha.buildInputs macha.env.OPENSSL_STATIC ])
      (expect "${system}: what the source holds" [ true true true true false false false ] (
        map (name: source ? ${name}) [
          "Cargo.lock"
          "src"
          "prompts"
          "module"
          "flake.nix"
          "README.md"
          "nix"
        ]
      ))
      (expect "${system}: the package installs the programs' names, completions and man pages" [ true true true ] (
        map (s: lib.hasInfix s macha.postInstall) [
          "ln -s macha \"$out/bin/$name\""
          "installShellCompletion"
          "installManPage"
        ]
      ))
      (expect "${system}: the default package" macha self.packages.${system}.default)
      (expect "${system}: the app macha-approve" "${macha}/bin/macha-approve" self.apps.${system}.macha-approve.program)
      (expect "${system}: the checks' package" macha self.checks.${system}.package)
      (expect "${system}: the development shell builds like the package" [ macha ] self.devShells.${system}.default.inputsFrom)
      (expect "${system}: the formatter" pkgs.nixpkgs-fmt self.formatter.${system})
      (expect "${system}: the module from the flake runs the flake's package"
        "${macha}/bin/macha --config ${stubs.storePath "macha-autonomous.toml"} daemon"
        moduleHost.config.systemd.services.macha-autonomous.serviceConfig.ExecStart
      )
      (expect "${system}: the VM test's machine" [ true 5 "notify" ] [
        vmMachine.config.services.macha-autonomous.enable
        vmMachine.config.services.macha-autonomous.checkInterval
        vmMachine.config.systemd.services.macha-autonomous.serviceConfig.Type
      ])
      (expect "${system}: the VM test's Ollama double" "${
        stubs.storePath "macha-ollama-double-${cargoToml.package.version}"
      }/bin/ollama-double --listen 127.0.0.1:11434 --model llama3.1:70b"
        vmMachine.config.systemd.services.ollama-double.serviceConfig.ExecStart)
    ];

  overlay = self.overlays.default nixpkgs.legacyPackages.x86_64-linux { };
in
lib.all (x: x) (
  lib.concatMap perSystem systems
  ++ [
    (expect "the overlay's package" "macha-${cargoToml.package.version}" overlay.macha.name)
    (expect "the NixOS modules" [ "default" "macha-autonomous" ] (builtins.attrNames self.nixosModules))
  ]
)
