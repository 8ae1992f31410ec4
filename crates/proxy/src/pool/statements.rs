//! Named prepared statements under transaction pooling. A client's statement name is its
//! own; on the servers every statement is stored under a name derived from its text and
//! parameter types, so two clients preparing the same query share one server statement and
//! a client can use its statement on whichever server it gets: the proxy prepares it there
//! first when needed. When PostgreSQL has invalidated a statement for good (a schema change
//! altered its result type: "cached plan must not change result type"), the pool moves that
//! text to a new generation, so a client that prepares it again gets a fresh statement on
//! every server instead of the broken one.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::classify::Effects;

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Prepared {
    /// `berth_<hash>` of the text and types: the same for every generation.
    pub base: Arc<str>,
    /// `base`, with `_<generation>` after the first.
    pub server_name: Arc<str>,
    /// The complete Parse message under `server_name`, ready to send to any server.
    pub parse: Bytes,
    pub effects: Effects,
}

impl Prepared {
    pub fn new(query: &str, param_types: &[u32], effects: Effects) -> Self {
        Self::of_generation(query, param_types, effects, |_| 0)
    }

    /// The statement under the generation `generation` gives its base name.
    pub fn of_generation(
        query: &str,
        param_types: &[u32],
        effects: Effects,
        generation: impl FnOnce(&str) -> u64,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(query.as_bytes());
        for t in param_types {
            h.update(t.to_be_bytes());
        }
        let digest = h.finalize();
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let base: Arc<str> = Arc::from(format!("berth_{hex}"));
        let server_name = match generation(&base) {
            0 => Arc::clone(&base),
            g => Arc::from(format!("{base}_{g}")),
        };
        let mut body = BytesMut::new();
        body.put_slice(server_name.as_bytes());
        body.put_u8(0);
        body.put_slice(query.as_bytes());
        body.put_u8(0);
        body.put_u16(param_types.len() as u16);
        for t in param_types {
            body.put_u32(*t);
        }
        let mut parse = BytesMut::with_capacity(body.len() + 5);
        parse.put_u8(b'P');
        parse.put_i32(body.len() as i32 + 4);
        parse.put_slice(&body);
        Prepared { base, server_name, parse: parse.freeze(), effects }
    }
}

/// A client's statements by the names it gave them.
#[derive(Debug, Default, Clone)]
pub struct ClientStatements {
    by_name: HashMap<String, Arc<Prepared>>,
}

impl ClientStatements {
    pub fn get(&self, name: &str) -> Option<&Arc<Prepared>> {
        self.by_name.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn insert(&mut self, name: String, p: Arc<Prepared>) {
        self.by_name.insert(name, p);
    }

    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_and_types_share_a_name() {
        let a = Prepared::new("select $1", &[23], Effects::default());
        let b = Prepared::new("select $1", &[23], Effects::default());
        let c = Prepared::new("select $1", &[25], Effects::default());
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        let next = Prepared::of_generation("select $1", &[23], Effects::default(), |_| 2);
        assert_eq!((next.base.clone(), &*next.server_name), (a.base.clone(), &*format!("{}_2", a.base)));
        let frame = wire::parse_frame(&mut BytesMut::from(&a.parse[..]), 1 << 20).unwrap().unwrap();
        let wire::frontend::FrontendMessage::Parse { name, query, param_types } =
            wire::frontend::FrontendMessage::decode(&frame).unwrap()
        else {
            panic!("not a Parse")
        };
        assert_eq!((name.as_str(), query.as_str(), param_types), (&*a.server_name, "select $1", vec![23]));
    }
}
