//! Build the guest init (rootfs/init) for aarch64-unknown-linux-musl and embed it, so nobody
//! runs a second build by hand. If the target is missing, the library still builds and
//! `rootfs::init_binary()` returns an error that says how to fix it.

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "aarch64-unknown-linux-musl";

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let init = root.join("init");
    for p in [
        "init/src",
        "init/Cargo.toml",
        "init/.cargo/config.toml",
        "src/initconf.rs",
        "protocol/src",
        "protocol/Cargo.toml",
        "../common/src",
        "../common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
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
            "cargo build of rootfs/init for {TARGET} failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| l.contains("error"))
                .take(3)
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Err(e) => Some(format!("cannot run cargo for rootfs/init: {e}")),
    };
    let embed = out.join("imgtool-init.bin");
    match err {
        None => {
            std::fs::copy(&bin, &embed).unwrap();
            println!("cargo:rustc-env=IMGTOOL_INIT_ERROR=");
        }
        Some(e) => {
            // Try again on the next build (a watched path that is missing always reruns).
            println!(
                "cargo:rerun-if-changed={}",
                out.join("init-not-built-yet").display()
            );
            println!("cargo:warning={e}");
            std::fs::write(&embed, b"").unwrap();
            let e = e.replace('\n', " ");
            println!(
                "cargo:rustc-env=IMGTOOL_INIT_ERROR={e} (fix: `rustup target add {TARGET}`, then rebuild imgtool)"
            );
        }
    }
    println!("cargo:rustc-env=IMGTOOL_INIT_PATH={}", embed.display());
}
