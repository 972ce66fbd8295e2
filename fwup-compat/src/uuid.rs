//! meta-uuid and meta-nickname: derived from meta.conf bytes as fwup's src/util.c
//! `calculate_fwup_uuid` does (<https://github.com/fwup-home/fwup/blob/main/src/util.c>):
//! BLAKE2b with a 32-byte output over fwup's namespace UUID then meta.conf, version nibble 5,
//! and two words from a fixed 256-word list picked by the first two bytes.

/// fwup's namespace UUID 2053dffb-d51e-4310-b93b-956da89f9f34.
const NAMESPACE: [u8; 16] = [
    0x20, 0x53, 0xdf, 0xfb, 0xd5, 0x1e, 0x43, 0x10, 0xb9, 0x3b, 0x95, 0x6d, 0xa8, 0x9f, 0x9f, 0x34,
];

/// Word i has length 3 + i % 5.
const WORDS: [&str; 256] = [
    "act", "able", "about", "absent", "abandon", "add", "away", "aisle", "advice", "address",
    "aim", "best", "anger", "annual", "analyst", "all", "bone", "armor", "assume", "apology",
    "arm", "cake", "beach", "barrel", "average", "ask", "chat", "bless", "bitter", "bargain",
    "bar", "club", "brick", "bronze", "blanket", "bid", "corn", "cabin", "camera", "capital",
    "boy", "dash", "chalk", "casual", "certain", "can", "dice", "civil", "cherry", "coconut",
    "cat", "drip", "cloud", "column", "conduct", "cup", "east", "craft", "credit", "crucial",
    "day", "fall", "curve", "debris", "cushion", "dry", "fine", "dream", "depend", "despair",
    "egg", "foil", "earth", "dinner", "dilemma", "era", "gain", "entry", "dragon", "dynamic",
    "fan", "glad", "exist", "energy", "emotion", "few", "grit", "field", "estate", "essence",
    "fix", "head", "focus", "expire", "exhibit", "fog", "hood", "gauge", "finger", "fatigue",
    "fox", "idea", "glove", "fossil", "forward", "gap", "jump", "grunt", "garlic", "genuine",
    "hat", "kiwi", "hello", "guitar", "gravity", "hip", "lazy", "inner", "horror", "illness",
    "ice", "link", "labor", "indoor", "initial", "job", "loop", "light", "invest", "jealous",
    "key", "math", "maple", "laptop", "lecture", "kid", "mind", "mimic", "lonely", "lottery",
    "lab", "name", "nasty", "margin", "mention", "mad", "nose", "offer", "middle", "monitor",
    "mix", "open", "owner", "motion", "network", "net", "pass", "piano", "nephew", "observe",
    "nut", "plug", "power", "online", "ostrich", "oak", "pulp", "purse", "palace", "peasant",
    "oil", "ramp", "ready", "phrase", "popular", "one", "ring", "round", "praise", "present",
    "pen", "safe", "scrap", "reason", "program", "pig", "seed", "shock", "relief", "pudding",
    "raw", "sign", "skill", "resist", "raccoon", "rug", "slot", "snack", "ripple", "release",
    "run", "soon", "spawn", "salute", "satisfy", "say", "step", "spray", "select", "session",
    "shy", "tape", "still", "silver", "slender", "spy", "text", "super", "sphere", "stomach",
    "tag", "tiny", "table", "street", "supreme", "tip", "trip", "tired", "symbol", "thunder",
    "toe", "undo", "trade", "ticket", "trigger", "toy", "visa", "truth", "travel", "uncover",
    "two", "wasp", "vague", "unfold", "utility", "van", "wild", "vivid", "valley", "vibrant",
    "web", "yard", "zebra", "voyage", "weather", "zoo",
];

/// Incremental BLAKE2b-256: BLAKE2b with a 32-byte digest length in its parameter block
/// (not truncated BLAKE2b-512). SIMD-accelerated: resources are hashed at memory speed.
pub struct Blake2b256(blake2b_simd::State);

impl Default for Blake2b256 {
    fn default() -> Self {
        Blake2b256(blake2b_simd::Params::new().hash_length(32).to_state())
    }
}

impl Blake2b256 {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finalize(&self) -> [u8; 32] {
        self.0
            .finalize()
            .as_bytes()
            .try_into()
            .expect("32-byte digest")
    }
}

/// BLAKE2b-256 of the concatenated parts.
pub fn blake2b_256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2b256::default();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// (uuid string, nickname) of an archive from its meta.conf bytes.
pub fn meta_uuid(meta_conf: &[u8]) -> (String, String) {
    let mut h = blake2b_256(&[&NAMESPACE, meta_conf]);
    h[6] = (h[6] & 0x0f) | 0x50;
    let x = common::hex::encode(&h[..16]);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    );
    (
        uuid,
        format!("{}-{}", WORDS[h[0] as usize], WORDS[h[1] as usize]),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn word_lengths() {
        for (i, w) in super::WORDS.iter().enumerate() {
            assert_eq!(w.len(), 3 + i % 5, "{w}");
        }
    }
}
