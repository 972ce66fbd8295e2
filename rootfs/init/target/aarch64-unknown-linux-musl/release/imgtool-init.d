/work/main/rootfs/init/target/aarch64-unknown-linux-musl/release/imgtool-init: /work/main/rootfs/init/src/../../src/initconf.rs /work/main/rootfs/init/src/main.rs
