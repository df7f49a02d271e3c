//! Column alignment with the semantics of Go's text/tabwriter, so tables come out byte-for-byte as buildctl prints them.
//!
//! The model: text is lines of cells; a cell ended by a tab belongs to a column, the text after
//! a line's last tab does not. A column's width is set per block, a run of adjacent lines that
//! all have a tab-ended cell in that column, so a line with fewer cells (a heading, a blank
//! line) starts new blocks below it.

/// How cells are padded, as given to Go's `tabwriter.NewWriter`.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Smallest column width, padding included.
    pub minwidth: usize,
    /// How wide a tab is taken to be when padding with tabs.
    pub tabwidth: usize,
    /// Added to the widest cell of a block.
    pub padding: usize,
    /// The padding character; with a tab, columns snap to tab stops.
    pub padchar: char,
}

/// buildctl's table style for workers, du and prune: tab-padded, tab stops every 8.
pub const TABS: Style = Style {
    minwidth: 1,
    tabwidth: 8,
    padding: 1,
    padchar: '\t',
};

/// buildctl's style for `debug info`: one space past the widest label.
pub const SPACES: Style = Style {
    minwidth: 0,
    tabwidth: 0,
    padding: 1,
    padchar: ' ',
};

/// Aligns `text` in one go, like writing it all and flushing once.
pub fn align(style: Style, text: &str) -> String {
    // Every line but the last ended with a newline; the remainder is kept as is.
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let widths = column_widths(style, &lines);
    let mut out = String::with_capacity(text.len() * 2);
    for (i, cells) in lines.iter().enumerate() {
        let last = cells.len() - 1;
        for (j, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if j < last {
                pad(style, &mut out, width(cell), widths[i][j]);
            }
        }
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
    out
}

/// For each line, the width of each of its tab-ended cells: the widest cell of its block plus
/// the padding, at least `minwidth`.
fn column_widths(style: Style, lines: &[Vec<&str>]) -> Vec<Vec<usize>> {
    let columns = |l: &Vec<&str>| l.len() - 1;
    let mut widths: Vec<Vec<usize>> = lines.iter().map(|l| vec![0; columns(l)]).collect();
    let max_cols = lines.iter().map(columns).max().unwrap_or(0);
    for col in 0..max_cols {
        let mut i = 0;
        while i < lines.len() {
            if columns(&lines[i]) <= col {
                i += 1;
                continue;
            }
            let start = i;
            let mut w = style.minwidth;
            while i < lines.len() && columns(&lines[i]) > col {
                w = w.max(width(lines[i][col]) + style.padding);
                i += 1;
            }
            for row in &mut widths[start..i] {
                row[col] = w;
            }
        }
    }
    widths
}

/// Go counts runes, not bytes or display columns.
fn width(cell: &str) -> usize {
    cell.chars().count()
}

fn pad(style: Style, out: &mut String, text: usize, cell: usize) {
    if style.padchar == '\t' {
        if style.tabwidth == 0 {
            return;
        }
        // The cell ends on the next tab stop; enough tabs to reach it from the text's end.
        let stop = cell.div_ceil(style.tabwidth) * style.tabwidth;
        let n = (stop - text).div_ceil(style.tabwidth);
        out.extend(std::iter::repeat_n('\t', n));
    } else {
        out.extend(std::iter::repeat_n(style.padchar, cell - text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_stops_follow_the_widest_cell_of_the_block() {
        let t = align(
            TABS,
            "ID\tPLATFORMS\nzasukgu0y5ifwg2vp6sy9fc87\tlinux/amd64\n",
        );
        assert_eq!(
            t,
            "ID\t\t\t\tPLATFORMS\nzasukgu0y5ifwg2vp6sy9fc87\tlinux/amd64\n"
        );
    }

    #[test]
    fn a_line_without_the_column_starts_a_new_block() {
        let t = align(
            TABS,
            "Labels:\n\ta:\tx\n\tlonger-key-here:\ty\nGC:\n\tAll:\tfalse\n",
        );
        assert_eq!(
            t,
            "Labels:\n\ta:\t\t\tx\n\tlonger-key-here:\ty\nGC:\n\tAll:\tfalse\n"
        );
    }

    #[test]
    fn space_padding() {
        let t = align(SPACES, "BuildKit:\tx\nDockerfile:\ty\n");
        assert_eq!(t, "BuildKit:   x\nDockerfile: y\n");
    }

    #[test]
    fn empty_trailing_cell_still_pads_the_one_before() {
        assert_eq!(align(TABS, "a\tb\t\n"), "a\tb\t\n");
        assert_eq!(align(TABS, "12345678\tb\t\n"), "12345678\tb\t\n");
        assert_eq!(
            align(TABS, "1234567\t\n12345678\t\n"),
            "1234567\t\t\n12345678\t\n"
        );
    }
}
