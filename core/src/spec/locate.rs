//! Where each field of a YAML document is: a map from dotted paths (`a.b[2].c`, the form
//! serde_path_to_error prints) to the 1-based line and column of the field's key (or, for
//! a sequence item, of the item), read from saphyr-parser's events. Semantic validation
//! uses it to point at the line the user must change.

use saphyr_parser::{Event, Parser};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Locations {
    by_path: HashMap<String, (u32, u32)>,
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

impl Locations {
    /// Reads every node's position; a document that does not parse yields no locations
    /// (the deserializer reports that error with its own position).
    pub fn of(yaml: &str) -> Locations {
        let mut by_path = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(yaml) {
            let Ok((event, span)) = item else { break };
            let here = (span.start.line() as u32, span.start.col() as u32 + 1);
            let is_value = matches!(
                event,
                Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(_)
            );
            // A scalar where a mapping expects a key is the key; remember where it is.
            if let (Event::Scalar(text, ..), Some(Frame::Mapping { path, key })) = (&event, stack.last_mut())
                && key.is_none()
            {
                let full = join_key(path, text);
                by_path.entry(full).or_insert(here);
                *key = Some(text.to_string());
                continue;
            }
            let value_path = if is_value {
                match stack.last_mut() {
                    Some(Frame::Mapping { path, key }) => key.take().map(|k| join_key(path, &k)),
                    Some(Frame::Sequence { path, index }) => {
                        let p = format!("{path}[{index}]");
                        *index += 1;
                        by_path.entry(p.clone()).or_insert(here);
                        Some(p)
                    }
                    None => Some(String::new()),
                }
            } else {
                None
            };
            match event {
                Event::MappingStart(..) => stack.push(Frame::Mapping {
                    path: value_path.unwrap_or_default(),
                    key: None,
                }),
                Event::SequenceStart(..) => stack.push(Frame::Sequence {
                    path: value_path.unwrap_or_default(),
                    index: 0,
                }),
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        Locations { by_path }
    }

    /// The position of `path`, or of its nearest ancestor that is written in the document
    /// (a defaulted field has no line of its own; its parent section may).
    pub fn find(&self, path: &str) -> Option<(u32, u32)> {
        let mut current = path.to_string();
        loop {
            if let Some(found) = self.by_path.get(&current) {
                return Some(*found);
            }
            let cut = current.rfind(['.', '['])?;
            current.truncate(cut);
            if current.is_empty() {
                return None;
            }
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_items_and_nearest_ancestor() {
        let yaml = "a: 1\nb:\n  c: x\n  d:\n    - 5\n    - e: 7\n";
        let loc = Locations::of(yaml);
        assert_eq!(loc.find("a"), Some((1, 1)));
        assert_eq!(loc.find("b.c"), Some((3, 3)));
        assert_eq!(loc.find("b.d[0]"), Some((5, 7)));
        assert_eq!(loc.find("b.d[1].e"), Some((6, 7)));
        // Not written: falls back to the nearest written ancestor.
        assert_eq!(loc.find("b.missing"), Some((2, 1)));
        assert_eq!(loc.find("zzz"), None);
    }

    #[test]
    fn flow_style_and_broken_documents() {
        let loc = Locations::of("x: {y: [1, 2]}\n");
        assert_eq!(loc.find("x.y[1]"), Some((1, 12)));
        // What parsed before the error is still located.
        let broken = Locations::of("a: [1, 2\nb: 3\n");
        assert_eq!(broken.find("a"), Some((1, 1)));
        assert_eq!(broken.find("b"), None);
    }
}
