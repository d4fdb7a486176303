//! Reduced precision against the f32 reference: every fixture in bf16 and f16 against transformers' f32
//! logits (relative L2 error per prompt), and the same next token wherever the reference's top-1/top-2 gap
//! is clear. On these random-weight fixtures transformers' own bf16 run is 0.7–4.3% off its f32 run
//! (f16: 0.08–0.3%), because near-tied routing decisions flip; the limits leave room for that: the median
//! over a family's prompts must stay under 3% (bf16) / 0.5% (f16), every prompt under 10% / 3%.
//! Runs on the CPU here; `MOESERVE_TEST_DEVICE=cuda:0 cargo test --features cuda --test dtype_parity`
//! runs it on a GPU.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use moeserve::loader;
use moeserve::weights::ModelSource;

/// ‖ours − ref‖₂ / ‖ref‖₂ over all positions of a prompt.
fn relative_error(ours: &[Vec<f32>], reference: &Tensor) -> f32 {
    let ours = Tensor::new(ours.to_vec(), &candle_core::Device::Cpu).unwrap();
    let diff = (&ours - reference)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let norm = reference.sqr().unwrap().sum_all().unwrap();
    (diff.to_scalar::<f32>().unwrap() / norm.to_scalar::<f32>().unwrap()).sqrt()
}

fn check(dtype: DType, median_limit: f32, max_limit: f32) {
    let device = test_device();
    for family in FAMILIES {
        let loaded = loader::load(&ModelSource::Dir(fixture_dir(family)), &device, dtype)
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        let r = reference(family);
        let mut errors = Vec::new();
        for (i, prompt) in r.prompts.iter().enumerate() {
            let mut runner = Runner::new(&loaded, 1, 16, 4);
            let ours = runner.step(&[(0, prompt.clone())]).remove(0);
            let reference = &r.tensors[&format!("logits.{i}")];
            let err = relative_error(&ours, reference);
            assert!(
                err < max_limit,
                "{family} {dtype:?} prompt {i}: relative error {err}"
            );
            errors.push(err);
            // The next token wherever the reference is not close to a tie.
            let last: Vec<f32> = reference.get(prompt.len() - 1).unwrap().to_vec1().unwrap();
            let mut sorted = last.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 0.05 {
                assert_eq!(
                    argmax(ours.last().unwrap()),
                    argmax(&last),
                    "{family} {dtype:?} prompt {i}: next token"
                );
            }
        }
        errors.sort_by(f32::total_cmp);
        let median = errors[errors.len() / 2];
        assert!(
            median < median_limit,
            "{family} {dtype:?}: median relative error {median}"
        );
    }
}

#[test]
fn bf16_logits_are_close_to_the_f32_reference() {
    check(DType::BF16, 3e-2, 0.1);
}

#[test]
fn f16_logits_are_close_to_the_f32_reference() {
    check(DType::F16, 5e-3, 3e-2);
}
