//! Measures the read bandwidth the CPU projection kernel reaches over a 1 GiB f32 buffer with the rayon
//! pool (RAYON_NUM_THREADS threads): the ceiling for memory-bound decode. Prints GB/s (best of 7 passes).
//! `cargo run --release --example membw`

use std::time::Instant;

use moeserve::model::cpu::matmul as cpu_matmul;
use rayon::prelude::*;

fn main() {
    let data = vec![1f32; 256 << 20];
    let ones = vec![1f32; 1 << 16];
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let t = Instant::now();
        let s: f32 = data
            .par_chunks(1 << 16)
            .map(|c| cpu_matmul::run(&ones, c, 1, 1, c.len())[0])
            .sum();
        best = best.min(t.elapsed().as_secs_f64());
        assert!(s > 0.0);
    }
    let bytes = (data.len() * 4) as f64;
    println!("{:.1}", bytes / best / 1e9);
}
