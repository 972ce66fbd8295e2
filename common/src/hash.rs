//! sha256 in lowercase hex, of bytes or of a file (read in 1 MiB pieces).

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(data))
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("reading {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(named)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(named)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::hex::encode(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        let p = std::env::temp_dir().join(format!("common-hash-test-{}", std::process::id()));
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), abc);
        std::fs::remove_file(&p).unwrap();
        assert!(sha256_file(&p)
            .unwrap_err()
            .to_string()
            .contains("common-hash-test"));
    }
}
