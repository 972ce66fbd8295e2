//! A small directory tree placed into the fresh filesystem at format time: directories (one
//! dentry block each), regular files (up to 923 blocks, addressed from the inode) and symlinks.
//! Directory inodes go to the hot node log, other inodes to the warm node log, dentry blocks to
//! the hot data log and file data to the warm data log: the segment types fsck expects.
//! Spec: <https://www.kernel.org/doc/html/latest/filesystems/f2fs.html> (directory structure).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::ondisk::*;

/// One entry of the tree. Owners are root (0:0); times are the format's timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    File {
        mode: u16,
        data: Vec<u8>,
    },
    Dir {
        mode: u16,
        entries: BTreeMap<String, Entry>,
    },
    Symlink {
        target: String,
    },
}

/// Read a host directory into entries (permission bits kept, owners dropped). Other file
/// types (devices, sockets) are refused.
pub fn tree_from_host(dir: &Path) -> io::Result<BTreeMap<String, Entry>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().into_string().map_err(|n| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: name is not UTF-8", dir.join(n).display()),
            )
        })?;
        let meta = std::fs::symlink_metadata(e.path())?;
        let mode = (meta.permissions().mode() & 0o7777) as u16;
        let ft = meta.file_type();
        let entry = if ft.is_symlink() {
            let t = std::fs::read_link(e.path())?;
            Entry::Symlink {
                target: t.to_string_lossy().into_owned(),
            }
        } else if ft.is_dir() {
            Entry::Dir {
                mode,
                entries: tree_from_host(&e.path())?,
            }
        } else if ft.is_file() {
            Entry::File {
                mode,
                data: std::fs::read(e.path())?,
            }
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: only files, directories and symlinks",
                    e.path().display()
                ),
            ));
        };
        out.insert(name, entry);
    }
    Ok(out)
}

/// f2fs's directory-entry name hash (TEA over 16-byte chunks; `.` and `..` hash to 0).
pub fn dentry_hash(name: &[u8]) -> u32 {
    if name == b"." || name == b".." {
        return 0;
    }
    let mut buf = [0x6745_2301u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let mut rest = name;
    loop {
        let words = hash_words(rest);
        tea(&mut buf, &words);
        if rest.len() <= 16 {
            break;
        }
        rest = &rest[16..];
    }
    buf[0]
}

/// Pack up to 16 name bytes into 4 big-endian-ish words, padded with a length pattern.
fn hash_words(msg: &[u8]) -> [u32; 4] {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut out = [pad; 4];
    let mut val = pad;
    let mut k = 0;
    for (i, &c) in msg.iter().take(16).enumerate() {
        if i % 4 == 0 {
            val = pad;
        }
        val = (c as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[k] = val;
            k += 1;
            val = pad;
        }
    }
    if k < 4 {
        out[k] = val;
    }
    out
}

fn tea(buf: &mut [u32; 4], w: &[u32; 4]) {
    const DELTA: u32 = 0x9E37_79B9;
    let (mut b0, mut b1, mut sum) = (buf[0], buf[1], 0u32);
    for _ in 0..16 {
        sum = sum.wrapping_add(DELTA);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(w[0])) ^ b1.wrapping_add(sum) ^ ((b1 >> 5).wrapping_add(w[1])),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(w[2])) ^ b0.wrapping_add(sum) ^ ((b0 >> 5).wrapping_add(w[3])),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// The root's contents laid out as blocks in the four logs.
pub(crate) struct Content {
    /// Directory inodes, root first (hot node log, in order).
    pub hot_nodes: Vec<InodeBlock>,
    /// File and symlink inodes (warm node log).
    pub warm_nodes: Vec<InodeBlock>,
    /// Dentry blocks with their owner's nid (hot data log).
    pub hot_data: Vec<(u32, Vec<u8>)>,
    /// File data blocks: owner nid, index in the owner's i_addr, bytes (warm data log).
    pub warm_data: Vec<(u32, u16, Vec<u8>)>,
    /// nid -> node block address, for the NAT.
    pub nat: Vec<(u32, u32)>,
    pub next_free_nid: u32,
}

/// Where each log starts (block addresses) and what the tree may use.
pub(crate) struct Logs {
    pub hot_node: u32,
    pub warm_node: u32,
    pub hot_data: u32,
    pub warm_data: u32,
    pub time: u64,
}

pub(crate) const ROOT_INO: u32 = 3;
const MAX_DATA_BLOCKS: usize = 441; // one compacted summary block for all data logs
const MAX_NID: u32 = NAT_ENTRY_PER_BLOCK as u32 - 1; // one NAT block

struct Builder<'a> {
    logs: &'a Logs,
    c: Content,
    nid: u32,
}

pub(crate) fn build(root: &BTreeMap<String, Entry>, logs: &Logs) -> Result<Content, String> {
    let mut b = Builder {
        logs,
        c: Content {
            hot_nodes: vec![],
            warm_nodes: vec![],
            hot_data: vec![],
            warm_data: vec![],
            nat: vec![],
            next_free_nid: 0,
        },
        nid: ROOT_INO,
    };
    b.dir(ROOT_INO, ROOT_INO, b"", 0o755, root, "/")?;
    if b.c.hot_nodes.len() > BLOCKS_PER_SEG as usize {
        return Err(format!("{} directories: at most 512", b.c.hot_nodes.len()));
    }
    if b.c.warm_nodes.len() > BLOCKS_PER_SEG as usize {
        return Err(format!(
            "{} files and symlinks: at most 512",
            b.c.warm_nodes.len()
        ));
    }
    let data = b.c.hot_data.len() + b.c.warm_data.len();
    if data > MAX_DATA_BLOCKS {
        return Err(format!(
            "the tree needs {data} data blocks of 4 KiB: at most {MAX_DATA_BLOCKS} (about 1.7 MiB)"
        ));
    }
    b.c.next_free_nid = b.nid + 1;
    b.c.nat.sort_unstable();
    Ok(b.c)
}

fn check_name(name: &str, at: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!("{at}: `{name}` is not a valid file name"));
    }
    if name.len() > NAME_LEN {
        return Err(format!("{at}{name}: name longer than 255 bytes"));
    }
    Ok(())
}

impl Builder<'_> {
    fn new_nid(&mut self) -> Result<u32, String> {
        self.nid += 1;
        if self.nid > MAX_NID {
            return Err(format!("more than {} inodes", MAX_NID - ROOT_INO));
        }
        Ok(self.nid)
    }

    fn inode(&self, nid: u32, pino: u32, name: &[u8], mode: u16) -> InodeBlock {
        let t = self.logs.time;
        let mut i = InodeBlock {
            i_mode: mode,
            i_atime: t,
            i_ctime: t,
            i_mtime: t,
            i_pino: pino,
            i_namelen: name.len() as u32,
            ..Default::default()
        };
        i.i_name[..name.len()].copy_from_slice(name);
        i.footer.nid = nid;
        i.footer.ino = nid;
        i.footer.cp_ver = 1;
        i
    }

    fn dir(
        &mut self,
        nid: u32,
        pino: u32,
        name: &[u8],
        mode: u16,
        entries: &BTreeMap<String, Entry>,
        path: &str,
    ) -> Result<(), String> {
        let node_idx = self.c.hot_nodes.len();
        let node_addr = self.logs.hot_node + node_idx as u32;
        let data_addr = self.logs.hot_data + self.c.hot_data.len() as u32;
        // The root records no parent, as mkfs.f2fs leaves it.
        let parent = if nid == ROOT_INO { 0 } else { pino };
        let mut inode = self.inode(nid, parent, name, 0o040000 | (mode & 0o7777));
        inode.i_size = BLOCK_SIZE as u64;
        inode.i_blocks = 2;
        inode.i_current_depth = 1;
        inode.i_addr[0] = data_addr;
        inode.footer.next_blkaddr = node_addr + 1;
        self.c.hot_nodes.push(inode);
        self.c.hot_data.push((nid, vec![]));
        self.c.nat.push((nid, node_addr));

        let slots: usize = entries.keys().map(|n| n.len().div_ceil(SLOT_LEN)).sum();
        if slots + 2 > NR_DENTRY_IN_BLOCK {
            return Err(format!(
                "{path}: too many entries for one directory block (names need {} slots of 8 \
                 bytes, at most {})",
                slots,
                NR_DENTRY_IN_BLOCK - 2
            ));
        }
        let mut d = DentryBlock::default();
        d.add(0, b".", nid, FT_DIR, 0);
        d.add(1, b"..", pino, FT_DIR, 0);
        let mut pos = 2;
        let mut subdirs = 0;
        for (child, e) in entries {
            check_name(child, path)?;
            let cnid = self.new_nid()?;
            let ft = match e {
                Entry::Dir { mode, entries } => {
                    subdirs += 1;
                    self.dir(
                        cnid,
                        nid,
                        child.as_bytes(),
                        *mode,
                        entries,
                        &format!("{path}{child}/"),
                    )?;
                    FT_DIR
                }
                Entry::File { mode, data } => {
                    self.file(cnid, nid, child, 0o100000 | (mode & 0o7777), data, path)?;
                    FT_REG_FILE
                }
                Entry::Symlink { target } => {
                    self.file(cnid, nid, child, 0o120777, target.as_bytes(), path)?;
                    FT_SYMLINK
                }
            };
            let bytes = child.as_bytes();
            d.add(pos, bytes, cnid, ft, dentry_hash(bytes));
            pos += bytes.len().div_ceil(SLOT_LEN);
        }
        self.c.hot_nodes[node_idx].i_links = 2 + subdirs;
        let slot = self
            .c
            .hot_data
            .iter_mut()
            .find(|(n, _)| *n == nid)
            .expect("pushed above");
        slot.1 = d.to_bytes();
        Ok(())
    }

    fn file(
        &mut self,
        nid: u32,
        pino: u32,
        name: &str,
        mode: u16,
        data: &[u8],
        path: &str,
    ) -> Result<(), String> {
        let blocks = data.len().div_ceil(BLOCK_SIZE);
        if blocks > ADDRS_PER_INODE {
            return Err(format!(
                "{path}{name}: {} bytes: files in the format-time tree are limited to {} bytes",
                data.len(),
                ADDRS_PER_INODE * BLOCK_SIZE
            ));
        }
        let node_addr = self.logs.warm_node + self.c.warm_nodes.len() as u32;
        let mut inode = self.inode(nid, pino, name.as_bytes(), mode);
        inode.i_links = 1;
        inode.i_size = data.len() as u64;
        inode.i_blocks = 1 + blocks as u64;
        inode.footer.next_blkaddr = node_addr + 1;
        for (i, chunk) in data.chunks(BLOCK_SIZE).enumerate() {
            let addr = self.logs.warm_data + self.c.warm_data.len() as u32;
            inode.i_addr[i] = addr;
            let mut blk = chunk.to_vec();
            blk.resize(BLOCK_SIZE, 0);
            self.c.warm_data.push((nid, i as u16, blk));
        }
        self.c.warm_nodes.push(inode);
        self.c.nat.push((nid, node_addr));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_of_dots_is_zero_and_names_differ() {
        assert_eq!(dentry_hash(b"."), 0);
        assert_eq!(dentry_hash(b".."), 0);
        assert_ne!(dentry_hash(b"a"), dentry_hash(b"b"));
        // Long names take several 16-byte rounds.
        assert_ne!(
            dentry_hash(b"0123456789abcdefX"),
            dentry_hash(b"0123456789abcdefY")
        );
    }

    #[test]
    fn hash_words_pad_with_the_length() {
        // "abc": pad 0x03030303, bytes shifted in after it.
        let w = hash_words(b"abc");
        assert_eq!(w[0], 0x0361_6263);
        assert_eq!(w[1..], [0x0303_0303; 3]);
    }
}
