//! A message as the body parser reads it, in the same pass as its envelope: its top-level fields
//! in arrival order, each value as its raw JSON text (nested values are never parsed into
//! trees), and its size as compact JSON.

use std::borrow::Cow;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One message's top-level fields, each kept as its raw JSON text (nested values are never
/// parsed into trees: they are copied into `metadata` as they came). Sorted by name, a name
/// given twice keeps its last value (as PostgreSQL's `jsonb` does); a message has a dozen
/// fields, so a sorted vector beats a tree map (one allocation, binary search).
#[derive(Debug, Default)]
pub(super) struct Fields<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'a> Fields<'a> {
    fn position(&self, k: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(key, _)| key.0.as_ref().cmp(k))
    }

    pub(super) fn get(&self, k: &str) -> Option<&'a RawValue> {
        self.position(k).ok().map(|i| self.0[i].1)
    }

    pub(super) fn remove(&mut self, k: &str) -> Option<&'a RawValue> {
        self.position(k).ok().map(|i| self.0.remove(i).1)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + '_ {
        self.0.iter().map(|(k, v)| (k.0.as_ref(), *v))
    }
}

/// A field name, borrowed from the body unless it holds an escape.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key<'a>(pub(super) Cow<'a, str>);

impl Key<'_> {
    /// The name's length as a JSON string (quoted, and escaped again if it held an escape).
    fn json_len(&self) -> usize {
        match &self.0 {
            Cow::Borrowed(k) => k.len() + 2,
            Cow::Owned(k) => serde_json::to_string(k).map_or(k.len() + 2, |s| s.len()),
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

/// One message as read from the body, in the same pass as its envelope: its top-level fields in
/// the order they came, each value as its raw JSON text; no fields when it is not an object.
#[derive(Debug)]
pub struct Message<'a> {
    fields: Option<Vec<(Key<'a>, &'a RawValue)>>,
    /// Its size as compact JSON, what the SDKs measure against their own 32 KB limit.
    pub bytes: usize,
}

impl<'a> Message<'a> {
    /// What any JSON value but an object reads as.
    fn not_object() -> Self {
        Message {
            fields: None,
            bytes: 0,
        }
    }

    /// A message from its raw text (a non-object, or text that is not JSON, gives no fields).
    pub fn from_raw(raw: &'a RawValue) -> Self {
        serde_json::from_str(raw.get()).unwrap_or(Message {
            fields: None,
            bytes: raw.get().len(),
        })
    }

    pub(super) fn object(&self) -> Result<&[(Key<'a>, &'a RawValue)], String> {
        self.fields
            .as_deref()
            .ok_or_else(|| "the message must be a JSON object".to_owned())
    }

    /// The fields in arrival order (none when not an object).
    pub(super) fn into_fields(self) -> Vec<(Key<'a>, &'a RawValue)> {
        self.fields.unwrap_or_default()
    }

    /// The fields sorted by name, a repeated name keeping its last value.
    pub(super) fn sorted(&self) -> Result<Fields<'a>, String> {
        let mut fields: Vec<(Key<'a>, &'a RawValue)> = self
            .object()?
            .iter()
            .map(|(k, v)| (Key(k.0.clone()), *v))
            .collect();
        // A stable sort keeps a repeated name's values in arrival order; the last wins.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = later.1;
            }
            same
        });
        Ok(Fields(fields))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Message<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MessageVisitor)
    }
}

/// An object's fields and size; any other value as no fields.
struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Message<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a message")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
        // `{}` and a comma between fields.
        let mut bytes = 1;
        while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
            bytes += k.json_len() + 1 + v.get().len() + 1;
            fields.push((k, v));
        }
        Ok(Message {
            fields: Some(fields),
            bytes: bytes.max(2),
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Message<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Message::not_object())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Message<'de>, E> {
        Ok(Message::not_object())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Message<'de>, E> {
        Ok(Message::not_object())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Message<'de>, E> {
        Ok(Message::not_object())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Message<'de>, E> {
        Ok(Message::not_object())
    }
    fn visit_str<E>(self, _: &str) -> Result<Message<'de>, E> {
        Ok(Message::not_object())
    }
    fn visit_unit<E>(self) -> Result<Message<'de>, E> {
        Ok(Message::not_object())
    }
}
