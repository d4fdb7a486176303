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
    Dir(PathBuf),
    Embedded(&'static EmbeddedModel),
}

impl ModelSource {
    /// The path under which a file is reported in messages.
    pub fn path_of(&self, file: &str) -> PathBuf {
        match self {
            ModelSource::Dir(dir) => dir.join(file),
            ModelSource::Embedded(m) => Path::new("<embedded>").join(m.name).join(file),
        }
    }

    /// A human-readable name of the source.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(dir) => dir.display().to_string(),
            ModelSource::Embedded(m) => format!("<embedded:{}>", m.name),
        }
    }

    pub fn exists(&self, file: &str) -> bool {
        match self {
            ModelSource::Dir(dir) => dir.join(file).is_file(),
            ModelSource::Embedded(m) => m.files.iter().any(|(n, _)| *n == file),
        }
    }

    /// Opens a file as bytes (memory-mapped on disk). `Ok(None)` when it does not exist.
    pub fn open(&self, file: &str) -> Result<Option<FileBytes>> {
        match self {
            ModelSource::Dir(dir) => {
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
            ModelSource::Embedded(m) => Ok(m
                .files
                .iter()
                .find(|(n, _)| *n == file)
                .map(|(_, bytes)| FileBytes::Static(bytes))),
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
