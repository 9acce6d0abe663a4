# flake.lock must pin nixpkgs to one revision, with what Nix checks when it
# fetches it: the commit (rev), its date (lastModified) and the hash of its
# tree (narHash). `true`, or an error saying what is missing.
let
  lock = builtins.fromJSON (builtins.readFile ../../flake.lock);
  node = lock.nodes.${lock.nodes.${lock.root}.inputs.nixpkgs or (throw "flake.lock: the root has no input nixpkgs")};
  locked = node.locked or (throw "flake.lock: nixpkgs is not locked");
  check =
    what: ok:
    if ok then true else throw "flake.lock: nixpkgs ${what} (locked: ${builtins.toJSON locked})";
  has = name: pattern: check "has no valid ${name}" (builtins.isString (locked.${name} or null) && builtins.match pattern locked.${name} != null);
in
builtins.all (x: x) [
  (check "is not a github input of NixOS/nixpkgs" (
    locked.type or null == "github" && locked.owner or null == "NixOS" && locked.repo or null == "nixpkgs"
  ))
  (has "rev" "[0-9a-f]{40}")
  (has "narHash" "sha256-[A-Za-z0-9+/]{43}=")
  (check "has no valid lastModified" (builtins.isInt (locked.lastModified or null) && locked.lastModified > 1600000000))
  (check "does not follow nixos-unstable" ((node.original.ref or null) == "nixos-unstable"))
]
