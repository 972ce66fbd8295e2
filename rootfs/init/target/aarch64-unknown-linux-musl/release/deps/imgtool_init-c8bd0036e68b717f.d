/work/main/rootfs/init/target/aarch64-unknown-linux-musl/release/deps/imgtool_init-c8bd0036e68b717f.d: src/main.rs src/../../src/initconf.rs

/work/main/rootfs/init/target/aarch64-unknown-linux-musl/release/deps/imgtool_init-c8bd0036e68b717f: src/main.rs src/../../src/initconf.rs

src/main.rs:
src/../../src/initconf.rs:
