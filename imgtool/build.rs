//! Builds the no_std loader (../loader) for aarch64-unknown-none into OUT_DIR, so imgtool can
//! embed it (`include_bytes!(env!("IMGTOOL_LOADER_ELF"))`). A missing target stops the build
//! with the `rustup target add` line, unless the `without-embedded-binaries` feature asks for
//! an imgtool without the loader (then an empty file is embedded and `imgtool loader` says so).
//!
//! The nested cargo gets a clean environment: the outer build's RUSTFLAGS, target and wrapper
//! (clippy sets one) are for imgtool, not for a bare-metal binary.

use std::path::PathBuf;
use std::process::Command;

use common::build::{self as b, LOADER_TARGET as TARGET};

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
    if b::without_embedded_binaries() {
        println!(
            "cargo:warning=imgtool is built without its loader (feature `{}`)",
            b::WITHOUT_FEATURE
        );
        std::fs::write(&elf, b"").unwrap();
        println!("cargo:rustc-env=IMGTOOL_LOADER_ELF={}", elf.display());
        return;
    }
    if !b::target_installed(TARGET) {
        b::fail_missing_target(TARGET, "the bootloader (../loader)");
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
