//! `moeserve bench` against a real server: every request completes, token counts add up (ignore_eos), the
//! JSON result holds the vLLM-style metrics and no prompt text, and the plots are written.

mod common;

use common::server::Server;

#[test]
fn bench_reports_vllm_metrics() {
    let server = Server::start(None, &[]);
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("result.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args([
            "bench",
            "--base-url",
            &server.base,
            "--num-prompts",
            "12",
            "--random-input-len",
            "16",
        ])
        .args([
            "--random-output-len",
            "8",
            "--ignore-eos",
            "--sweep-concurrency",
            "1,4",
            "--seed",
            "3",
        ])
        .args([
            "--request-rate",
            "200",
            "--percentiles",
            "50,99",
            "--result-json",
        ])
        .arg(&json_path)
        .arg("--plot-dir")
        .arg(dir.path().join("plots"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("Output token throughput (tok/s):") && table.contains("P99 TTFT (ms):"),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run["completed"], 12);
        assert_eq!(run["failed"], 0);
        assert_eq!(run["total_output_tokens"], 12 * 8);
        assert_eq!(run["total_input_tokens"], 12 * 16);
        assert!(run["output_throughput"].as_f64().unwrap() > 0.0);
        assert!(run["tpot"]["mean_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(run["ttft"]["percentiles_ms"].as_array().unwrap().len(), 2);
    }
    assert_eq!(runs[1]["max_concurrency"], 4);
    // Plots: one latency figure per level and the sweep, each as SVG and PNG.
    for stem in ["latency-c1", "latency-c4", "sweep"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("plots/{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{stem}.svg");
        let png = std::fs::read(dir.path().join(format!("plots/{stem}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{stem}.png"
        );
    }
}
