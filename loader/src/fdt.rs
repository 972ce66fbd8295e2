//! Flattened device tree: a small reader (nodes by `compatible`, `/memory`) and a rewriter that
//! sets properties of `/chosen` (bootargs, initrd range).
//!
//! Spec: Devicetree Specification v0.4, chapter 5 "Flattened Devicetree (DTB) Format"
//! (<https://devicetree-specification.readthedocs.io/en/v0.4/flattened-format.html>).
//! The rewriter writes a fresh blob (header, memory reservations, structure, strings) instead of
//! editing in place, so a property can grow without shifting tricks.

use core::fmt;

pub const MAGIC: u32 = 0xd00d_feed;
const HEADER_LEN: usize = 40;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
/// Properties one [`set_chosen`] call can set.
pub const MAX_PROPS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdtError {
    /// No `0xd00dfeed` at the start.
    BadMagic { found: u32 },
    /// A header field points outside the blob.
    BadHeader { field: &'static str },
    /// Version older than 16 (no inline node names).
    OldVersion { version: u32 },
    /// The structure block is malformed at this offset (within the structure block).
    BadStructure { offset: usize },
    /// The output buffer is too small: `needed` bytes.
    NoSpace { needed: usize },
    /// More than [`MAX_PROPS`] properties in one [`set_chosen`] call.
    TooManyProps,
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdtError::BadMagic { found } => {
                write!(f, "no device tree magic 0xd00dfeed (found 0x{found:08x})")
            }
            FdtError::BadHeader { field } => {
                write!(f, "device tree header field {field} is out of bounds")
            }
            FdtError::OldVersion { version } => {
                write!(f, "device tree version {version} is older than 16")
            }
            FdtError::BadStructure { offset } => {
                write!(
                    f,
                    "device tree structure block is malformed at +0x{offset:x}"
                )
            }
            FdtError::NoSpace { needed } => {
                write!(f, "device tree needs {needed} bytes; not enough room")
            }
            FdtError::TooManyProps => write!(f, "more than {MAX_PROPS} /chosen properties"),
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `totalsize` from a header, to know how many bytes a blob in memory spans.
pub fn total_size(header: &[u8]) -> Result<usize, FdtError> {
    let magic = be32(header, 0).ok_or(FdtError::BadHeader { field: "magic" })?;
    if magic != MAGIC {
        return Err(FdtError::BadMagic { found: magic });
    }
    Ok(be32(header, 4).ok_or(FdtError::BadHeader { field: "totalsize" })? as usize)
}

/// A checked blob.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    blob: &'a [u8],
    structure: &'a [u8],
    strings: &'a [u8],
    rsvmap_off: usize,
    boot_cpuid: u32,
}

/// One token of the structure block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    Begin(&'a str),
    Prop(&'a str, &'a [u8]),
    End,
}

impl<'a> Fdt<'a> {
    pub fn parse(blob: &'a [u8]) -> Result<Fdt<'a>, FdtError> {
        let total = total_size(blob)?;
        if total > blob.len() || total < HEADER_LEN {
            return Err(FdtError::BadHeader { field: "totalsize" });
        }
        let blob = &blob[..total];
        let h = |i: usize| be32(blob, i * 4).unwrap_or(0) as usize;
        let (off_struct, off_strings, off_rsv, version) = (h(2), h(3), h(4), h(5) as u32);
        let (size_strings, size_struct) = (h(8), h(9));
        if version < 16 {
            return Err(FdtError::OldVersion { version });
        }
        let structure = blob
            .get(off_struct..off_struct.saturating_add(size_struct))
            .ok_or(FdtError::BadHeader {
                field: "off_dt_struct/size_dt_struct",
            })?;
        let strings = blob
            .get(off_strings..off_strings.saturating_add(size_strings))
            .ok_or(FdtError::BadHeader {
                field: "off_dt_strings/size_dt_strings",
            })?;
        if off_rsv >= total || !off_rsv.is_multiple_of(8) {
            return Err(FdtError::BadHeader {
                field: "off_mem_rsvmap",
            });
        }
        Ok(Fdt {
            blob,
            structure,
            strings,
            rsvmap_off: off_rsv,
            boot_cpuid: h(7) as u32,
        })
    }

    pub fn total_size(&self) -> usize {
        self.blob.len()
    }

    fn string(&self, off: usize) -> Option<&'a str> {
        let s = self.strings.get(off..)?;
        let end = s.iter().position(|&c| c == 0)?;
        core::str::from_utf8(&s[..end]).ok()
    }

    /// Visit every token in order; stops at `FDT_END`. Errors on anything malformed.
    pub fn walk(&self, mut f: impl FnMut(Token<'a>)) -> Result<(), FdtError> {
        let s = self.structure;
        let mut at = 0;
        loop {
            let bad = FdtError::BadStructure { offset: at };
            let tok = be32(s, at).ok_or(bad)?;
            at += 4;
            match tok {
                BEGIN_NODE => {
                    let rest = s.get(at..).ok_or(bad)?;
                    let len = rest.iter().position(|&c| c == 0).ok_or(bad)?;
                    let name = core::str::from_utf8(&rest[..len]).map_err(|_| bad)?;
                    at += align4(len + 1);
                    f(Token::Begin(name));
                }
                PROP => {
                    let len = be32(s, at).ok_or(bad)? as usize;
                    let nameoff = be32(s, at + 4).ok_or(bad)? as usize;
                    let value = s.get(at + 8..at + 8 + len).ok_or(bad)?;
                    let name = self.string(nameoff).ok_or(bad)?;
                    at += 8 + align4(len);
                    f(Token::Prop(name, value));
                }
                END_NODE => f(Token::End),
                NOP => {}
                END => return Ok(()),
                _ => return Err(bad),
            }
        }
    }

    /// `reg` entries (address, size) of every node whose `compatible` lists `compat`, in order.
    pub fn regs_compatible(&self, compat: &str, f: impl FnMut(u64, u64)) -> Result<(), FdtError> {
        self.regs_where(
            |name, props| {
                let _ = name;
                props
                    .compatible
                    .is_some_and(|c| c.split(|&b| b == 0).any(|item| item == compat.as_bytes()))
            },
            f,
        )
    }

    /// The first `/memory` range (address, size).
    pub fn memory(&self) -> Result<Option<(u64, u64)>, FdtError> {
        let mut first = None;
        self.regs_where(
            |name, props| {
                name == "memory"
                    || name.starts_with("memory@")
                    || props.device_type == Some(b"memory\0")
            },
            |a, s| {
                if first.is_none() {
                    first = Some((a, s));
                }
            },
        )?;
        Ok(first)
    }

    /// Walk nodes, tracking `#address-cells`/`#size-cells`, and report the `reg` entries of
    /// nodes that `want` picks (props are gathered before deciding, since order varies).
    fn regs_where(
        &self,
        mut want: impl FnMut(&str, &NodeProps<'a>) -> bool,
        mut f: impl FnMut(u64, u64),
    ) -> Result<(), FdtError> {
        // Per open node: the cells its children use, and its own gathered props.
        const MAX_DEPTH: usize = 16;
        let mut cells = [(2u32, 1u32); MAX_DEPTH + 1];
        let mut nodes: [(&str, NodeProps<'a>); MAX_DEPTH] = [("", NodeProps::default()); MAX_DEPTH];
        let mut depth = 0usize;
        let mut err = None;
        self.walk(|t| {
            if err.is_some() {
                return;
            }
            match t {
                Token::Begin(name) => {
                    if depth >= MAX_DEPTH {
                        err = Some(FdtError::BadStructure { offset: 0 });
                        return;
                    }
                    nodes[depth] = (name, NodeProps::default());
                    // Children default to 2/1 unless this node says otherwise.
                    cells[depth + 1] = (2, 1);
                    depth += 1;
                }
                Token::Prop(name, value) if depth > 0 => {
                    let n = &mut nodes[depth - 1].1;
                    match name {
                        "#address-cells" => cells[depth].0 = be32(value, 0).unwrap_or(2),
                        "#size-cells" => cells[depth].1 = be32(value, 0).unwrap_or(1),
                        "compatible" => n.compatible = Some(value),
                        "device_type" => n.device_type = Some(value),
                        "reg" => n.reg = Some(value),
                        _ => {}
                    }
                }
                Token::Prop(..) => {}
                Token::End => {
                    if depth == 0 {
                        err = Some(FdtError::BadStructure { offset: 0 });
                        return;
                    }
                    depth -= 1;
                    let (name, props) = nodes[depth];
                    if let (true, Some(reg)) = (depth > 0 && want(name, &props), props.reg) {
                        // The parent's cells (index depth) describe this node's reg.
                        let (ac, sc) = cells[depth];
                        let stride = 4 * (ac + sc) as usize;
                        if stride > 0 {
                            for entry in reg.chunks_exact(stride) {
                                let a = read_cells(&entry[..4 * ac as usize]);
                                let s = read_cells(&entry[4 * ac as usize..]);
                                f(a, s);
                            }
                        }
                    }
                }
            }
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Copy, Default)]
struct NodeProps<'a> {
    compatible: Option<&'a [u8]>,
    device_type: Option<&'a [u8]>,
    reg: Option<&'a [u8]>,
}

fn read_cells(b: &[u8]) -> u64 {
    b.chunks_exact(4).fold(0u64, |acc, c| {
        (acc << 32) | u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64
    })
}

/// Bytes [`set_chosen`] needs at most for this blob and these properties.
pub fn set_chosen_size(src: &Fdt, props: &[(&str, &[u8])]) -> usize {
    let extra: usize = props
        .iter()
        .map(|(n, v)| 12 + align4(v.len()) + n.len() + 1)
        .sum();
    // Room for a new "chosen" node, header realignment and the rsvmap's 8-byte alignment.
    src.total_size() + extra + 64
}

struct Out<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Out<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), FdtError> {
        let end = self.at + b.len();
        let dst = self
            .buf
            .get_mut(self.at..end)
            .ok_or(FdtError::NoSpace { needed: end })?;
        dst.copy_from_slice(b);
        self.at = end;
        Ok(())
    }
    fn u32(&mut self, v: u32) -> Result<(), FdtError> {
        self.bytes(&v.to_be_bytes())
    }
    fn pad4(&mut self) -> Result<(), FdtError> {
        while !self.at.is_multiple_of(4) {
            self.bytes(&[0])?;
        }
        Ok(())
    }
}

/// Write `src` into `out` with `/chosen`'s `props` set (replaced if present, the node created if
/// missing). Returns the new blob's size.
pub fn set_chosen(src: &Fdt, props: &[(&str, &[u8])], out: &mut [u8]) -> Result<usize, FdtError> {
    if props.len() > MAX_PROPS {
        return Err(FdtError::TooManyProps);
    }
    let mut o = Out { buf: out, at: 0 };
    o.bytes(&[0; HEADER_LEN])?;

    // Memory reservation block: 16-byte entries up to and including the (0, 0) terminator.
    while !o.at.is_multiple_of(8) {
        o.bytes(&[0])?;
    }
    let rsv_off = o.at;
    let mut at = src.rsvmap_off;
    loop {
        let e = src.blob.get(at..at + 16).ok_or(FdtError::BadHeader {
            field: "off_mem_rsvmap",
        })?;
        o.bytes(e)?;
        at += 16;
        if e.iter().all(|&b| b == 0) {
            break;
        }
    }

    // Strings: the old block, then names it lacks.
    let mut new_name_off = [None::<u32>; MAX_PROPS];
    let mut appended = 0usize;
    for (i, (name, _)) in props.iter().enumerate() {
        if find_string(src.strings, name).is_none() {
            new_name_off[i] = Some((src.strings.len() + appended) as u32);
            appended += name.len() + 1;
        }
    }
    let name_off = |i: usize, name: &str| -> u32 {
        new_name_off[i].unwrap_or_else(|| find_string(src.strings, name).unwrap_or(0) as u32)
    };

    // Structure.
    let struct_off = o.at;
    let mut depth = 0usize;
    let mut in_chosen = false;
    let mut saw_chosen = false;
    let mut err = None;
    let emit_props = |o: &mut Out| -> Result<(), FdtError> {
        for (i, (name, value)) in props.iter().enumerate() {
            o.u32(PROP)?;
            o.u32(value.len() as u32)?;
            o.u32(name_off(i, name))?;
            o.bytes(value)?;
            o.pad4()?;
        }
        Ok(())
    };
    src.walk(|t| {
        if err.is_some() {
            return;
        }
        let r = (|| -> Result<(), FdtError> {
            match t {
                Token::Begin(name) => {
                    depth += 1;
                    if depth == 2 && (name == "chosen" || name.starts_with("chosen@")) {
                        in_chosen = true;
                        saw_chosen = true;
                    }
                    o.u32(BEGIN_NODE)?;
                    o.bytes(name.as_bytes())?;
                    o.bytes(&[0])?;
                    o.pad4()
                }
                Token::Prop(name, value) => {
                    if in_chosen && depth == 2 && props.iter().any(|(n, _)| *n == name) {
                        return Ok(());
                    }
                    o.u32(PROP)?;
                    o.u32(value.len() as u32)?;
                    let off = find_string(src.strings, name).unwrap_or(0) as u32;
                    o.u32(off)?;
                    o.bytes(value)?;
                    o.pad4()
                }
                Token::End => {
                    if in_chosen && depth == 2 {
                        emit_props(&mut o)?;
                        in_chosen = false;
                    }
                    if depth == 1 && !saw_chosen {
                        o.u32(BEGIN_NODE)?;
                        o.bytes(b"chosen\0")?;
                        o.pad4()?;
                        emit_props(&mut o)?;
                        o.u32(END_NODE)?;
                    }
                    depth = depth.saturating_sub(1);
                    o.u32(END_NODE)
                }
            }
        })();
        if let Err(e) = r {
            err = Some(e);
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    o.u32(END)?;
    let struct_size = o.at - struct_off;

    let strings_off = o.at;
    o.bytes(src.strings)?;
    for (i, (name, _)) in props.iter().enumerate() {
        if new_name_off[i].is_some() {
            o.bytes(name.as_bytes())?;
            o.bytes(&[0])?;
        }
    }
    let strings_size = o.at - strings_off;
    let total = o.at;

    let header = [
        MAGIC,
        total as u32,
        struct_off as u32,
        strings_off as u32,
        rsv_off as u32,
        17,
        16,
        src.boot_cpuid,
        strings_size as u32,
        struct_size as u32,
    ];
    for (i, v) in header.iter().enumerate() {
        o.buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    Ok(total)
}

/// Offset of `name` as a whole entry of the strings block.
fn find_string(strings: &[u8], name: &str) -> Option<usize> {
    let mut at = 0;
    for s in strings.split(|&b| b == 0) {
        if s == name.as_bytes() {
            return Some(at);
        }
        at += s.len() + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use alloc::vec::Vec;

    /// qemu 10's `virt` machine DTB (`-machine virt,dumpdtb=...`, cortex-a53, 128 MiB, one
    /// virtio-blk), generated on this project's machines.
    const VIRT_DTB: &[u8] = include_bytes!("../testdata/qemu-virt.dtb");

    fn chosen(fdt: &Fdt) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut depth = 0;
        let mut inside = false;
        fdt.walk(|t| match t {
            Token::Begin(n) => {
                depth += 1;
                inside = depth == 2 && n == "chosen";
            }
            Token::Prop(n, v) if inside && depth == 2 => out.push((n.into(), v.to_vec())),
            Token::Prop(..) => {}
            Token::End => {
                depth -= 1;
                inside = false;
            }
        })
        .unwrap();
        out
    }

    #[test]
    fn reads_qemu_virt_memory_and_virtio_slots() {
        let fdt = Fdt::parse(VIRT_DTB).unwrap();
        assert_eq!(fdt.memory().unwrap(), Some((0x4000_0000, 128 << 20)));
        let mut regs = Vec::new();
        fdt.regs_compatible("virtio,mmio", |a, s| regs.push((a, s)))
            .unwrap();
        assert_eq!(regs.len(), 32);
        assert!(regs.contains(&(0x0a00_0000, 0x200)));
        assert!(regs
            .iter()
            .all(|&(a, s)| s == 0x200 && (0x0a00_0000..0x0a00_4000).contains(&a)));
        let mut uart = Vec::new();
        fdt.regs_compatible("arm,pl011", |a, _| uart.push(a))
            .unwrap();
        assert_eq!(uart, vec![0x0900_0000]);
    }

    #[test]
    fn sets_bootargs_and_initrd_on_qemu_virt() {
        let src = Fdt::parse(VIRT_DTB).unwrap();
        let start = 0x4800_0000u64.to_be_bytes();
        let end = 0x4810_0000u64.to_be_bytes();
        let props: [(&str, &[u8]); 3] = [
            ("bootargs", b"root=/dev/vda1 console=ttyAMA0\0"),
            ("linux,initrd-start", &start),
            ("linux,initrd-end", &end),
        ];
        let mut out = vec![0u8; set_chosen_size(&src, &props)];
        let n = set_chosen(&src, &props, &mut out).unwrap();
        let new = Fdt::parse(&out[..n]).unwrap();
        let c = chosen(&new);
        let get = |k: &str| c.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("bootargs").unwrap(),
            b"root=/dev/vda1 console=ttyAMA0\0"
        );
        assert_eq!(get("linux,initrd-start").unwrap(), start);
        assert_eq!(get("linux,initrd-end").unwrap(), end);
        // qemu's own chosen props survive.
        assert!(get("stdout-path").is_some());
        // Everything else is intact.
        assert_eq!(new.memory().unwrap(), src.memory().unwrap());

        // Setting bootargs again replaces it rather than adding a second one.
        let props2: [(&str, &[u8]); 1] = [("bootargs", b"quiet\0")];
        let mut out2 = vec![0u8; set_chosen_size(&new, &props2)];
        let n2 = set_chosen(&new, &props2, &mut out2).unwrap();
        let c2 = chosen(&Fdt::parse(&out2[..n2]).unwrap());
        assert_eq!(c2.iter().filter(|(n, _)| n == "bootargs").count(), 1);
        assert_eq!(
            c2.iter().find(|(n, _)| n == "bootargs").unwrap().1,
            b"quiet\0"
        );
    }

    #[test]
    fn dtc_reads_the_rewritten_blob() {
        // The real tool agrees, when it is installed (scripts/install-deps installs it).
        let Ok(dtc) = which("dtc") else { return };
        let src = Fdt::parse(VIRT_DTB).unwrap();
        let props: [(&str, &[u8]); 1] = [("bootargs", b"console=ttyAMA0 rw\0")];
        let mut out = vec![0u8; set_chosen_size(&src, &props)];
        let n = set_chosen(&src, &props, &mut out).unwrap();
        let dir = std::env::temp_dir().join(format!("loader-fdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.dtb");
        std::fs::write(&p, &out[..n]).unwrap();
        let r = std::process::Command::new(dtc)
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&p)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let dts = String::from_utf8(r.stdout).unwrap();
        assert!(dts.contains("bootargs = \"console=ttyAMA0 rw\";"), "{dts}");
    }

    fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.is_file())
            .ok_or(())
    }

    #[test]
    fn creates_chosen_when_missing_and_rejects_garbage() {
        // A minimal blob: root node with one property, no /chosen.
        let mut strings = b"model\0".to_vec();
        let mut st = Vec::new();
        for v in [BEGIN_NODE, 0] {
            st.extend_from_slice(&v.to_be_bytes());
        }
        st.extend_from_slice(&PROP.to_be_bytes());
        st.extend_from_slice(&4u32.to_be_bytes());
        st.extend_from_slice(&0u32.to_be_bytes());
        st.extend_from_slice(b"toy\0");
        st.extend_from_slice(&END_NODE.to_be_bytes());
        st.extend_from_slice(&END.to_be_bytes());
        let rsv = 40;
        let off_struct = rsv + 16;
        let off_strings = off_struct + st.len();
        let total = off_strings + strings.len();
        let mut blob = Vec::new();
        for v in [
            MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            rsv as u32,
            17,
            16,
            0,
            strings.len() as u32,
            st.len() as u32,
        ] {
            blob.extend_from_slice(&v.to_be_bytes());
        }
        blob.extend_from_slice(&[0; 16]);
        blob.extend_from_slice(&st);
        blob.append(&mut strings);

        let src = Fdt::parse(&blob).unwrap();
        let props: [(&str, &[u8]); 1] = [("bootargs", b"x=1\0")];
        let mut out = vec![0u8; set_chosen_size(&src, &props)];
        let n = set_chosen(&src, &props, &mut out).unwrap();
        let c = chosen(&Fdt::parse(&out[..n]).unwrap());
        assert_eq!(c, vec![("bootargs".into(), b"x=1\0".to_vec())]);

        // Too small an output buffer is an error, not an overrun.
        let mut small = vec![0u8; 60];
        assert!(matches!(
            set_chosen(&src, &props, &mut small),
            Err(FdtError::NoSpace { .. })
        ));

        let mut bad = blob.clone();
        bad[0] = 0;
        assert!(matches!(Fdt::parse(&bad), Err(FdtError::BadMagic { .. })));
        let mut bad = blob.clone();
        bad[4..8].copy_from_slice(&9999u32.to_be_bytes());
        assert_eq!(
            Fdt::parse(&bad).err(),
            Some(FdtError::BadHeader { field: "totalsize" })
        );
        let mut bad = blob.clone();
        bad[off_struct..off_struct + 4].copy_from_slice(&7u32.to_be_bytes());
        assert!(matches!(
            Fdt::parse(&bad).unwrap().walk(|_| {}),
            Err(FdtError::BadStructure { offset: 0 })
        ));
    }
}
