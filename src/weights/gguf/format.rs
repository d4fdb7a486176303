//! The GGUF container as llama.cpp writes it (version 2 and 3, little-endian), parsed from the mapped
//! bytes with every length checked against the file: the metadata key/values and the tensor table
//! (name, ggml type id, shape, byte range). Tensor data is never read here.
//!
//! Own parser rather than candle's `gguf_file::Content`: candle refuses a whole file at the first tensor
//! type it does not know (IQ*, TQ*, MXFP4 …) without naming the tensor, and copies the token list
//! through its reader; here an unknown type is kept as its id so the loader can name tensor and type.

use std::collections::HashMap;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type as u64 (negative numbers are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v.into()),
            _ => None,
        }
    }

    /// Any integer type as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Row-major shape (GGUF lists dimensions innermost first; this is reversed: `[rows, cols]`).
    pub shape: Vec<usize>,
    /// The ggml type id as stored.
    pub type_id: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<(String, TensorInfo)>,
    /// Byte offset of the data section in the file.
    pub data_start: usize,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// More array elements than a file could hold is a corrupt count, not a reason to allocate.
const MAX_DIMS: u32 = 8;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count that must fit in what is left of the file at `min_size` bytes per element.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, String> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size.max(1) as u64) > left {
            return Err(format!(
                "{what} count {n} exceeds the file at byte {}",
                self.pos
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.count(1, "string length")?;
        let at = self.pos;
        let raw = self.take(n)?;
        // Vocabularies hold byte-level pieces that are not always valid UTF-8 (llama.cpp accepts them).
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) if n < 64 => Ok(String::from_utf8_lossy(raw).into_owned()),
            Err(e) => Err(format!("string at byte {at} is not UTF-8: {e}")),
        }
    }

    fn value(&mut self, type_id: u32, depth: u32) -> Result<Value, String> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested deeper than 2".into());
                }
                let elem = self.u32()?;
                let n = self.count(1, "array")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

/// Parses the header of a GGUF file (`bytes`: the whole file).
pub(crate) fn parse(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4)? != MAGIC {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} (supported: 2, 3)"));
    }
    // A tensor info is at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes.
    let n_tensors = r.count(24, "tensor")?;
    let n_kv = r.count(12, "metadata")?;
    let mut metadata = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = r.string()?;
        let type_id = r.u32()?;
        let value = r
            .value(type_id, 0)
            .map_err(|e| format!("metadata {key}: {e}"))?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor {name}: {n_dims} dimensions"));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64()?;
            shape.push(usize::try_from(d).map_err(|_| format!("tensor {name}: dimension {d}"))?);
        }
        shape.reverse();
        let type_id = r.u32()?;
        let offset = r.u64()?;
        tensors.push((
            name,
            TensorInfo {
                shape,
                type_id,
                offset,
            },
        ));
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => v
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two())
            .ok_or("general.alignment is not a power of two")? as usize,
    };
    let data_start = r.pos.div_ceil(alignment) * alignment;
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start,
    })
}

/// The name llama.cpp gives a ggml type id (for messages about types we do not hold).
pub fn type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("type {id}"),
    };
    name.to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a minimal GGUF file: metadata (string or u32 values) and tensors given as
    /// (name, row-major shape, type id, data).
    pub(crate) fn write(
        metadata: &[(&str, Value)],
        tensors: &[(&str, Vec<usize>, u32, Vec<u8>)],
    ) -> Vec<u8> {
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn put_value(out: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U32(x) => out.extend(x.to_le_bytes()),
                Value::F32(x) => out.extend(x.to_le_bytes()),
                Value::Bool(x) => out.push(u8::from(*x)),
                Value::String(s) => put_str(out, s),
                Value::Array(items) => {
                    out.extend(type_of(&items[0]).to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for i in items {
                        put_value(out, i);
                    }
                }
                Value::I32(x) => out.extend(x.to_le_bytes()),
                _ => unimplemented!("test writer"),
            }
        }
        fn type_of(v: &Value) -> u32 {
            match v {
                Value::U32(_) => 4,
                Value::I32(_) => 5,
                Value::F32(_) => 6,
                Value::Bool(_) => 7,
                Value::String(_) => 8,
                Value::Array(_) => 9,
                _ => unimplemented!("test writer"),
            }
        }
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            out.extend(type_of(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, shape, type_id, data) in tensors {
            put_str(&mut out, name);
            out.extend((shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                out.extend((*d as u64).to_le_bytes());
            }
            out.extend(type_id.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for (_, _, _, data) in tensors {
            out.extend(data);
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }

    #[test]
    fn round_trips_metadata_and_tensor_table() {
        let bytes = write(
            &[
                ("general.architecture", Value::String("qwen3moe".into())),
                ("qwen3moe.block_count", Value::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
                ),
            ],
            &[
                ("x", vec![2, 3], 0, vec![0u8; 24]),
                ("y", vec![4], 30, vec![0u8; 8]),
            ],
        );
        let h = parse(&bytes).expect("parses");
        assert_eq!(h.version, 3);
        assert_eq!(
            h.metadata["qwen3moe.block_count"].as_u64(),
            Some(2),
            "integer metadata"
        );
        assert_eq!(h.tensors[0].1.shape, vec![2, 3], "row-major shape");
        assert_eq!(h.tensors[1].1.offset, 32);
        assert_eq!(h.data_start % 32, 0);
        assert_eq!(type_name(h.tensors[1].1.type_id), "BF16");
    }

    #[test]
    fn truncated_or_absurd_files_are_errors_not_panics() {
        let bytes = write(
            &[("general.architecture", Value::String("qwen3moe".into()))],
            &[("x", vec![2, 3], 0, vec![0u8; 24])],
        );
        for cut in [0, 3, 10, 30, 60] {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("tensor count"));
        assert!(parse(b"GGML\x03\0\0\0").unwrap_err().contains("magic"));
    }
}
