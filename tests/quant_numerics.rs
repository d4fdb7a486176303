//! Block-quantized numerics against llama.cpp and gguf-py (`tests/fixtures/quant/`, made by
//! `scripts/make_quant_fixtures.py`): for every block type we hold, our dequantization of llama.cpp's
//! quantized bytes equals gguf-py's `dequantize` bit for bit — in the row layout and in the kernels'
//! interleaved one; our quantizer (ggml's reference quantizer as ported by candle, what `--quantize` runs)
//! gives llama.cpp's bytes for Q8_0 and Q4_K, and, as measured here, for the other types.

use moeserve::weights::{QuantMatrix, QuantType};

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

const ROWS: usize = 8;
const COLS: usize = 256;

fn file_stem(ty: QuantType) -> String {
    // gguf-py's names: q4_0 …, q4_K (capital K).
    ty.name().to_lowercase().replace("_k", "_K")
}

#[test]
fn dequantization_equals_gguf_py_bit_for_bit_in_both_layouts() {
    for ty in QuantType::ALL {
        let stem = file_stem(ty);
        let q = fixture(&format!("{stem}.q"));
        let want = f32s(&fixture(&format!("{stem}.dequant.f32")));
        let m = QuantMatrix::from_bytes(ty, ROWS, COLS, &q).expect("layout");
        let got = m.dequantize();
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && got.len() == want.len(),
            "{ty:?}: dequantization differs from gguf-py"
        );
        let kernel = m.into_kernel_layout();
        assert_eq!(
            kernel
                .dequantize()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{ty:?}: kernel layout"
        );
    }
}

#[test]
fn quantization_equals_llama_cpps_bytes() {
    let input = f32s(&fixture("input.f32"));
    let mut differing = Vec::new();
    for ty in QuantType::ALL {
        let stem = file_stem(ty);
        let want = fixture(&format!("{stem}.q"));
        let got = QuantMatrix::quantize(ty, ROWS, COLS, &input).expect("quantize");
        if got.data() != want.as_slice() {
            differing.push(ty);
        }
    }
    // The requirement: Q8_0 and Q4_K bit-identical to llama.cpp's quantizer.
    assert!(
        !differing.contains(&QuantType::Q8_0) && !differing.contains(&QuantType::Q4_K),
        "differs from llama.cpp: {differing:?}"
    );
    eprintln!("types whose quantization differs from llama.cpp's: {differing:?}");
}
