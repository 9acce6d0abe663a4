# The project's Ollama double (tests/harness) as a program, for the NixOS VM
# test: it speaks Ollama's /api/chat, /api/show and /api/tags, and its demo
# responder proposes restarting the unit an incident names. Not a product:
# the flake uses it in `checks` only.
{ lib
, rustPlatform
, macha
,
}:

rustPlatform.buildRustPackage {
  pname = "macha-ollama-double";
  inherit (macha) version src;
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "-p"
    "macha-testbed"
    "--bin"
    "ollama-double"
  ];
  # The harness's own tests boot containers; the VM test exercises the double.
  doCheck = false;

  meta = {
    description = "A stand-in for Ollama's HTTP API, for macha's tests";
    license = macha.meta.license;
    mainProgram = "ollama-double";
    platforms = lib.platforms.linux;
  };
}
