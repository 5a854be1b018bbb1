//! One-pass YAML reading with the rules of the two-pass one: a deserializer wrapper that
//! makes serde_norway's streaming deserializer accept exactly what its `Value` path
//! accepts.
//!
//! Streaming straight from the text into the typed config skips building a
//! `serde_yaml::Value` tree (half the parse time of a 10,000-route file), but differs
//! from the `Value` path in two ways this wrapper removes:
//! - a string field takes any scalar (`name: 123`, `host: true`), where the `Value`
//!   path refuses a number, a bool or a null for a string;
//! - a duplicate mapping key is silently last-wins in a map field (two upstreams `app`),
//!   where the `Value` path refuses the document ("duplicate entry").
//!
//! Merge keys (`<<`) and tags (`!x`) are not handled here: the caller reads a text that
//! has either with the `Value` path. Errors are not made here either: on any error the
//! caller reads the text again the two-pass way, which words and locates it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};

/// A mapping key as the `Value` path compares them (a string `"1"` and a number `1` are
/// different keys; `1` and `0x1` are the same).
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key<'de> {
    /// Borrowed from the text unless the scalar had escapes or folds.
    Str(Cow<'de, str>),
    Unsigned(u128),
    Signed(i128),
    Float(u64),
    Bool(bool),
    Null,
}

type KeySlot<'de> = RefCell<Option<Key<'de>>>;

/// Wraps a deserializer (see the module doc). `key`: where a mapping key's scalar is
/// noted, so that its map can refuse a duplicate.
pub struct Strict<'k, 'de, D> {
    de: D,
    key: Option<&'k KeySlot<'de>>,
}

impl<'de, D> Strict<'_, 'de, D> {
    /// Wraps the document's deserializer.
    pub fn new(de: D) -> Self {
        Self { de, key: None }
    }
}

impl<'k, 'de, D> Strict<'k, 'de, D> {
    fn visitor<V>(&self, inner: V, strings_only: bool) -> Wrap<'k, 'de, V> {
        Wrap {
            inner,
            strings_only,
            key: self.key,
        }
    }
}

/// A visitor that passes on what it visits, wraps what it nests into, notes a key's
/// scalar, and (for a string) refuses every scalar that is not a string.
struct Wrap<'k, 'de, V> {
    inner: V,
    strings_only: bool,
    key: Option<&'k KeySlot<'de>>,
}

impl<'de, V> Wrap<'_, 'de, V> {
    /// Notes a key's scalar (only a key's: a value's is never copied).
    fn note(&self, k: impl FnOnce() -> Key<'de>) {
        if let Some(slot) = self.key {
            *slot.borrow_mut() = Some(k());
        }
    }
}

/// A non-string scalar: refused where a string is read, passed on otherwise.
macro_rules! scalar {
    ($($method:ident($ty:ty) => $key:expr, $unexpected:expr;)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.note(|| $key(v));
            if self.strings_only {
                return Err(E::invalid_type($unexpected(v), &self.inner));
            }
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    scalar! {
        visit_bool(bool) => Key::Bool, Unexpected::Bool;
        visit_i64(i64) => |v| Key::Signed(i128::from(v)), Unexpected::Signed;
        visit_u64(u64) => |v| Key::Unsigned(u128::from(v)), Unexpected::Unsigned;
        visit_i128(i128) => Key::Signed, |_| Unexpected::Other("integer");
        visit_u128(u128) => Key::Unsigned, |_| Unexpected::Other("integer");
        visit_f64(f64) => |v: f64| Key::Float(v.to_bits()), Unexpected::Float;
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.note(|| Key::Null);
        if self.strings_only {
            return Err(E::invalid_type(Unexpected::Unit, &self.inner));
        }
        self.inner.visit_unit()
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.note(|| Key::Null);
        if self.strings_only {
            return Err(E::invalid_type(Unexpected::Option, &self.inner));
        }
        self.inner.visit_none()
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.note(|| Key::Str(Cow::Owned(v.to_owned())));
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.note(|| Key::Str(Cow::Borrowed(v)));
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.note(|| Key::Str(Cow::Owned(v.clone())));
        self.inner.visit_string(v)
    }

    fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        self.inner.visit_some(Strict { de: d, key: None })
    }

    fn visit_newtype_struct<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
        self.inner.visit_newtype_struct(Strict { de: d, key: None })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(StrictSeq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(StrictMap {
            map,
            seen: Seen::default(),
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(StrictEnum(data))
    }
}

/// A value of a sequence, a map, an option, an enum: read strictly, no key noted.
struct StrictSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for StrictSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(Strict { de: d, key: None })
    }
}

/// A mapping key: read strictly, its scalar noted in `slot`.
struct KeySeed<'k, 'de, S> {
    seed: S,
    slot: &'k KeySlot<'de>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, 'de, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.seed.deserialize(Strict {
            de: d,
            key: Some(self.slot),
        })
    }
}

struct StrictSeq<A>(A);

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for StrictSeq<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(StrictSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// A mapping that refuses a key it has seen (the `Value` path's "duplicate entry").
struct StrictMap<'de, A> {
    map: A,
    seen: Seen<'de>,
}

/// The keys of one mapping so far: a short list (most mappings have a few keys), a set
/// beyond 16.
#[derive(Default)]
struct Seen<'de> {
    list: Vec<Key<'de>>,
    set: HashSet<Key<'de>>,
}

impl<'de> Seen<'de> {
    /// Notes `k`; whether it is new.
    fn insert(&mut self, k: Key<'de>) -> bool {
        if self.set.is_empty() && self.list.len() < 16 {
            if self.list.contains(&k) {
                return false;
            }
            self.list.push(k);
            return true;
        }
        self.set.extend(self.list.drain(..));
        self.set.insert(k)
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for StrictMap<'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let slot = RefCell::new(None);
        let key = self.map.next_key_seed(KeySeed { seed, slot: &slot })?;
        if let Some(k) = slot.into_inner() {
            if !self.seen.insert(k) {
                return Err(de::Error::custom("duplicate entry"));
            }
        }
        Ok(key)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(StrictSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

struct StrictEnum<A>(A);

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for StrictEnum<A> {
    type Error = A::Error;
    type Variant = StrictVariant<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(StrictSeed(seed))?;
        Ok((value, StrictVariant(variant)))
    }
}

struct StrictVariant<A>(A);

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for StrictVariant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(StrictSeed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, wrap(visitor))
    }
}

fn wrap<'k, 'de, V>(inner: V) -> Wrap<'k, 'de, V> {
    Wrap {
        inner,
        strings_only: false,
        key: None,
    }
}

/// Every `deserialize_*` that reads what it names: passed on with a wrapped visitor.
macro_rules! pass {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.visitor(visitor, false);
            self.de.$method($($arg,)* visitor)
        }
    )*};
}

/// Every `deserialize_*` that reads a string: read as whatever the scalar is, so that a
/// number, a bool or a null is refused as the `Value` path refuses it.
macro_rules! string {
    ($($method:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.visitor(visitor, true);
            self.de.deserialize_any(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<'_, 'de, D> {
    type Error = D::Error;

    pass! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    string! {
        deserialize_char;
        deserialize_str;
        deserialize_string;
        deserialize_identifier;
    }

    /// Walked, not skipped: a duplicate key in an ignored value is refused too.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.de.deserialize_any(visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Deserialize;

    use super::*;

    fn read<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
        T::deserialize(Strict::new(serde_yaml::Deserializer::from_str(text)))
            .map_err(|e| e.to_string())
    }

    fn by_value<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
        serde_yaml::from_str::<serde_yaml::Value>(text)
            .and_then(T::deserialize)
            .map_err(|e| e.to_string())
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        upstreams: BTreeMap<String, u32>,
        #[serde(default)]
        any: HashMap<serde_yaml::Value, u32>,
    }

    #[test]
    fn accepts_and_refuses_exactly_what_the_value_path_does() {
        let accepted = [
            "name: a",
            "name: \"123\"\nport: 8080",
            "name: a\ntags: [x, 'y', \"z\"]",
            "name: a\nupstreams: { a: 1, b: 2 }",
            "name: a\ntags:",
            "name: a\nport: ~",
            "name: &n a\ntags: [*n]",
            "name: a\nany: { \"1\": 1, 1: 2, true: 3, ~: 4 }",
        ];
        let refused = [
            "name: 123",
            "name: true",
            "name: ~",
            "name: 1.5",
            "name: a\ntags: [1]",
            "name: a\nport: \"8080\"",
            "name: a\nport: -1",
            "name: a\nupstreams: { a: 1, a: 2 }",
            "name: a\nupstreams: { \"a\": 1, a: 2 }",
            "name: a\nupstreams: { 1: 1 }",
            "name: a\nname: b",
            "name: a\nother: 1",
            "name: a\nany: { 1: 1, 1: 2 }",
            "name: a\nany: { 1: 1, 0x1: 2 }",
            "name: a\nany: { ~: 1, null: 2 }",
        ];
        // A mapping beyond 16 keys (noted in a set, not a list).
        let many: Vec<String> = (0..20).map(|i| format!("k{i}: {i}")).collect();
        let many = format!("name: a\nupstreams: {{ {} }}", many.join(", "));
        let many_dup = many.replace(" }", ", k3: 9 }");
        let accepted = [&accepted[..], &[many.as_str()]].concat();
        let refused = [&refused[..], &[many_dup.as_str()]].concat();
        for (texts, ok) in [(&accepted, true), (&refused, false)] {
            for text in texts {
                let (strict, value) = (read::<Doc>(text), by_value::<Doc>(text));
                assert_eq!(value.is_ok(), ok, "{text:?}: the value path {value:?}");
                assert_eq!(
                    strict.is_ok(),
                    ok,
                    "{text:?}: {strict:?} (value path {value:?})"
                );
                if let (Ok(a), Ok(b)) = (strict, value) {
                    assert_eq!(a, b, "{text:?}");
                }
            }
        }
        // Without the wrapper, the streaming reader takes a number for a string and keeps
        // the last of two equal keys: what the wrapper is for.
        let loose = |t: &str| Doc::deserialize(serde_yaml::Deserializer::from_str(t)).is_ok();
        assert!(loose("name: 123"));
        assert!(loose("name: a\nupstreams: { a: 1, a: 2 }"));
    }
}
