# A service of `systemd.services` as the unit file NixOS writes for it:
# [Unit] from the dependency lists, [Service] from serviceConfig (a list is
# one line per element, a boolean is true/false), [Install] left out because
# NixOS links wantedBy instead.
{ lib }:

service:
let
  value = v: if builtins.isBool v then lib.boolToString v else toString v;
  entry = key: v: if builtins.isList v then lib.concatMapStrings (x: "${key}=${value x}\n") v else "${key}=${value v}\n";
  section = attrs: lib.concatStrings (lib.mapAttrsToList entry attrs);
  list = key: names: lib.optionalString (names != [ ]) "${key}=${lib.concatStringsSep " " names}\n";
in
lib.concatStrings [
  "[Unit]\n"
  (entry "Description" service.description)
  (list "Documentation" service.documentation)
  (list "Wants" service.wants)
  (list "Requires" service.requires)
  (list "After" service.after)
  (list "Before" service.before)
  (section service.unitConfig)
  "\n[Service]\n"
  (section service.serviceConfig)
]
