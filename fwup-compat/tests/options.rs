//! Options are passed in, not held in process globals: two applies with different options run
//! at the same time in one process, and each sees only its own.

use fwup_compat::host::HostOptions;
use fwup_compat::ops::{self, ApplyOptions, CreateOptions};
use fwup_compat::out::Out;
use fwup_compat::progress::Mode;
use std::path::Path;

fn apply(fw: &Path, dest: &Path, host: HostOptions) -> fwup_compat::Result<()> {
    ops::apply(&ApplyOptions {
        input: fw.to_str(),
        dest: dest.to_str().unwrap(),
        task: "complete",
        keys: Vec::new(),
        progress: Mode::Off,
        progress_low: 0,
        progress_high: 100,
        max_size_blocks: None,
        verify_writes: Some(false),
        minimize_writes: false,
        enable_trim: false,
        out: Out::default(),
        host,
    })
}

#[test]
fn two_applies_with_different_options_in_one_process() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let conf = d.join("fwup.conf");
    let mark = d.join("mark");
    std::fs::write(
        &conf,
        format!(
            r#"task complete {{
    on-init {{
        raw_memset(0, 1, 0x5a)
        reboot_param("0 tryboot")
        execute("touch {}")
    }}
}}
"#,
            mark.display()
        ),
    )
    .unwrap();
    let fw = d.join("t.fw");
    ops::create(&CreateOptions {
        config: conf.to_str().unwrap(),
        output: fw.to_str().unwrap(),
        level: 1,
        private_key: None,
    })
    .unwrap();

    let (ra, rb) = (d.join("reboot-a"), d.join("reboot-b"));
    let (ia, ib) = (d.join("a.img"), d.join("b.img"));
    let unsafe_opts = HostOptions {
        allow_unsafe: true,
        reboot_param_path: Some(ra.to_str().unwrap().into()),
    };
    let safe_opts = HostOptions {
        allow_unsafe: false,
        reboot_param_path: Some(rb.to_str().unwrap().into()),
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| apply(&fw, &ia, unsafe_opts));
        let b = s.spawn(|| apply(&fw, &ib, safe_opts));
        (a.join().unwrap(), b.join().unwrap())
    });

    a.expect("the apply with --unsafe runs execute");
    assert!(mark.exists(), "execute ran");
    let e = b.expect_err("the apply without --unsafe refuses execute");
    assert!(e.to_string().contains("execute requires --unsafe"), "{e}");
    // Each apply wrote its reboot parameter to its own path.
    assert_eq!(std::fs::read_to_string(&ra).unwrap(), "0 tryboot");
    assert_eq!(std::fs::read_to_string(&rb).unwrap(), "0 tryboot");
    assert_eq!(std::fs::read(&ia).unwrap()[..512], [0x5a; 512]);
}
