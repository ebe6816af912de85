//! Typed tensors, and their conversion to and from ONNX Runtime values.
//!
//! The datatypes (named as KServe v2 names them) map one to one onto ONNX
//! element types. How a tensor is spelled on the wire, in JSON or binary,
//! is the protocol's business (`server::kserve::codec`).

use std::fmt;

use ort::value::IntoTensorElementType;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

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
        pub(crate) enum DataType {
            $($variant,)*
            /// UTF-8 strings (ONNX `string`).
            Bytes,
        }

        impl DataType {
            /// Every datatype, in the order the protocol lists them.
            pub(crate) const ALL: &[DataType] = &[$(DataType::$variant,)* DataType::Bytes];

            /// The protocol's name, e.g. `FP32`.
            pub(crate) fn name(self) -> &'static str {
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
        pub(crate) enum TensorData {
            $($variant(Vec<$ty>),)*
            Bytes(Vec<String>),
        }

        impl TensorData {
            pub(crate) fn datatype(&self) -> DataType {
                match self {
                    $(TensorData::$variant(_) => DataType::$variant,)*
                    TensorData::Bytes(_) => DataType::Bytes,
                }
            }

            pub(crate) fn len(&self) -> usize {
                match self {
                    $(TensorData::$variant(v) => v.len(),)*
                    TensorData::Bytes(v) => v.len(),
                }
            }

            /// `len` default elements (zeros, `false`, empty strings): warm-up input.
            pub(crate) fn zeros(datatype: DataType, len: usize) -> Self {
                match datatype {
                    $(DataType::$variant => TensorData::$variant(vec![<$ty>::default(); len]),)*
                    DataType::Bytes => TensorData::Bytes(vec![String::new(); len]),
                }
            }

            /// Wraps the elements as an ONNX Runtime tensor of `shape`.
            pub(crate) fn into_value(self, shape: Vec<i64>) -> ort::Result<DynValue> {
                Ok(match self {
                    $(TensorData::$variant(v) => Tensor::from_array((shape, v))?.into_dyn(),)*
                    TensorData::Bytes(v) => Tensor::from_string_array((shape, v.as_slice()))?.into_dyn(),
                })
            }

            /// Copies an ONNX Runtime tensor out, with its shape.
            pub(crate) fn from_value(value: &DynValue) -> Result<(Vec<i64>, Self), String> {
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

    };
}

with_numeric_types!(define_types);

impl DataType {
    /// Looks a datatype up by its protocol name (`FP32`, `BYTES`, ...).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// The datatype, shape (-1 where dynamic) and dimension names of a model
    /// input or output, if it is a tensor the API can carry.
    pub(crate) fn of_value_type(value_type: &ValueType) -> Option<(Self, Vec<i64>, Vec<String>)> {
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
}
