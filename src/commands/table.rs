//! The one table printer of the commands: columns two spaces apart, as `systemctl list-units`
//! prints them, names and times aligned left and counts right.

/// How a column is aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Names, times, states.
    Left,
    /// Counts.
    Right,
}

/// `rows` under `header`, each column as wide as its widest cell (in characters), with no
/// trailing spaces.
pub fn columns<const N: usize>(
    header: [&str; N],
    rows: &[[String; N]],
    align: [Align; N],
) -> String {
    let header = header.map(str::to_owned);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .zip(align)
            .map(|((cell, width), align)| match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_align_left_and_counts_right_without_trailing_spaces() {
        let rows = [
            ["a.service".to_owned(), "3".to_owned(), String::new()],
            ["bé".to_owned(), "12".to_owned(), String::new()],
        ];
        let text = columns(
            ["UNIT", "N", "NOTE"],
            &rows,
            [Align::Left, Align::Right, Align::Left],
        );
        assert_eq!(text, "UNIT        N  NOTE\na.service   3\nbé         12\n");
    }
}
