//! Output capture: the tail a receipt keeps, and live chunks cut on UTF-8
//! character boundaries.

/// Keeps the last `chars` characters of a byte stream. Holds at most
/// 4 bytes per character (plus slack), so memory stays bounded however much
/// a command prints.
pub struct Tail {
    chars: usize,
    buf: Vec<u8>,
    total_bytes: u64,
}

impl Tail {
    pub fn new(chars: usize) -> Self {
        Self {
            chars,
            buf: Vec::new(),
            total_bytes: 0,
        }
    }

    fn max_bytes(&self) -> usize {
        self.chars * 4
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.total_bytes += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.max_bytes() {
            let cut = self.buf.len() - self.max_bytes();
            self.buf.drain(..cut);
        }
    }

    /// The kept text (lossy UTF-8) and whether anything was dropped.
    pub fn finish(self) -> (String, bool) {
        let mut start = self.buf.len().saturating_sub(self.max_bytes());
        // Do not start inside a multi-byte character.
        while start < self.buf.len() && start > 0 && (self.buf[start] & 0xC0) == 0x80 {
            start += 1;
        }
        let dropped_bytes = start > 0 || (self.total_bytes as usize) > self.buf.len();
        let text = String::from_utf8_lossy(&self.buf[start..]);
        let count = text.chars().count();
        if count > self.chars {
            let skip = text
                .char_indices()
                .nth(count - self.chars)
                .map(|(i, _)| i)
                .unwrap_or(0);
            (text[skip..].to_string(), true)
        } else {
            (text.into_owned(), dropped_bytes)
        }
    }
}

/// Turns raw pipe reads into text without splitting a character across two
/// chunks (an incomplete sequence at the end waits for the next read).
#[derive(Default)]
pub struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let keep_from = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(keep_from);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }

    pub fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut t = Tail::new(10);
        t.push(b"hello\n");
        assert_eq!(t.finish(), ("hello\n".to_string(), false));
    }

    #[test]
    fn one_megabyte_keeps_the_last_64000_chars() {
        let mut t = Tail::new(64_000);
        let line: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for chunk in line.chunks(4096) {
            t.push(chunk);
        }
        let (text, truncated) = t.finish();
        assert!(truncated);
        assert_eq!(text.chars().count(), 64_000);
        assert_eq!(text.as_bytes(), &line[line.len() - 64_000..]);
    }

    #[test]
    fn multibyte_tails_count_characters_not_bytes() {
        let mut t = Tail::new(3);
        t.push("ééééé".as_bytes());
        assert_eq!(t.finish(), ("ééé".to_string(), true));
        let mut t = Tail::new(5);
        t.push("ééééé".as_bytes());
        assert_eq!(t.finish(), ("ééééé".to_string(), false));
    }

    #[test]
    fn chunker_never_splits_a_character() {
        let bytes = "aé€😀".as_bytes();
        let mut c = Utf8Chunker::default();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&c.push(&[*b]));
        }
        out.push_str(&c.flush());
        assert_eq!(out, "aé€😀");
        let mut c = Utf8Chunker::default();
        assert_eq!(c.push(&[0xff, b'a']), "\u{fffd}a");
    }
}
