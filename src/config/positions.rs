//! An index from field paths (`routes[3].upstream`) to line:column in the YAML source,
//! so that semantic errors found after deserialization can still point at the file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path -> (1-based line, 1-based column) of the node's value.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Indexes `source`; returns an empty index when the YAML does not parse (the
    /// deserializer reports that error with its own location).
    pub fn index(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self { map: builder.map }
    }

    /// The location of `path`, or of its closest indexed ancestor.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.map.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: HashMap<String, (usize, usize)>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// Path of a node that starts now, or `None` when the node is a mapping key.
    fn node_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    let k = scalar.unwrap_or("?").to_string();
                    *key = Some(k);
                    None
                }
            },
        }
    }

    fn record(&mut self, path: &str, mark: Marker) {
        // yaml-rust2 markers: line is 1-based, col is 0-based.
        self.map
            .entry(path.to_string())
            .or_insert((mark.line(), mark.col() + 1));
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => match self.node_path(Some(&value)) {
                Some(p) => self.record(&p, mark),
                None => {
                    // A mapping key: errors about the field point at its key.
                    if let Some(Frame::Map { path, .. }) = self.stack.last() {
                        let p = join(path, &value);
                        self.record(&p, mark);
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(p) = self.node_path(None) {
                    self.record(&p, mark);
                }
            }
            Event::MappingStart(..) => {
                let p = self.node_path(None).unwrap_or_default();
                self.record(&p, mark);
                self.stack.push(Frame::Map { path: p, key: None });
            }
            Event::SequenceStart(..) => {
                let p = self.node_path(None).unwrap_or_default();
                self.record(&p, mark);
                self.stack.push(Frame::Seq { path: p, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_paths() {
        let src =
            "listeners:\n  - name: a\n    address: x\nroutes:\n  - name: r\n    upstream: nope\n";
        let p = Positions::index(src);
        assert_eq!(p.locate("routes[0].upstream"), Some((6, 5)));
        assert_eq!(p.locate("listeners[0].address"), Some((3, 5)));
        // an unknown child falls back to its parent
        assert_eq!(p.locate("routes[0].upstream.deeper"), Some((6, 5)));
    }
}
