//! A broken checkpoint gives a typed error naming the file and the tensor: missing shard, truncated shard,
//! wrong shape, unknown architecture, missing and unexpected tensors. The CLI prints it on one line.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use moeserve::loader;
use moeserve::weights::ModelSource;

/// A fresh copy of a fixture to break.
fn copy_fixture(family: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(family);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(common::fixture_dir(family)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn load_err(dir: &Path) -> String {
    match loader::load(
        &ModelSource::Dir(dir.to_path_buf()),
        &Device::Cpu,
        DType::F32,
    ) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

const SHARD: &str = "model-00002-of-00009.safetensors";

#[test]
fn missing_shard_is_named() {
    let (_tmp, dir) = copy_fixture("mixtral");
    std::fs::remove_file(dir.join(SHARD)).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains(SHARD) && msg.contains("missing"), "{msg}");
}

#[test]
fn truncated_shard_is_named() {
    let (_tmp, dir) = copy_fixture("mixtral");
    let path = dir.join(SHARD);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_err(&dir);
    assert!(msg.contains(SHARD) && msg.contains("truncated"), "{msg}");
}

#[test]
fn wrong_shape_names_tensor_and_file() {
    let (_tmp, dir) = copy_fixture("mixtral");
    edit_json(&dir.join("config.json"), |v| {
        v["intermediate_size"] = 40.into()
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("experts.0.w1.weight")
            && msg.contains("[40, 64]")
            && msg.contains(".safetensors"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let (_tmp, dir) = copy_fixture("olmoe");
    edit_json(&dir.join("config.json"), |v| {
        v["architectures"] = serde_json::json!(["FancyNewForCausalLM"]);
        v["model_type"] = "fancy".into();
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("FancyNewForCausalLM") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn tensor_missing_from_its_shard_is_named() {
    let (_tmp, dir) = copy_fixture("qwen3_moe");
    edit_json(&dir.join("model.safetensors.index.json"), |v| {
        v["weight_map"]["model.layers.0.mlp.experts.99.up_proj.weight"] =
            "model-00001-of-00003.safetensors".into();
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("experts.99.up_proj.weight") && msg.contains("model-00001-of-00003"),
        "{msg}"
    );
}

#[test]
fn config_asking_for_a_tensor_the_checkpoint_lacks() {
    let (_tmp, dir) = copy_fixture("qwen3_moe");
    edit_json(&dir.join("config.json"), |v| {
        v["num_hidden_layers"] = 3.into()
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("model.layers.2.") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn unexpected_tensors_are_reported() {
    let (_tmp, dir) = copy_fixture("qwen3_moe");
    edit_json(&dir.join("config.json"), |v| {
        v["num_hidden_layers"] = 1.into()
    });
    let msg = load_err(&dir);
    assert!(
        msg.contains("unexpected") && msg.contains("model.layers.1."),
        "{msg}"
    );
}

#[test]
fn cli_prints_one_line_error() {
    let (_tmp, dir) = copy_fixture("mixtral");
    std::fs::remove_file(dir.join(SHARD)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args(["inspect", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(SHARD), "{stderr}");
}
