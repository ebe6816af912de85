//! How tensor elements are spelled on the wire: JSON scalars (with the
//! strings JSON needs for non-finite floats) and the little-endian binary
//! tensor data extension.
//!
//! JSON `data` may be flat or nested; it is decoded straight into typed
//! vectors (no intermediate JSON tree), because large tensors in JSON are
//! already slow enough.

use std::fmt;

use half::{bf16, f16};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};

use crate::engine::tensor::with_numeric_types;
use crate::engine::{DataType, TensorData};

/// A JSON scalar that can become one tensor element; each conversion is
/// `None` unless the element type takes that kind of scalar.
trait JsonScalar: Sized {
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    /// A JSON string: a `BYTES` element, or one of the non-finite floats
    /// JSON cannot spell as numbers (`"NaN"`, `"Infinity"`, `"-Infinity"`).
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl JsonScalar for String {
    fn from_str(v: &str) -> Option<Self> {
        Some(v.to_owned())
    }
}

/// A numeric element type: fixed-size little-endian in binary data, and
/// written back to JSON.
trait Element: JsonScalar + Copy {
    /// Bytes per element in the binary tensor format.
    const SIZE: usize;
    /// Reads one element from exactly `SIZE` little-endian bytes.
    fn from_le(bytes: &[u8]) -> Option<Self>;
    fn write_le(self, out: &mut Vec<u8>);
    fn serialize_json<S: Serializer>(self, serializer: S) -> Result<S::Ok, S::Error>;
}

/// The binary format's half of [`Element`] for a number: its
/// little-endian bytes.
macro_rules! little_endian {
    ($ty:ty) => {
        const SIZE: usize = size_of::<$ty>();
        fn from_le(bytes: &[u8]) -> Option<Self> {
            Some(Self::from_le_bytes(bytes.try_into().ok()?))
        }
        fn write_le(self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
    };
}

macro_rules! integer_element {
    ($($ty:ty => $ser:ident),* $(,)?) => {$(
        impl JsonScalar for $ty {
            fn from_u64(v: u64) -> Option<Self> {
                Self::try_from(v).ok()
            }
            fn from_i64(v: i64) -> Option<Self> {
                Self::try_from(v).ok()
            }
        }
        impl Element for $ty {
            little_endian!($ty);
            fn serialize_json<S: Serializer>(self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.$ser(self.into())
            }
        }
    )*};
}

integer_element!(
    u8 => serialize_u64, u16 => serialize_u64, u32 => serialize_u64, u64 => serialize_u64,
    i8 => serialize_i64, i16 => serialize_i64, i32 => serialize_i64, i64 => serialize_i64,
);

/// Parses the strings JSON uses for non-finite floats.
fn special_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Writes a float as a JSON number, or as a string when it is not finite.
fn serialize_float<S: Serializer>(
    value: f64,
    serializer: S,
    finite: impl FnOnce(S) -> Result<S::Ok, S::Error>,
) -> Result<S::Ok, S::Error> {
    if value.is_nan() {
        serializer.serialize_str("NaN")
    } else if value.is_infinite() {
        serializer.serialize_str(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        finite(serializer)
    }
}

macro_rules! float_element {
    ($($ty:ty: from $from:expr, to $to:expr, json $json:expr;)*) => {$(
        impl JsonScalar for $ty {
            fn from_u64(v: u64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_i64(v: i64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_f64(v: f64) -> Option<Self> {
                Some($from(v))
            }
            fn from_str(text: &str) -> Option<Self> {
                special_float(text).map($from)
            }
        }
        impl Element for $ty {
            little_endian!($ty);
            fn serialize_json<S: Serializer>(self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_float($to(self), serializer, |s| $json(s, self))
            }
        }
    )*};
}

float_element! {
    f16: from f16::from_f64, to f64::from, json |s: S, v: f16| s.serialize_f32(v.to_f32());
    bf16: from bf16::from_f64, to f64::from, json |s: S, v: bf16| s.serialize_f32(v.to_f32());
    f32: from |v: f64| v as f32, to f64::from, json |s: S, v: f32| s.serialize_f32(v);
    f64: from |v: f64| v, to |v: f64| v, json |s: S, v: f64| s.serialize_f64(v);
}

impl JsonScalar for bool {
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl Element for bool {
    const SIZE: usize = 1;
    fn from_le(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn serialize_json<S: Serializer>(self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(self)
    }
}

/// A tensor's elements as a JSON array (`data` of a response output).
#[derive(Debug)]
pub(super) struct Json<'a>(pub &'a TensorData);

macro_rules! per_datatype {
    ($($variant:ident: $ty:ty = $name:literal,)*) => {
        /// Appends the binary tensor encoding: raw little-endian elements,
        /// or for `BYTES` a 4-byte little-endian length before each string.
        pub(super) fn write_binary(data: &TensorData, out: &mut Vec<u8>) {
            match data {
                $(TensorData::$variant(v) => {
                    out.reserve(v.len() * <$ty as Element>::SIZE);
                    v.iter().for_each(|x| x.write_le(out));
                })*
                TensorData::Bytes(v) => {
                    for s in v {
                        let len = u32::try_from(s.len()).expect("string tensor element over 4 GiB");
                        out.extend_from_slice(&len.to_le_bytes());
                        out.extend_from_slice(s.as_bytes());
                    }
                }
            }
        }

        /// The length of [`write_binary`]'s encoding,
        /// known before writing it.
        pub(super) fn binary_len(data: &TensorData) -> usize {
            match data {
                $(TensorData::$variant(v) => v.len().saturating_mul(<$ty as Element>::SIZE),)*
                TensorData::Bytes(v) => v.iter().fold(0usize, |n, s| n.saturating_add(4).saturating_add(s.len())),
            }
        }

        /// Decodes the binary tensor encoding of `datatype`.
        pub(super) fn read_binary(datatype: DataType, bytes: &[u8]) -> Result<TensorData, String> {
            match datatype {
                $(DataType::$variant => read_fixed::<$ty>(bytes).map(TensorData::$variant),)*
                DataType::Bytes => read_strings(bytes).map(TensorData::Bytes),
            }
        }

        impl Serialize for Json<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                /// Adapter so a seq can hold `Element`s.
                struct Scalar<T>(T);
                impl<T: Element> Serialize for Scalar<T> {
                    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                        self.0.serialize_json(serializer)
                    }
                }
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                match self.0 {
                    $(TensorData::$variant(v) => {
                        for x in v {
                            seq.serialize_element(&Scalar(*x))?;
                        }
                    })*
                    TensorData::Bytes(v) => {
                        for s in v {
                            seq.serialize_element(s)?;
                        }
                    }
                }
                seq.end()
            }
        }
    };
}

with_numeric_types!(per_datatype);

fn read_fixed<T: Element>(bytes: &[u8]) -> Result<Vec<T>, String> {
    if !bytes.len().is_multiple_of(T::SIZE) {
        return Err(format!(
            "{} bytes is not a whole number of {}-byte elements",
            bytes.len(),
            T::SIZE
        ));
    }
    bytes
        .chunks_exact(T::SIZE)
        .enumerate()
        .map(|(index, chunk)| {
            T::from_le(chunk).ok_or_else(|| format!("element {index}: invalid value {chunk:02x?}"))
        })
        .collect()
}

fn read_strings(mut bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let index = out.len();
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(format!("element {index}: truncated 4-byte length prefix"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!(
                "element {index}: length prefix says {len} bytes, only {} remain",
                rest.len()
            ));
        }
        let (text, rest) = rest.split_at(len);
        let text = std::str::from_utf8(text)
            .map_err(|e| format!("element {index}: not valid UTF-8 ({e})"))?;
        out.push(text.to_owned());
        bytes = rest;
    }
    Ok(out)
}

pub(super) fn decode_json_data(
    datatype: DataType,
    json: &str,
    count: usize,
) -> Result<TensorData, String> {
    macro_rules! decode {
        ($($variant:ident: $ty:ty = $name:literal,)*) => {
            match datatype {
                $(DataType::$variant => flatten::<$ty>(json, count).map(TensorData::$variant),)*
                DataType::Bytes => flatten::<String>(json, count).map(TensorData::Bytes),
            }
        };
    }
    with_numeric_types!(decode)
}

/// Parses flat or nested JSON arrays of scalars into one row-major vector.
fn flatten<T: JsonScalar>(json: &str, count: usize) -> Result<Vec<T>, String> {
    // Cap the up-front allocation: `count` comes from the client's shape.
    let mut out = Vec::with_capacity(count.min(1 << 20));
    let mut de = serde_json::Deserializer::from_str(json);
    Flatten(&mut out).deserialize(&mut de).map_err(|e| {
        // serde_json appends a position within `data`, not within the
        // request, which would only mislead; the element index says where.
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        text.strip_suffix(&suffix)
            .map(str::to_owned)
            .unwrap_or(text)
    })?;
    Ok(out)
}

struct Flatten<'a, T>(&'a mut Vec<T>);

impl<T: JsonScalar> Flatten<'_, T> {
    fn push<E: serde::de::Error>(
        self,
        value: Option<T>,
        shown: impl fmt::Display,
    ) -> Result<(), E> {
        match value {
            Some(value) => {
                self.0.push(value);
                Ok(())
            }
            None => Err(E::custom(format_args!(
                "element {}: {shown} is not a valid value of this datatype",
                self.0.len()
            ))),
        }
    }
}

impl<'de, T: JsonScalar> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: JsonScalar> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of scalars, possibly nested")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), v)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), v)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v), format_args!("{v:?}"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(format_args!(
            "element {}: null is not a value",
            self.0.len()
        )))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(A::Error::custom(format_args!(
            "element {}: an object is not a value",
            self.0.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;

    #[test]
    fn binary_round_trip_keeps_every_bit() {
        let cases = [
            TensorData::Bool(vec![true, false]),
            TensorData::Uint64(vec![u64::MAX, 0]),
            TensorData::Int8(vec![i8::MIN, -1, 127]),
            TensorData::Fp16(vec![f16::from_f32(1.5), f16::NEG_INFINITY]),
            TensorData::Bf16(vec![bf16::from_f32(-2.0), bf16::MAX]),
            TensorData::Fp64(vec![std::f64::consts::PI, -0.0]),
            TensorData::Bytes(vec!["".into(), "héllo".into()]),
        ];
        for data in cases {
            let mut bytes = Vec::new();
            write_binary(&data, &mut bytes);
            let back = read_binary(data.datatype(), &bytes).expect("decodes");
            assert_eq!(back, data);
        }
    }

    #[test]
    fn binary_decoding_rejects_malformed_input() {
        let err = read_binary(DataType::Fp32, &[0; 6]).expect_err("6 bytes");
        assert_eq!(err, "6 bytes is not a whole number of 4-byte elements");
        let err = read_binary(DataType::Bool, &[0, 2]).expect_err("2 is no bool");
        assert_eq!(err, "element 1: invalid value [02]");
        let err = read_binary(DataType::Bytes, &[5, 0, 0, 0, b'a']).expect_err("short");
        assert_eq!(err, "element 0: length prefix says 5 bytes, only 1 remain");
        let err = read_binary(DataType::Bytes, &[1, 0, 0, 0, 0xff]).expect_err("utf8");
        assert!(err.starts_with("element 0: not valid UTF-8"), "{err}");
    }

    #[test]
    fn json_output_uses_shortest_float_and_names_non_finite_values() {
        let data = TensorData::Fp32(vec![1.1, f32::NAN, f32::NEG_INFINITY]);
        let json = serde_json::to_string(&Json(&data)).expect("serializes");
        assert_eq!(json, r#"[1.1,"NaN","-Infinity"]"#);
        let data = TensorData::Uint64(vec![u64::MAX]);
        assert_eq!(
            serde_json::to_string(&Json(&data)).expect("serializes"),
            "[18446744073709551615]"
        );
    }

    #[test]
    fn integer_conversion_checks_range() {
        assert_eq!(u8::from_u64(255), Some(255));
        assert_eq!(u8::from_u64(256), None);
        assert_eq!(u8::from_i64(-1), None);
        assert_eq!(i64::from_u64(u64::MAX), None);
        assert_eq!(i32::from_f64(1.0), None, "floats are not integers");
        assert_eq!(f32::from_str("Infinity"), Some(f32::INFINITY));
        assert_eq!(bool::from_u64(1), None, "BOOL takes true and false only");
    }
}
