//! Builds the no_std loader (../loader) for aarch64-unknown-none into OUT_DIR, so imgtool can
//! embed it (`include_bytes!(env!("IMGTOOL_LOADER_ELF"))`).
//!
//! The nested cargo gets a clean environment: the outer build's RUSTFLAGS, target and wrapper
//! (clippy sets one) are for imgtool, not for a bare-metal binary.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "aarch64-unknown-none";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let loader = root.join("loader");
    for p in ["src", "Cargo.toml", "link.ld", "build.rs"] {
        println!("cargo:rerun-if-changed={}", loader.join(p).display());
    }
    for p in ["src", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("formats/uboot-env").join(p).display()
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let elf = out.join("loader.elf");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !target_installed() {
        println!(
            "cargo:warning=Rust target {TARGET} is not installed: imgtool is built without its \
             loader (`rustup target add {TARGET}`, or run scripts/install-deps, then rebuild)"
        );
        std::fs::write(&elf, b"").unwrap();
        println!("cargo:rustc-env=IMGTOOL_LOADER_ELF={}", elf.display());
        return;
    }

    let target_dir = out.join("loader-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&loader)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the loader");
    assert!(
        status.success(),
        "building the loader (cd loader && cargo build --release --target {TARGET}) failed"
    );
    let built = target_dir.join(TARGET).join("release/loader");
    std::fs::copy(&built, &elf).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
    println!("cargo:rustc-env=IMGTOOL_LOADER_ELF={}", elf.display());
}

fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib");
    // Rerun once the target appears (cargo reruns while a watched path is missing).
    println!("cargo:rerun-if-changed={}", lib.display());
    lib.is_dir()
}
