//! The mirror's `InRelease` signature, checked in-process with rPGP (the `pgp` crate) against
//! Debian's archive keys.
//!
//! Keys: the file the spec names (`debian.keyring`), else the `debian-archive-keyring`
//! package's file when it is installed (it is updated with the distribution), else the copy
//! shipped in `rootfs/keys/` (debian-archive-keyring 2023.3+deb12u2: the bookworm, trixie and
//! bullseye archive and release keys).
//!
//! Formats: cleartext signatures, RFC 9580 §7 <https://www.rfc-editor.org/rfc/rfc9580#section-7>;
//! Debian's use of them: <https://wiki.debian.org/DebianRepository/Format#A.22Release.22_files>.

use std::io::BufReader;
use std::path::Path;

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

use crate::{Error, Result};

/// The keyring imgtool ships (binary OpenPGP, as in the Debian package).
pub static SHIPPED_KEYRING: &[u8] = include_bytes!("../keys/debian-archive-keyring.gpg");

/// Where the keys came from, for messages.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub source: String,
    keys: Vec<SignedPublicKey>,
}

impl Keyring {
    /// Parse a keyring, binary or ASCII-armored.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Keyring> {
        let bad = |msg: String| Error::Format {
            file: source.to_string(),
            msg,
        };
        let armored = bytes.starts_with(b"-----BEGIN");
        let iter = if armored {
            SignedPublicKey::from_armor_many(bytes)
                .map(|(it, _)| it)
                .map_err(|e| bad(format!("not an OpenPGP keyring: {e}")))?
        } else {
            SignedPublicKey::from_bytes_many(BufReader::new(bytes))
                .map_err(|e| bad(format!("not an OpenPGP keyring: {e}")))?
        };
        let mut keys = Vec::new();
        for k in iter {
            // A key this implementation cannot read is skipped, as gpgv skips it.
            match k {
                Ok(k) => keys.push(k),
                Err(e) => tracing::debug!("{source}: key skipped: {e}"),
            }
        }
        if keys.is_empty() {
            return Err(bad("no OpenPGP public keys in it".into()));
        }
        Ok(Keyring {
            source: source.to_string(),
            keys,
        })
    }

    pub fn load(path: &Path) -> Result<Keyring> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Keyring::parse(&bytes, &path.display().to_string())
    }

    /// The installed `debian-archive-keyring` if present, else the keys imgtool ships.
    pub fn debian() -> Result<Keyring> {
        let p = Path::new(crate::deb::DEFAULT_KEYRING);
        if p.is_file() {
            return Keyring::load(p);
        }
        Keyring::parse(SHIPPED_KEYRING, "imgtool's copy of debian-archive-keyring")
    }

    /// Fingerprints of the primary keys.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{}", k.fingerprint()))
            .collect()
    }

    /// Verify a clearsigned file; returns the signed text (LF line ends) and the fingerprint
    /// of the key that made the first good signature. Only what was signed is returned, so
    /// text outside the signed block cannot reach the caller.
    pub fn verify_clearsigned(&self, text: &str, what: &str) -> Result<(String, String)> {
        let fail = |msg: String| Error::Signature {
            what: what.to_string(),
            msg,
        };
        if !text
            .trim_start()
            .starts_with("-----BEGIN PGP SIGNED MESSAGE-----")
        {
            return Err(fail(
                "not signed (no `BEGIN PGP SIGNED MESSAGE`): use the mirror's InRelease, or \
                 set `keyring: none` in the spec's debian section to rely on sha256s alone"
                    .into(),
            ));
        }
        let (msg, _) = CleartextSignedMessage::from_string(text)
            .map_err(|e| fail(format!("unreadable OpenPGP cleartext signature: {e}")))?;
        // What was hashed: dash-unescaped, CRLF line ends.
        let hashed = msg.signed_text();
        let signed = hashed.replace("\r\n", "\n");
        for sig in msg.signatures() {
            for key in &self.keys {
                if sig.verify(&key.primary_key, hashed.as_bytes()).is_ok() {
                    return Ok((signed, format!("{}", key.fingerprint())));
                }
                for sub in &key.public_subkeys {
                    if sig.verify(&sub.key, hashed.as_bytes()).is_ok()
                        && sub.verify_bindings(&key.primary_key).is_ok()
                    {
                        return Ok((signed, format!("{}", key.fingerprint())));
                    }
                }
            }
        }
        let issuers: Vec<String> = msg
            .signatures()
            .iter()
            .flat_map(|s| {
                s.issuer_fingerprint()
                    .into_iter()
                    .map(|f| format!("{f}"))
                    .chain(s.issuer_key_id().into_iter().map(|k| format!("{k:?}")))
                    .collect::<Vec<_>>()
            })
            .collect();
        Err(fail(format!(
            "no good signature by a key in {} ({} signature(s), by {}): the file was changed, \
             or is signed by a key not in the keyring (give `keyring: FILE` in the spec's \
             debian section)",
            self.source,
            msg.signatures().len(),
            if issuers.is_empty() {
                "unknown keys".to_string()
            } else {
                issuers.join(", ")
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const RELEASE: &str = "Origin: Test\nSuite: test\nSHA256:\n abcd 123 main/binary-arm64/Packages.xz\n- dash line\n";

    fn gpg() -> std::path::PathBuf {
        for p in ["/usr/bin/gpg", "/bin/gpg"] {
            if Path::new(p).exists() {
                return p.into();
            }
        }
        panic!("gpg (package gnupg) is required for this test: run scripts/install-deps");
    }

    /// A throwaway key made by the real gpg: (GNUPGHOME, exported public key).
    fn gpg_key(dir: &Path, name: &str, algo: &str) -> Vec<u8> {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(gpg())
                .env("GNUPGHOME", &home)
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "gpg {args:?}: {out:?}");
            out.stdout
        };
        run(&[
            "--quick-gen-key",
            &format!("{name} <{name}@example.org>"),
            algo,
            "sign",
            "never",
        ]);
        run(&["--export", &format!("{name}@example.org")])
    }

    fn clearsign(dir: &Path, name: &str, text: &str) -> String {
        let home = dir.join(name);
        let inp = dir.join(format!("{name}.txt"));
        std::fs::write(&inp, text).unwrap();
        let out = Command::new(gpg())
            .env("GNUPGHOME", &home)
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(["--digest-algo", "SHA256", "--clearsign", "-o", "-"])
            .arg(&inp)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Signatures made by the real gpg verify; a changed byte, another key, or no signature
    /// at all is refused.
    #[test]
    fn verifies_what_gpg_signs_and_refuses_the_rest() {
        let d = tempfile::tempdir().unwrap();
        for algo in ["ed25519", "rsa3072"] {
            let good = gpg_key(d.path(), &format!("good-{algo}"), algo);
            let other = gpg_key(d.path(), &format!("other-{algo}"), algo);
            let ring = Keyring::parse(&good, "good.gpg").unwrap();
            let signed = clearsign(d.path(), &format!("good-{algo}"), RELEASE);
            let (body, fpr) = ring.verify_clearsigned(&signed, "InRelease").unwrap();
            assert_eq!(body.trim_end(), RELEASE.trim_end(), "{algo}");
            assert_eq!(fpr, ring.fingerprints()[0]);

            let tampered = signed.replace("abcd 123", "abcd 124");
            assert_ne!(tampered, signed);
            let e = ring.verify_clearsigned(&tampered, "InRelease").unwrap_err();
            assert!(e.to_string().contains("no good signature"), "{e}");

            let wrong = Keyring::parse(&other, "other.gpg").unwrap();
            let e = wrong.verify_clearsigned(&signed, "InRelease").unwrap_err();
            assert!(e.to_string().contains("other.gpg"), "{e}");

            let e = ring.verify_clearsigned(RELEASE, "InRelease").unwrap_err();
            assert!(e.to_string().contains("keyring: none"), "{e}");
        }
    }

    #[test]
    fn shipped_keyring_has_the_bookworm_keys() {
        let ring = Keyring::parse(SHIPPED_KEYRING, "shipped").unwrap();
        let f = ring.fingerprints().join(" ").to_uppercase();
        // Debian Archive Automatic Signing Key (12/bookworm); Debian Stable Release Key (12).
        for want in [
            "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
            "4D64FEC119C2029067D6E791F8D2585B8783D481",
        ] {
            assert!(f.contains(want), "{want} not in {f}");
        }
        assert!(Keyring::parse(b"junk", "junk").is_err());
    }
}
