//! Where a model's files come from: a checkpoint directory on disk (memory-mapped) or a model embedded in
//! the binary. Everything above this module reads files by name and never cares which.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A model compiled into the binary: file names and their bytes.
pub struct EmbeddedModel {
    pub name: &'static str,
    pub files: &'static [(&'static str, &'static [u8])],
}

/// The bytes of one file: a read-only memory map or static data.
pub enum FileBytes {
    Mmap(memmap2::Mmap),
    Static(&'static [u8]),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mmap(m) => m,
            FileBytes::Static(s) => s,
        }
    }
}

impl FileBytes {
    /// Drops `start..end` (bytes already copied out) from the process's resident set: a checkpoint is
    /// then held once (its copy), not twice (copy + mapped pages) while it loads. The pages stay in the
    /// page cache and are read back from the file if touched again. A no-op for static data.
    pub fn release(&self, start: usize, end: usize) {
        #[cfg(unix)]
        if let FileBytes::Mmap(m) = self {
            // madvise takes whole pages: only the pages entirely inside the range (a page shared with a
            // neighbouring tensor stays until that one is released, or the map is dropped).
            const PAGE: usize = 4096;
            let base = m.as_ptr() as usize;
            let start = (base + start).next_multiple_of(PAGE) - base;
            let end = ((base + end) / PAGE * PAGE).saturating_sub(base);
            if start < end && end <= m.len() {
                // SAFETY: the map is read-only and file-backed: after MADV_DONTNEED a read faults the
                // same bytes back in from the file, so every slice of it keeps its contents.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (start, end);
    }
}

/// A checkpoint's location.
#[derive(Clone)]
pub enum ModelSource {
    /// A hub-style directory (or one holding a GGUF file).
    Dir(PathBuf),
    /// One GGUF file (the first of a split set); other files are looked up beside it.
    File(PathBuf),
    Embedded(&'static EmbeddedModel),
}

impl ModelSource {
    /// The directory files are read from (none for an embedded model).
    fn dir(&self) -> Option<&Path> {
        match self {
            ModelSource::Dir(dir) => Some(dir),
            ModelSource::File(f) => Some(f.parent().unwrap_or(Path::new("."))),
            ModelSource::Embedded(_) => None,
        }
    }

    /// The path under which a file is reported in messages.
    pub fn path_of(&self, file: &str) -> PathBuf {
        match (self, self.dir()) {
            (ModelSource::Embedded(m), _) => Path::new("<embedded>").join(m.name).join(file),
            (_, Some(dir)) => dir.join(file),
            (_, None) => PathBuf::from(file),
        }
    }

    /// A human-readable name of the source.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(dir) => dir.display().to_string(),
            ModelSource::File(f) => f.display().to_string(),
            ModelSource::Embedded(m) => format!("<embedded:{}>", m.name),
        }
    }

    pub fn exists(&self, file: &str) -> bool {
        match (self, self.dir()) {
            (ModelSource::Embedded(m), _) => m.files.iter().any(|(n, _)| *n == file),
            (_, Some(dir)) => dir.join(file).is_file(),
            (_, None) => false,
        }
    }

    /// The GGUF files of this source, in order: the named file (and the rest of its split set
    /// `*-00001-of-0000N.gguf`), or the one GGUF of a directory that has no `config.json`. `Ok(None)` for
    /// a hub checkpoint; an error for a directory holding several GGUF models (name one with its file).
    pub fn gguf_files(&self) -> Result<Option<Vec<String>>> {
        let first = match self {
            ModelSource::Embedded(_) => return Ok(None),
            ModelSource::File(f) => f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ModelSource::Dir(dir) => {
                if dir.join("config.json").is_file() {
                    return Ok(None);
                }
                let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
                    path: dir.clone(),
                    source,
                })?;
                let mut ggufs: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".gguf"))
                    .collect();
                ggufs.sort();
                let firsts: Vec<&String> = ggufs
                    .iter()
                    .filter(|n| split_part(n).is_none_or(|(i, _, _)| i == 1))
                    .collect();
                match firsts.as_slice() {
                    [] => return Ok(None),
                    [one] => (*one).clone(),
                    _ => {
                        return Err(Error::Config {
                            path: dir.clone(),
                            message: format!(
                                "{} GGUF models in one directory: pass the file to --model",
                                firsts.len()
                            ),
                        })
                    }
                }
            }
        };
        let Some((index, count, stem)) = split_part(&first) else {
            return Ok(Some(vec![first]));
        };
        if index != 1 {
            return Err(Error::Config {
                path: self.path_of(&first),
                message: "not the first file of a split GGUF set (-00001-of-…)".into(),
            });
        }
        let files: Vec<String> = (1..=count)
            .map(|i| format!("{stem}-{i:05}-of-{count:05}.gguf"))
            .collect();
        if let Some(missing) = files.iter().find(|f| !self.exists(f)) {
            return Err(Error::MissingShard {
                path: self.path_of(missing),
            });
        }
        Ok(Some(files))
    }

    /// Opens a file as bytes (memory-mapped on disk). `Ok(None)` when it does not exist.
    pub fn open(&self, file: &str) -> Result<Option<FileBytes>> {
        match (self, self.dir()) {
            (_, Some(dir)) => {
                let path = dir.join(file);
                let handle = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(Error::Io { path, source }),
                };
                // SAFETY: the map is read-only; a checkpoint modified while being served is outside the
                // contract of any inference server (same assumption as safetensors' own loaders).
                let map = unsafe { memmap2::Mmap::map(&handle) }
                    .map_err(|source| Error::Io { path, source })?;
                Ok(Some(FileBytes::Mmap(map)))
            }
            (ModelSource::Embedded(m), _) => Ok(m
                .files
                .iter()
                .find(|(n, _)| *n == file)
                .map(|(_, bytes)| FileBytes::Static(bytes))),
            (_, None) => Ok(None),
        }
    }

    /// Reads a text file. `Ok(None)` when it does not exist.
    pub fn read_text(&self, file: &str) -> Result<Option<String>> {
        let Some(bytes) = self.open(file)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::Config {
            path: self.path_of(file),
            message: format!("not valid UTF-8: {e}"),
        })?;
        Ok(Some(text.to_owned()))
    }

    /// Reads and parses a JSON file. `Ok(None)` when it does not exist.
    pub fn read_json(&self, file: &str) -> Result<Option<serde_json::Value>> {
        let Some(text) = self.read_text(file)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Json {
                path: self.path_of(file),
                message: e.to_string(),
            })
    }
}

/// `name-00002-of-00005.gguf` → `(2, 5, "name")`.
fn split_part(file: &str) -> Option<(usize, usize, &str)> {
    let stem = file.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (name, index) = rest.rsplit_once('-')?;
    let ok = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !ok(index) || !ok(count) {
        return None;
    }
    Some((index.parse().ok()?, count.parse().ok()?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_gguf_names_are_recognised() {
        assert_eq!(
            split_part("Qwen3-30B-Q4_K_M-00001-of-00003.gguf"),
            Some((1, 3, "Qwen3-30B-Q4_K_M"))
        );
        assert_eq!(split_part("model-q8_0.gguf"), None);
        assert_eq!(split_part("x-1-of-3.gguf"), None);
    }

    #[test]
    fn a_directory_with_one_gguf_and_no_config_is_a_gguf_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = ModelSource::Dir(dir.path().to_path_buf());
        assert_eq!(src.gguf_files().expect("reads"), None);
        std::fs::write(dir.path().join("m-00001-of-00002.gguf"), b"").expect("write");
        assert!(src.gguf_files().is_err(), "second part missing");
        std::fs::write(dir.path().join("m-00002-of-00002.gguf"), b"").expect("write");
        assert_eq!(
            src.gguf_files().expect("reads"),
            Some(vec![
                "m-00001-of-00002.gguf".into(),
                "m-00002-of-00002.gguf".into()
            ])
        );
        std::fs::write(dir.path().join("other.gguf"), b"").expect("write");
        assert!(src.gguf_files().is_err(), "two models");
        let file = ModelSource::File(dir.path().join("other.gguf"));
        assert_eq!(
            file.gguf_files().expect("reads"),
            Some(vec!["other.gguf".into()])
        );
        std::fs::write(dir.path().join("config.json"), b"{}").expect("write");
        assert_eq!(src.gguf_files().expect("reads"), None, "hub checkpoint");
    }
}
