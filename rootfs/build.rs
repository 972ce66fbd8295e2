//! Build the guest init (rootfs/init) for aarch64-unknown-linux-musl and embed it, so nobody
//! runs a second build by hand. A missing target, or an init that does not build, stops the
//! build (with the `rustup target add` line for the former), unless the
//! `without-embedded-binaries` feature asks for a library without the init: then
//! `rootfs::init_binary()` returns an error that says so.

use std::path::PathBuf;
use std::process::Command;

use common::build::{self as b, INIT_TARGET as TARGET};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let init = root.join("init");
    for p in [
        "init/src",
        "init/Cargo.toml",
        "init/.cargo/config.toml",
        "src/initconf.rs",
        "src/guestenv.rs",
        "../formats/uboot-env/src",
        "protocol/src",
        "protocol/Cargo.toml",
        "../common/src",
        "../common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let embed = out.join("imgtool-init.bin");
    println!("cargo:rustc-env=IMGTOOL_INIT_PATH={}", embed.display());
    if b::without_embedded_binaries() {
        println!(
            "cargo:warning=rootfs is built without the guest init (feature `{}`)",
            b::WITHOUT_FEATURE
        );
        std::fs::write(&embed, b"").unwrap();
        println!(
            "cargo:rustc-env=IMGTOOL_INIT_ERROR=feature `{}`; rebuild without it",
            b::WITHOUT_FEATURE
        );
        return;
    }
    if !b::target_installed(TARGET) {
        b::fail_missing_target(TARGET, "the guest init (rootfs/init)");
    }
    let target_dir = out.join("init-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Run from init/ so its .cargo/config.toml (rust-lld as linker) applies; drop the outer
    // build's flags, which are for the host target.
    let res = Command::new(cargo)
        .current_dir(&init)
        .args([
            "build",
            "--release",
            "--locked",
            "--offline",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output();
    let bin = target_dir.join(TARGET).join("release").join("imgtool-init");
    let err = match res {
        Ok(o) if o.status.success() && bin.is_file() => None,
        Ok(o) => Some(format!(
            "cargo build of rootfs/init for {TARGET} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("cannot run cargo for rootfs/init: {e}")),
    };
    match err {
        None => {
            std::fs::copy(&bin, &embed).unwrap();
            println!("cargo:rustc-env=IMGTOOL_INIT_ERROR=");
        }
        Some(e) => {
            eprintln!("error: {e}\n(cd rootfs/init && cargo build --release --target {TARGET})");
            std::process::exit(1)
        }
    }
}
