//! Typed tensors as the API sees them, and their conversion to and from
//! ONNX Runtime values.
//!
//! The KServe v2 datatypes map one to one onto ONNX element types; each
//! numeric type implements [`Element`], which says how to read it from JSON
//! scalars and little-endian bytes and how to write it back.

use std::fmt;

use half::{bf16, f16};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use ort::value::{IntoTensorElementType, PrimitiveTensorElementType};
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// A numeric element type the API and ONNX Runtime share.
pub trait Element:
    PrimitiveTensorElementType + Copy + Default + fmt::Debug + Send + Sync + 'static
{
    /// Bytes per element in the binary tensor format.
    const SIZE: usize;
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
    /// Non-finite floats, which JSON cannot spell: `"NaN"`, `"Infinity"`, `"-Infinity"`.
    fn from_special(_: &str) -> Option<Self> {
        None
    }
    /// Reads one element from exactly `SIZE` little-endian bytes.
    fn from_le(bytes: &[u8]) -> Option<Self>;
    fn write_le(self, out: &mut Vec<u8>);
    fn serialize_json<S: Serializer>(self, serializer: S) -> Result<S::Ok, S::Error>;
}

macro_rules! integer_element {
    ($($ty:ty => $ser:ident),* $(,)?) => {$(
        impl Element for $ty {
            const SIZE: usize = size_of::<$ty>();
            fn from_u64(v: u64) -> Option<Self> {
                Self::try_from(v).ok()
            }
            fn from_i64(v: i64) -> Option<Self> {
                Self::try_from(v).ok()
            }
            fn from_le(bytes: &[u8]) -> Option<Self> {
                Some(Self::from_le_bytes(bytes.try_into().ok()?))
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
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
        impl Element for $ty {
            const SIZE: usize = size_of::<$ty>();
            fn from_u64(v: u64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_i64(v: i64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_f64(v: f64) -> Option<Self> {
                Some($from(v))
            }
            fn from_special(text: &str) -> Option<Self> {
                special_float(text).map($from)
            }
            fn from_le(bytes: &[u8]) -> Option<Self> {
                Some(Self::from_le_bytes(bytes.try_into().ok()?))
            }
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
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

impl Element for bool {
    const SIZE: usize = 1;
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
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

/// Calls `$m!` with every numeric variant and its Rust element type, so each
/// per-type `match` is written once.
macro_rules! with_numeric_types {
    ($m:ident) => {
        $m! {
            Bool: bool = "BOOL",
            Uint8: u8 = "UINT8",
            Uint16: u16 = "UINT16",
            Uint32: u32 = "UINT32",
            Uint64: u64 = "UINT64",
            Int8: i8 = "INT8",
            Int16: i16 = "INT16",
            Int32: i32 = "INT32",
            Int64: i64 = "INT64",
            Fp16: half::f16 = "FP16",
            Bf16: half::bf16 = "BF16",
            Fp32: f32 = "FP32",
            Fp64: f64 = "FP64",
        }
    };
}
pub(crate) use with_numeric_types;

macro_rules! define_types {
    ($($variant:ident: $ty:ty = $name:literal,)*) => {
        /// A KServe v2 tensor datatype.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum DataType {
            $($variant,)*
            /// UTF-8 strings (ONNX `string`).
            Bytes,
        }

        impl DataType {
            /// Every datatype, in the order the protocol lists them.
            pub const ALL: &[DataType] = &[$(DataType::$variant,)* DataType::Bytes];

            /// The protocol's name, e.g. `FP32`.
            pub fn name(self) -> &'static str {
                match self {
                    $(DataType::$variant => $name,)*
                    DataType::Bytes => "BYTES",
                }
            }

            fn from_ort(ty: TensorElementType) -> Option<Self> {
                match ty {
                    $(t if t == <$ty as IntoTensorElementType>::into_tensor_element_type() => Some(DataType::$variant),)*
                    TensorElementType::String => Some(DataType::Bytes),
                    _ => None,
                }
            }
        }

        /// The elements of one tensor, in row-major order.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TensorData {
            $($variant(Vec<$ty>),)*
            Bytes(Vec<String>),
        }

        impl TensorData {
            pub fn datatype(&self) -> DataType {
                match self {
                    $(TensorData::$variant(_) => DataType::$variant,)*
                    TensorData::Bytes(_) => DataType::Bytes,
                }
            }

            pub fn len(&self) -> usize {
                match self {
                    $(TensorData::$variant(v) => v.len(),)*
                    TensorData::Bytes(v) => v.len(),
                }
            }

            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// `len` default elements (zeros, `false`, empty strings): warm-up input.
            pub fn zeros(datatype: DataType, len: usize) -> Self {
                match datatype {
                    $(DataType::$variant => TensorData::$variant(vec![<$ty>::default(); len]),)*
                    DataType::Bytes => TensorData::Bytes(vec![String::new(); len]),
                }
            }

            /// Appends the binary tensor encoding: raw little-endian elements,
            /// or for `BYTES` a 4-byte little-endian length before each string.
            pub fn write_binary(&self, out: &mut Vec<u8>) {
                match self {
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

            /// The length of [`TensorData::write_binary`]'s encoding,
            /// known before writing it.
            pub fn binary_len(&self) -> usize {
                match self {
                    $(TensorData::$variant(v) => v.len().saturating_mul(<$ty as Element>::SIZE),)*
                    TensorData::Bytes(v) => v.iter().fold(0usize, |n, s| n.saturating_add(4).saturating_add(s.len())),
                }
            }

            /// Decodes the binary tensor encoding of `datatype`.
            pub fn read_binary(datatype: DataType, bytes: &[u8]) -> Result<Self, String> {
                match datatype {
                    $(DataType::$variant => read_fixed::<$ty>(bytes).map(TensorData::$variant),)*
                    DataType::Bytes => read_strings(bytes).map(TensorData::Bytes),
                }
            }

            /// Wraps the elements as an ONNX Runtime tensor of `shape`.
            pub fn into_value(self, shape: Vec<i64>) -> ort::Result<DynValue> {
                Ok(match self {
                    $(TensorData::$variant(v) => Tensor::from_array((shape, v))?.into_dyn(),)*
                    TensorData::Bytes(v) => Tensor::from_string_array((shape, v.as_slice()))?.into_dyn(),
                })
            }

            /// Copies an ONNX Runtime tensor out, with its shape.
            pub fn from_value(value: &DynValue) -> Result<(Vec<i64>, Self), String> {
                let ValueType::Tensor { ty, .. } = value.dtype() else {
                    return Err(format!("output is a {}, not a tensor", value.dtype()));
                };
                let datatype = DataType::from_ort(*ty)
                    .ok_or_else(|| format!("tensor element type {ty} has no KServe datatype"))?;
                let err = |e: ort::Error| e.to_string();
                Ok(match datatype {
                    $(DataType::$variant => {
                        let (shape, data) = value.try_extract_tensor::<$ty>().map_err(err)?;
                        (shape.to_vec(), TensorData::$variant(data.to_vec()))
                    })*
                    DataType::Bytes => {
                        let (shape, data) = value.try_extract_strings().map_err(err)?;
                        (shape.to_vec(), TensorData::Bytes(data))
                    }
                })
            }
        }

        impl Serialize for TensorData {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                /// Adapter so a seq can hold `Element`s.
                struct Json<T>(T);
                impl<T: Element> Serialize for Json<T> {
                    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                        self.0.serialize_json(serializer)
                    }
                }
                let mut seq = serializer.serialize_seq(Some(self.len()))?;
                match self {
                    $(TensorData::$variant(v) => {
                        for x in v {
                            seq.serialize_element(&Json(*x))?;
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

with_numeric_types!(define_types);

impl DataType {
    /// Looks a datatype up by its protocol name (`FP32`, `BYTES`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// The datatype, shape (-1 where dynamic) and dimension names of a model
    /// input or output, if it is a tensor the API can carry.
    pub fn of_value_type(value_type: &ValueType) -> Option<(Self, Vec<i64>, Vec<String>)> {
        match value_type {
            ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } => Some((
                Self::from_ort(*ty)?,
                shape.to_vec(),
                dimension_symbols.to_vec(),
            )),
            _ => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datatype_round_trips_through_its_name() {
        for &datatype in DataType::ALL {
            assert_eq!(DataType::from_name(datatype.name()), Some(datatype));
        }
        assert_eq!(DataType::from_name("fp32"), None);
        assert_eq!(DataType::ALL.len(), 14);
    }

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
            data.write_binary(&mut bytes);
            let back = TensorData::read_binary(data.datatype(), &bytes).expect("decodes");
            assert_eq!(back, data);
        }
    }

    #[test]
    fn binary_decoding_rejects_malformed_input() {
        let err = TensorData::read_binary(DataType::Fp32, &[0; 6]).expect_err("6 bytes");
        assert_eq!(err, "6 bytes is not a whole number of 4-byte elements");
        let err = TensorData::read_binary(DataType::Bool, &[0, 2]).expect_err("2 is no bool");
        assert_eq!(err, "element 1: invalid value [02]");
        let err = TensorData::read_binary(DataType::Bytes, &[5, 0, 0, 0, b'a']).expect_err("short");
        assert_eq!(err, "element 0: length prefix says 5 bytes, only 1 remain");
        let err = TensorData::read_binary(DataType::Bytes, &[1, 0, 0, 0, 0xff]).expect_err("utf8");
        assert!(err.starts_with("element 0: not valid UTF-8"), "{err}");
    }

    #[test]
    fn json_output_uses_shortest_float_and_names_non_finite_values() {
        let data = TensorData::Fp32(vec![1.1, f32::NAN, f32::NEG_INFINITY]);
        let json = serde_json::to_string(&data).expect("serializes");
        assert_eq!(json, r#"[1.1,"NaN","-Infinity"]"#);
        let data = TensorData::Uint64(vec![u64::MAX]);
        assert_eq!(
            serde_json::to_string(&data).expect("serializes"),
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
        assert_eq!(f32::from_special("Infinity"), Some(f32::INFINITY));
        assert_eq!(bool::from_u64(1), None, "BOOL takes true and false only");
    }
}
