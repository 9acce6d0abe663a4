//! SSH public keys as `known_hosts` and `authorized_keys` write them
//! ("ssh-ed25519 AAAAC3Nza... comment"): the type, and the key's blob (the
//! base64 part decoded), which is what a host shows in the key exchange.

use base64::Engine as _;

/// The key types a host key may be.
const TYPES: [&str; 6] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
];

/// The longest key text read (an RSA key of 16 384 bits fits).
const MAX_TEXT: usize = 4096;

/// A public key: its type and its blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kind: String,
    pub blob: Vec<u8>,
}

/// Parses "TYPE BASE64 [COMMENT]"; the blob must name the same type.
pub fn parse_public(text: &str) -> Result<PublicKey, String> {
    if text.len() > MAX_TEXT {
        return Err(format!("a key of {} bytes; at most {MAX_TEXT}", text.len()));
    }
    let mut fields = text.split_whitespace();
    let (Some(kind), Some(b64)) = (fields.next(), fields.next()) else {
        return Err("expected \"TYPE BASE64\", for example \"ssh-ed25519 AAAAC3Nza...\"".into());
    };
    if !TYPES.contains(&kind) {
        let shown: String = kind.chars().take(40).collect();
        return Err(format!("{shown:?} is not a key type ({})", TYPES.join(", ")));
    }
    let blob =
        base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("the key is not base64: {e}"))?;
    // The blob starts with its type: a 32-bit length, then the name.
    let named =
        blob.get(..4).map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize).and_then(|n| blob.get(4..4 + n));
    if named != Some(kind.as_bytes()) {
        return Err(format!("the key's data is not a {kind} key"));
    }
    Ok(PublicKey { kind: kind.to_owned(), blob })
}

/// The blob's SHA-256 fingerprint as OpenSSH prints it ("SHA256:...").
pub fn fingerprint(blob: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(blob);
    format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ed25519 host key made by ssh-keygen for this test.
    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GZT5 host";

    #[test]
    fn a_known_hosts_key_parses_and_a_wrong_one_says_what_is_wrong() {
        let k = parse_public(KEY).unwrap();
        assert_eq!((k.kind.as_str(), k.blob.len()), ("ssh-ed25519", 51));
        assert!(fingerprint(&k.blob).starts_with("SHA256:"));
        assert!(parse_public("ssh-ed25519").unwrap_err().contains("expected \"TYPE BASE64\""));
        assert!(parse_public("ssh-dss AAAA").unwrap_err().contains("is not a key type"));
        assert!(parse_public("ssh-ed25519 !!!").unwrap_err().contains("not base64"));
        let rsa_named_ed = KEY.replace("ssh-ed25519 ", "ssh-rsa ");
        assert!(parse_public(&rsa_named_ed).unwrap_err().contains("not a ssh-rsa key"));
        assert!(parse_public(&"a".repeat(5000)).unwrap_err().contains("at most 4096"));
    }
}
