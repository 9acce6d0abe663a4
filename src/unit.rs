//! `UnitName`: the only way a systemd unit name enters macha's decisions.
//!
//! Names arrive from untrusted places (the model's answer, the config, the
//! command line). Parsing them here, once, means every later stage handles a
//! value that is a syntactically valid unit name and nothing else: no shell
//! text, no path, no option-looking string.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Suffixes of the unit types systemd knows. A name without one of them is
/// refused rather than guessed (systemd would append `.service` itself, which
/// would let `ssh` slip past an exact-name check for `ssh.service`).
const UNIT_SUFFIXES: &[&str] =
    &["service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope"];

/// systemd's own limit (UNIT_NAME_MAX).
const MAX_LEN: usize = 255;

/// A syntactically valid systemd unit name such as `nginx.service` or
/// `getty@tty1.service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UnitName(String);

/// Why a string is not a unit name; shown to the user and recorded in the
/// audit trail when a decision names such a "unit".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitNameError {
    #[error("empty unit name")]
    Empty,
    #[error("unit name is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("unit name {0:?} contains {1:?}, which systemd does not allow in unit names")]
    BadChar(String, char),
    #[error("unit name {0:?} must not start with '-' or '.'")]
    BadStart(String),
    #[error("unit name {name:?} has no unit type suffix (expected one of .{suffixes})", name = .0, suffixes = UNIT_SUFFIXES.join(", ."))]
    NoSuffix(String),
    #[error("unit name {0:?}: unit names are case-sensitive and its type suffix is written in lower case (.{1})")]
    SuffixCase(String, &'static str),
}

impl UnitName {
    /// Validates `raw` against systemd's unit name grammar.
    pub fn parse(raw: &str) -> Result<Self, UnitNameError> {
        if raw.is_empty() {
            return Err(UnitNameError::Empty);
        }
        if raw.len() > MAX_LEN {
            return Err(UnitNameError::TooLong);
        }
        if let Some(bad) =
            raw.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '@' | '\\')))
        {
            return Err(UnitNameError::BadChar(raw.to_owned(), bad));
        }
        if raw.starts_with(['-', '.']) {
            return Err(UnitNameError::BadStart(raw.to_owned()));
        }
        let suffix_ok =
            raw.rsplit_once('.').is_some_and(|(stem, suffix)| !stem.is_empty() && UNIT_SUFFIXES.contains(&suffix));
        if !suffix_ok {
            let upper = raw.rsplit_once('.').and_then(|(stem, suffix)| {
                UNIT_SUFFIXES.iter().find(|known| !stem.is_empty() && known.eq_ignore_ascii_case(suffix))
            });
            return Err(match upper {
                Some(known) => UnitNameError::SuffixCase(raw.to_owned(), known),
                None => UnitNameError::NoSuffix(raw.to_owned()),
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The unit type, for example `service` for `nginx.service`.
    pub fn kind(&self) -> &str {
        self.0.rsplit_once('.').map_or("", |(_, s)| s)
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        UnitName::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_template_and_escaped_names() {
        for ok in ["nginx.service", "getty@tty1.service", "dev-disk-by\\x2duuid-1.device", "var-lib.mount"] {
            assert_eq!(UnitName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_shell_text_paths_and_options() {
        for bad in [
            "nginx.service; rm -rf /",
            "$(reboot).service",
            "a b.service",
            "../../etc/passwd",
            "/etc/systemd/system/x.service",
            "--now.service",
            "nginx.service\n",
            "`id`.service",
        ] {
            assert!(UnitName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn refuses_names_without_a_unit_suffix() {
        assert_eq!(UnitName::parse("ssh"), Err(UnitNameError::NoSuffix("ssh".into())));
        assert!(UnitName::parse("ssh.exe").is_err());
        assert!(UnitName::parse(".service").is_err());
    }

    #[test]
    fn a_suffix_in_capitals_is_refused_for_its_case() {
        let e = UnitName::parse("PAYMENTS-API.SERVICE").unwrap_err();
        assert_eq!(e, UnitNameError::SuffixCase("PAYMENTS-API.SERVICE".into(), "service"));
        assert!(e.to_string().contains("case-sensitive") && e.to_string().contains(".service"), "{e}");
        assert_eq!(UnitName::parse("PAYMENTS-API.service").unwrap().as_str(), "PAYMENTS-API.service");
        assert_eq!(UnitName::parse(".SERVICE"), Err(UnitNameError::BadStart(".SERVICE".into())));
    }
}
