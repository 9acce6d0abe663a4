{
  description = "macha: keeps NixOS hosts healthy with a local LLM and a gated catalog of repairs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: _prev: {
        macha = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (
        _system: pkgs:
          let
            macha = pkgs.callPackage ./nix/package.nix { };
          in
          {
            inherit macha;
            default = macha;
          }
      );

      apps = forAllSystems (
        system: _pkgs:
          let
            app = name: description: {
              type = "app";
              program = "${self.packages.${system}.macha}/bin/${name}";
              meta = { inherit description; };
            };
          in
          {
            default = app "macha" "macha: every command (daemon, check, approve, logs, status, ...)";
            macha-check = app "macha-check" "Run one cycle now and print what it found and did";
            macha-approve = app "macha-approve" "List, show, approve or reject queued actions";
            macha-logs = app "macha-logs" "Show the audit trail and macha's own logs";
          }
      );

      # The module alone (module/default.nix) takes the package from
      # pkgs.macha; from the flake it defaults to this flake's build, made
      # with the nixpkgs pinned in flake.lock, whose Rust is new enough for
      # Cargo.lock.
      nixosModules = {
        macha-autonomous =
          { lib, pkgs, ... }:
          {
            imports = [ ./module ];
            services.macha-autonomous.package = lib.mkDefault (
              self.packages.${pkgs.stdenv.hostPlatform.system}.macha or (pkgs.callPackage ./nix/package.nix { })
            );
          };
        default = self.nixosModules.macha-autonomous;
      };

      checks = forAllSystems (
        system: pkgs: {
          package = self.packages.${system}.macha;
          nixos-module = import ./nix/tests/vm.nix { inherit pkgs self; };
        }
      );

      devShells = forAllSystems (
        system: pkgs: {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.macha ];
            packages = with pkgs; [
              clippy
              rustfmt
              rust-analyzer
              nixpkgs-fmt
              deadnix
            ];
          };
        }
      );

      formatter = forAllSystems (_system: pkgs: pkgs.nixpkgs-fmt);
    };
}
