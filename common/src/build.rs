//! For build scripts (imgtool's and rootfs's): the Rust targets the embedded loader and guest
//! init are built for, and the one way a missing target is reported.

use std::path::Path;
use std::process::Command;

/// The loader's target (no_std, aarch64).
pub const LOADER_TARGET: &str = "aarch64-unknown-none";
/// The guest init's target (static musl, aarch64).
pub const INIT_TARGET: &str = "aarch64-unknown-linux-musl";
/// The cargo feature that builds imgtool without the loader and the init.
pub const WITHOUT_FEATURE: &str = "without-embedded-binaries";

/// The command that installs both targets.
pub fn rustup_line() -> String {
    format!("rustup target add {LOADER_TARGET} {INIT_TARGET}")
}

/// Whether the package being built has the `without-embedded-binaries` feature on.
pub fn without_embedded_binaries() -> bool {
    std::env::var_os("CARGO_FEATURE_WITHOUT_EMBEDDED_BINARIES").is_some()
}

/// Whether the toolchain building us has the standard library for `target` (looked up in
/// `rustc --print sysroot`). Prints a rerun-if-changed on that directory, so the build script
/// runs again once the target is added.
pub fn target_installed(target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    target_installed_for(&rustc, target)
}

fn target_installed_for(rustc: &str, target: &str) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .join("lib");
    println!("cargo:rerun-if-changed={}", lib.display());
    lib.is_dir()
}

/// Stop the build: `what` (the embedded binary) cannot be built because `target` is missing.
pub fn fail_missing_target(target: &str, what: &str) -> ! {
    eprintln!(
        "error: the Rust target {target} is not installed, and imgtool embeds {what} built for it.\n\
         Install both targets imgtool needs:\n\n    {}\n\n\
         (scripts/install-deps does this), or build without the loader and the guest init with\n\
         `--features {WITHOUT_FEATURE}` (README, \"Building\").",
        rustup_line()
    );
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_host_target_and_not_others() {
        let vv = Command::new("rustc").arg("-vV").output().unwrap();
        let vv = String::from_utf8_lossy(&vv.stdout).into_owned();
        let host = vv.lines().find_map(|l| l.strip_prefix("host: ")).unwrap();
        assert!(target_installed_for("rustc", host));
        assert!(!target_installed_for("rustc", "no-such-target"));
        assert!(!target_installed_for("/nonexistent/rustc", host));
        assert!(rustup_line().contains("aarch64-unknown-none aarch64-unknown-linux-musl"));
    }
}
