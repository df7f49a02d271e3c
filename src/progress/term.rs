//! A tiny screen model of a step's recent output for the tty view: the last few rows, with carriage returns, wrapping and escape sequences handled well enough for progress bars and plain logs.

use std::collections::VecDeque;

/// The visible tail of a step's output.
///
/// This is deliberately not a terminal emulator: it keeps only the bottom
/// rows, treats `\r` as "rewrite this row", drops escape sequences and other
/// control bytes, and wraps rows at the width. That is enough to show what a
/// running command is doing without letting its output garble our frame.
#[derive(Debug)]
pub struct Tail {
    width: usize,
    height: usize,
    rows: VecDeque<Vec<char>>,
    col: usize,
    /// Bytes of an unfinished UTF-8 sequence, kept for the next chunk.
    pending: Vec<u8>,
    esc: Esc,
    /// Total bytes written, which ranks the steps competing for screen room.
    pub bytes: usize,
    /// How many frames showed this tail, which keeps the choice steady.
    pub shown: usize,
}

/// Where we are inside an escape sequence, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Esc {
    None,
    /// Just saw ESC.
    Start,
    /// In a CSI sequence (ESC [ ... final byte).
    Csi,
    /// In an OSC string (ESC ] ... BEL or ESC \).
    Osc,
    /// Saw ESC inside an OSC string.
    OscEnd,
}

impl Tail {
    pub fn new(width: usize, height: usize) -> Self {
        let mut rows = VecDeque::new();
        rows.push_back(Vec::new());
        Tail {
            width: width.max(1),
            height: height.max(1),
            rows,
            col: 0,
            pending: Vec::new(),
            esc: Esc::None,
            bytes: 0,
            shown: 0,
        }
    }

    /// Changes the row width; existing rows are cut, not re-wrapped.
    pub fn resize(&mut self, width: usize) {
        self.width = width.max(1);
        for row in &mut self.rows {
            row.truncate(self.width);
        }
        self.col = self.col.min(self.width);
    }

    pub fn write(&mut self, data: &[u8]) {
        self.bytes += data.len();
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(data);
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.put_str(s);
                    break;
                }
                Err(e) => {
                    let (ok, bad) = rest.split_at(e.valid_up_to());
                    self.put_str(std::str::from_utf8(ok).expect("validated prefix"));
                    match e.error_len() {
                        Some(n) => {
                            self.put_char('\u{fffd}');
                            rest = &bad[n..];
                        }
                        None => {
                            // Truncated sequence at the end: wait for more.
                            self.pending = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
    }

    fn put_str(&mut self, s: &str) {
        for c in s.chars() {
            self.put_char(c);
        }
    }

    fn put_char(&mut self, c: char) {
        match self.esc {
            Esc::Start => {
                self.esc = match c {
                    '[' => Esc::Csi,
                    ']' => Esc::Osc,
                    _ => Esc::None,
                };
                return;
            }
            Esc::Csi => {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    self.esc = Esc::None;
                }
                return;
            }
            Esc::Osc => {
                match c {
                    '\u{7}' => self.esc = Esc::None,
                    '\u{1b}' => self.esc = Esc::OscEnd,
                    _ => {}
                }
                return;
            }
            Esc::OscEnd => {
                self.esc = if c == '\\' { Esc::None } else { Esc::Osc };
                return;
            }
            Esc::None => {}
        }
        match c {
            '\u{1b}' => self.esc = Esc::Start,
            '\n' => self.new_row(),
            '\r' => self.col = 0,
            '\u{8}' => self.col = self.col.saturating_sub(1),
            '\t' => {
                let stop = (self.col / 8 + 1) * 8;
                while self.col < stop.min(self.width) {
                    self.put_visible(' ');
                }
            }
            c if c.is_control() => {}
            c => self.put_visible(c),
        }
    }

    fn put_visible(&mut self, c: char) {
        if self.col >= self.width {
            self.new_row();
        }
        let row = self.rows.back_mut().expect("always one row");
        if self.col < row.len() {
            row[self.col] = c;
        } else {
            row.resize(self.col, ' ');
            row.push(c);
        }
        self.col += 1;
    }

    fn new_row(&mut self) {
        self.rows.push_back(Vec::new());
        self.col = 0;
        while self.rows.len() > self.height + 1 {
            self.rows.pop_front();
        }
    }

    /// The non-blank rows among the last `height`, oldest first. A trailing
    /// empty row (the cursor after a newline) is not shown.
    pub fn lines(&self) -> Vec<String> {
        let mut rows: Vec<&Vec<char>> = self.rows.iter().collect();
        if rows.last().is_some_and(|r| r.is_empty()) {
            rows.pop();
        }
        let skip = rows.len().saturating_sub(self.height);
        rows[skip..]
            .iter()
            .filter(|r| r.iter().any(|&c| c != ' '))
            .map(|r| r.iter().collect::<String>().trim_end().to_string())
            .collect()
    }

    /// Rows the tail would take on screen.
    pub fn used_height(&self) -> usize {
        self.lines().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_last_rows() {
        let mut t = Tail::new(20, 3);
        t.write(b"one\ntwo\nthree\nfour\n");
        assert_eq!(t.lines(), ["two", "three", "four"]);
        t.write(b"fi");
        t.write(b"ve");
        assert_eq!(t.lines(), ["three", "four", "five"]);
    }

    #[test]
    fn carriage_return_rewrites_and_escapes_vanish() {
        let mut t = Tail::new(20, 3);
        t.write(b"10%\r50%\r\x1b[32m100%\x1b[0m\n");
        assert_eq!(t.lines(), ["100%"]);
    }

    #[test]
    fn wraps_and_joins_split_utf8() {
        let mut t = Tail::new(4, 3);
        t.write(b"abcdef\n");
        assert_eq!(t.lines(), ["abcd", "ef"]);
        let mut t = Tail::new(10, 2);
        let s = "h\u{e9}".as_bytes();
        t.write(&s[..2]);
        t.write(&s[2..]);
        assert_eq!(t.lines(), ["h\u{e9}"]);
    }
}
