//! The one rule every client text passes before it is used or stored (contract, "Text fields"):
//! no C0 (U+0000–U+001F) or C1 (U+0080–U+009F) control character except tab, line feed and
//! carriage return, and no DEL (U+007F) either: Unicode classes it a control with the other two
//! sets (general category Cc, Rust's `char::is_control`), and a client that filters "control
//! characters" drops it too. Postgres refuses U+0000 in `text` outright, and the other controls
//! are never wanted in a chat: they hide text, break terminals and log lines.
//!
//! Handlers check their own fields with [`check`]; the JSON, query and WebSocket decoders run
//! [`find_in_json`] over everything a client sent, so no field, present or future, reaches
//! Postgres unchecked.

use serde_json::Value;

/// Whether `c` is a control character the contract refuses: every one of Unicode's (C0, DEL,
/// C1) but tab, line feed and carriage return.
pub fn is_refused(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// `Ok` when `value` holds no refused control character; otherwise the problem, as a sentence
/// naming the first offending character and where it is (counted in Unicode scalar values).
pub fn check(value: &str) -> Result<(), String> {
    match value.chars().enumerate().find(|(_, c)| is_refused(*c)) {
        None => Ok(()),
        Some((at, c)) => Err(format!(
            "must not contain control characters (U+{:04X} at character {})",
            u32::from(c),
            at + 1
        )),
    }
}

/// The first string in `value` that [`check`] refuses: its path (`content`,
/// `positions[2].chat_id`, or `fallback` for a bare string) and the problem.
pub fn find_in_json(value: &Value, fallback: &str) -> Option<(String, String)> {
    let mut path = String::new();
    walk(value, &mut path).map(|problem| {
        let field = if path.is_empty() {
            fallback.to_owned()
        } else {
            path
        };
        (field, problem)
    })
}

fn walk(value: &Value, path: &mut String) -> Option<String> {
    match value {
        Value::String(s) => check(s).err(),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = walk(item, path);
            if found.is_none() {
                path.truncate(len);
            }
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
            // A field name is client text too (it may be echoed in an error).
            let found = check(key).err().or_else(|| walk(item, path));
            if found.is_none() {
                path.truncate(len);
            }
            found
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_refused_except_tab_and_newlines() {
        assert!(check("hello\tworld\r\n").is_ok());
        assert!(check("emoji 👋 and ü").is_ok());
        for bad in [
            "\u{0}",
            "a\u{1}",
            "\u{1b}[31m",
            "\u{1f}",
            "x\u{80}",
            "\u{9f}",
            "x\u{7f}y",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        // Just past C1: a no-break space, and formatting characters that are not controls.
        assert!(check("\u{a0}\u{200d}\u{ad}").is_ok());
        let problem = check("ab\u{0}").unwrap_err();
        assert!(problem.contains("U+0000 at character 3"), "{problem}");
    }

    #[test]
    fn the_json_walk_names_the_field() {
        let body = serde_json::json!({
            "name": "ok",
            "data": {"positions": [{"chat_id": "fine"}, {"chat_id": "bad\u{0}"}]}
        });
        let (field, _) = find_in_json(&body, "body").unwrap();
        assert_eq!(field, "data.positions[1].chat_id");
        assert_eq!(
            find_in_json(&serde_json::json!("x\u{7}"), "q").unwrap().0,
            "q"
        );
        assert!(find_in_json(&serde_json::json!({"a": [1, true, null, "z"]}), "body").is_none());
    }
}
