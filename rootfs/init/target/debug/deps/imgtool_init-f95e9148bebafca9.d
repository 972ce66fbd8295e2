/work/main/rootfs/init/target/debug/deps/imgtool_init-f95e9148bebafca9.d: src/main.rs src/../../src/initconf.rs

/work/main/rootfs/init/target/debug/deps/imgtool_init-f95e9148bebafca9: src/main.rs src/../../src/initconf.rs

src/main.rs:
src/../../src/initconf.rs:
