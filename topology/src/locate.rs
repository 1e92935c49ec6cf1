//! Maps field paths (`shards[1].url`) to the line and column where they stand.
//!
//! serde's YAML value tree carries no positions, so the document is read a
//! second time as a stream of marked events; the walk below mirrors the path
//! syntax used by validation, which lets every violation point at its line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        /// Whether the mapping's own position is known. Block mappings are
        /// marked where their first key stands, which is where a reader looks.
        placed: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Locator {
    stack: Vec<Frame>,
    found: HashMap<String, (usize, usize)>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Locator {
    /// Works out the path of the node that starts here, or records a mapping
    /// key and returns `None` (a key is not a node of its own).
    fn node_path(&mut self, ev: &Event, at: (usize, usize)) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key, placed }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    if let Event::Scalar(k, ..) = ev {
                        if !*placed {
                            self.found.entry(path.clone()).or_insert(at);
                            *placed = true;
                        }
                        let p = join(path, k);
                        self.found.entry(p).or_insert(at);
                        *key = Some(k.clone());
                    }
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Locator {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = (mark.line(), mark.col() + 1);
        match &ev {
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(p) = self.node_path(&ev, at) {
                    self.found.entry(p).or_insert(at);
                }
            }
            Event::MappingStart(..) => {
                if let Some(p) = self.node_path(&ev, at) {
                    self.stack.push(Frame::Map {
                        path: p,
                        key: None,
                        placed: false,
                    });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(p) = self.node_path(&ev, at) {
                    self.found.entry(p.clone()).or_insert(at);
                    self.stack.push(Frame::Seq { path: p, next: 0 });
                }
            }
            _ => {}
        }
    }
}

/// Positions of every key and sequence item in `text`. A document that does
/// not parse yields what was seen before the error; syntax errors themselves
/// are reported by the serde parse, which runs first.
pub fn locate_all(text: &str) -> HashMap<String, (usize, usize)> {
    let mut loc = Locator::default();
    let mut parser = Parser::new_from_str(text);
    // A parse error here only means fewer known positions; the serde parse
    // has already accepted the document, so this cannot hide a problem.
    if parser.load(&mut loc, false).is_err() {
        return loc.found;
    }
    loc.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let text = "cluster: a\nshards:\n  - name: x\n    url: mysql://u@h:1\n  - name: y\n    databases: [d1, d2]\n";
        let f = locate_all(text);
        assert_eq!(f.get("cluster"), Some(&(1, 1)));
        assert_eq!(f.get("shards"), Some(&(2, 1)));
        assert_eq!(f.get("shards[0]"), Some(&(3, 5)));
        assert_eq!(f.get("shards[0].url"), Some(&(4, 5)));
        assert_eq!(f.get("shards[1].name"), Some(&(5, 5)));
        assert_eq!(f.get("shards[1].databases[1]"), Some(&(6, 21)));
    }
}
