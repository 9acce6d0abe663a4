# The macha package: the `macha` binary, the `macha-check`, `macha-approve`
# and `macha-logs` names (the program picks its command from the name it was
# started under), and completions and man pages written by the program from
# its own command-line definition.
{ lib
, stdenv
, rustPlatform
, pkg-config
, installShellFiles
, systemd
, openssl
,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;

  # Only what the build reads, so editing the docs or the Nix files does not
  # rebuild the package. The workspace member (tests/harness) and the bench
  # targets are declared in Cargo.toml and must exist for cargo to read it;
  # module/ is read by unit tests (the polkit rule, the helper units).
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../prompts
      ../module/polkit
      ../module/helpers
      ../benches
      ../eval
      ../tests/harness
      ../macha.example.toml
    ];
  };
in
rustPlatform.buildRustPackage {
  pname = cargoToml.package.name;
  inherit (cargoToml.package) version;
  inherit src;

  # Every dependency comes from crates.io, so the lock file alone pins them
  # (a git dependency would need cargoLock.outputHashes).
  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [
    pkg-config
    installShellFiles
  ];
  # libsystemd, for reading the journal (the `systemd` crate); OpenSSL's
  # libcrypto for libssh2, the SSH client to remote hosts, linked statically
  # so that the daemon maps only the crypto code it uses and runs it only
  # when it connects (BENCHMARKS.md, "Resident memory"). nixpkgs' OpenSSL
  # ships no static library unless built with `static`.
  buildInputs = [
    systemd
    (openssl.override { static = true; })
  ];
  env.OPENSSL_STATIC = "1";

  # The unit tests only: the integration tests boot a systemd container with
  # systemd-nspawn as root, which the build sandbox cannot do; the NixOS VM
  # test (nix/tests/vm.nix) covers the installed service instead.
  cargoTestFlags = [
    "--lib"
    "--bins"
  ];
  # The journal reader's unit tests write journal files with
  # systemd-journal-remote, which the build sandbox does not have; the test
  # machines run them.
  checkFlags = [ "--skip=observe::journal::tests::" ];

  postInstall = ''
    for name in macha-check macha-approve macha-logs; do
      ln -s macha "$out/bin/$name"
    done
  ''
  # Running the program needs a build machine that can execute it.
  + lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    "$out/bin/macha" generate-docs generated
    installShellCompletion generated/completions/bash/*.bash
    installShellCompletion --zsh generated/completions/zsh/_*
    installShellCompletion generated/completions/fish/*.fish
    installManPage generated/man/*.1
  '';

  meta = {
    inherit (cargoToml.package) description;
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "macha";
    platforms = lib.platforms.linux;
  };
}
