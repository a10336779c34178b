//! Reads safetensors weight files into tensors with a few large parallel reads.
//!
//! candle's memory-mapped loader copies every tensor out of the map one page fault at a time,
//! and the mapped pages count against the process next to the copies (7.2 GiB peak for SD 1.5's
//! 4.2 GB at f32). Here each file is validated through its header only, then read by
//! up to four threads, each streaming a contiguous run of tensors straight into the
//! tensors' own buffers: the disk sees a few deep sequential reads, nothing stays mapped, and a
//! tensor is converted to the wanted dtype as soon as it is read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::DiffusionError;

/// Reads in flight per file. Four keeps a disk's queue busy without splitting small files into
/// reads too short to stream (a run is never cut below [`MIN_RUN_BYTES`]).
const READ_STREAMS: usize = 4;

/// The least a reading thread is given, so small files are read by one thread.
const MIN_RUN_BYTES: u64 = 64 << 20;

/// One tensor's place in its file.
struct Entry {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    /// From the start of the file.
    offset: u64,
    bytes: u64,
}

/// Validates `files` (complete safetensors files), reads every f32 / f16 / bf16 tensor converted
/// to `dtype`, and returns a builder that moves each to `device` as a module takes it.
pub fn var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, DiffusionError> {
    let mut tensors = HashMap::new();
    for file in files {
        let entries = index(file)?;
        tensors.extend(read(file, entries, dtype)?);
    }
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

fn bad_weights(file: &Path) -> impl Fn(String) -> DiffusionError + '_ {
    move |message| DiffusionError::BadWeights {
        file: file.to_path_buf(),
        message,
    }
}

/// The tensors of `file` in file order, after checking the whole file against its header.
fn index(file: &Path) -> Result<Vec<Entry>, DiffusionError> {
    let bad = bad_weights(file);
    let f = crate::safe_open::open_regular(file).map_err(|e| bad(format!("cannot open: {e}")))?;
    // SAFETY: a read-only mapping of a file we only read, dropped before this returns; only the
    // header's pages are touched (the data's extent is checked against the file's length).
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| bad(format!("cannot map: {e}")))?;
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| bad(format!("not a complete safetensors file ({e})")))?;
    let data_start = 8 + header_len as u64;
    let mut entries = Vec::with_capacity(metadata.tensors().len());
    for (name, info) in metadata.tensors() {
        use safetensors::Dtype;
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            // Integer buffers (old CLIP checkpoints save `position_ids` as I64) are not
            // weights: no module reads them, so they are left on disk.
            other => {
                tracing::debug!(file = %file.display(), tensor = %name, dtype = ?other, "skipping a non-float tensor");
                continue;
            }
        };
        let (start, end) = info.data_offsets;
        entries.push(Entry {
            name,
            dtype,
            shape: info.shape.clone(),
            offset: data_start + start as u64,
            bytes: (end - start) as u64,
        });
    }
    entries.sort_by_key(|e| e.offset);
    Ok(entries)
}

/// Splits file-ordered entries into at most [`READ_STREAMS`] contiguous runs of similar size.
fn runs(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let streams = (total / MIN_RUN_BYTES).clamp(1, READ_STREAMS as u64);
    let mut runs: Vec<Vec<Entry>> = (0..streams).map(|_| Vec::new()).collect();
    let mut before = 0u64;
    for e in entries {
        // Each entry goes to the run its starting byte falls in: runs of total / streams bytes.
        let run = (u128::from(before) * u128::from(streams) / u128::from(total.max(1))) as usize;
        before += e.bytes;
        runs[run.min(streams as usize - 1)].push(e);
    }
    runs.retain(|r| !r.is_empty());
    runs
}

/// Every entry of `file`, one thread per run; the first failing run's error wins.
fn read(
    file: &Path,
    entries: Vec<Entry>,
    dtype: DType,
) -> Result<Vec<(String, Tensor)>, DiffusionError> {
    let runs = runs(entries);
    let results: Vec<Result<Vec<(String, Tensor)>, DiffusionError>> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| s.spawn(move || read_run(file, run, dtype)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(bad_weights(file)("a reading thread panicked".into())))
            })
            .collect()
    });
    let mut tensors = Vec::new();
    for r in results {
        tensors.extend(r?);
    }
    Ok(tensors)
}

/// Reads one contiguous run of tensors in file order, by positional reads on its own handle.
fn read_run(
    file: &Path,
    run: Vec<Entry>,
    dtype: DType,
) -> Result<Vec<(String, Tensor)>, DiffusionError> {
    let bad = bad_weights(file);
    if run.is_empty() {
        return Ok(Vec::new());
    }
    let f = crate::safe_open::open_regular(file).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut out = Vec::with_capacity(run.len());
    for e in run {
        let read_err = |err: std::io::Error| bad(format!("cannot read tensor {}: {err}", e.name));
        let n: usize = e.shape.iter().product();
        let tensor = match e.dtype {
            DType::F16 => read_tensor::<half::f16>(&f, e.offset, n, &e.shape),
            DType::BF16 => read_tensor::<half::bf16>(&f, e.offset, n, &e.shape),
            _ => read_tensor::<f32>(&f, e.offset, n, &e.shape),
        }
        .map_err(read_err)?;
        let tensor = tensor
            .to_dtype(dtype)
            .map_err(|err| bad(format!("tensor {}: {err}", e.name)))?;
        out.push((e.name, tensor));
    }
    Ok(out)
}

/// Element types whose every bit pattern is a value, so bytes can be read straight into them.
trait Plain: candle_core::WithDType {}
impl Plain for f32 {}
impl Plain for half::f16 {}
impl Plain for half::bf16 {}

/// One tensor of `n` little-endian elements at `offset`, read into its final buffer: no staging
/// copy, and no zeroing of memory about to be overwritten (that memset was 15 % of a load).
fn read_tensor<T: Plain>(
    f: &std::fs::File,
    offset: u64,
    n: usize,
    shape: &[usize],
) -> std::io::Result<Tensor> {
    let mut values: Vec<T> = Vec::with_capacity(n);
    let len = n * std::mem::size_of::<T>();
    // SAFETY: `fill_at` writes exactly `len` bytes into the vector's allocation (or fails, and the
    // length stays 0); `Plain` types have no invalid bit patterns and no padding. safetensors is
    // little-endian, as is every target candle's CPU backend reads tensors on (its own loader
    // makes the same assumption).
    unsafe {
        fill_at(f, offset, values.as_mut_ptr().cast::<u8>(), len)?;
        values.set_len(n);
    }
    Tensor::from_vec(values, shape, &Device::Cpu).map_err(std::io::Error::other)
}

/// Kernel readahead here is 8 MiB; a read per window keeps each stream's requests that size.
const READ_CHUNK: usize = 8 << 20;

/// Fills `len` bytes at `dst` from `f` at `offset`.
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes.
#[cfg(unix)]
unsafe fn fill_at(f: &std::fs::File, offset: u64, dst: *mut u8, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < len {
        let want = (len - done).min(READ_CHUNK);
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::other("offset past the platform's file size"))?;
        // SAFETY: `dst + done .. + want` is inside the caller's `len` bytes; the kernel writes
        // through the raw pointer, so no reference to uninitialised memory is made.
        let got = unsafe { libc::pread(f.as_raw_fd(), dst.add(done).cast(), want, at) };
        match got {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            g if g < 0 => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            g => done += g as usize,
        }
    }
    Ok(())
}

/// Fills `len` bytes at `dst` from `f` at `offset` (zeroed first: no positional raw read here).
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes.
#[cfg(not(unix))]
unsafe fn fill_at(f: &std::fs::File, offset: u64, dst: *mut u8, len: usize) -> std::io::Result<()> {
    // SAFETY: the caller's `len` bytes, initialised here before the slice is made.
    let bytes = unsafe {
        dst.write_bytes(0, len);
        std::slice::from_raw_parts_mut(dst, len)
    };
    let mut f = f;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn reads_every_tensor_as_candle_does_in_any_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let b = Tensor::new(&[1.5f32, -2.25], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let c = Tensor::new(&[[0.5f32, 8.0]], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        write(
            &path,
            &[("a", a.clone()), ("b", b.clone()), ("c", c.clone())],
        );
        let entries = index(&path).unwrap();
        assert_eq!(entries.len(), 3);
        for dtype in [DType::F32, DType::F16] {
            let got: HashMap<_, _> = read(&path, index(&path).unwrap(), dtype)
                .unwrap()
                .into_iter()
                .collect();
            for (name, want) in [("a", &a), ("b", &b), ("c", &c)] {
                let t = &got[name];
                assert_eq!(t.dtype(), dtype);
                assert_eq!(t.dims(), want.dims());
                let want = want.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                let t = t.to_dtype(DType::F32).unwrap();
                let diff = (t - want).unwrap().abs().unwrap().sum_all().unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} as {dtype:?}");
            }
        }
    }

    /// A safetensors file written in the given order (the serialisers sort by dtype and name).
    fn write_in_order(path: &Path, tensors: &[(&str, &str, &[usize], Vec<u8>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let header = serde_json::Value::Object(header).to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&data);
        std::fs::write(path, file).unwrap();
    }

    #[test]
    fn integer_buffers_are_skipped_and_the_tensors_after_them_read_right() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        write_in_order(
            &path,
            &[
                ("first", "F32", &[2], le(&[1.0, 2.0])),
                (
                    "position_ids",
                    "I64",
                    &[3],
                    [0i64, 1, 2].iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                ("last", "F32", &[3], le(&[3.0, -4.0, 5.5])),
            ],
        );
        let got: HashMap<_, _> = read(&path, index(&path).unwrap(), DType::F32)
            .unwrap()
            .into_iter()
            .collect();
        assert!(!got.contains_key("position_ids"));
        assert_eq!(got["first"].to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        assert_eq!(got["last"].to_vec1::<f32>().unwrap(), [3.0, -4.0, 5.5]);
    }

    #[test]
    fn runs_are_contiguous_balanced_and_keep_every_entry() {
        let entries: Vec<Entry> = (0..10u64)
            .map(|i| Entry {
                name: format!("t{i}"),
                dtype: DType::F32,
                shape: vec![],
                offset: i * (100 << 20),
                bytes: 100 << 20,
            })
            .collect();
        let runs = runs(entries);
        assert_eq!(runs.len(), READ_STREAMS);
        let names: Vec<&str> = runs.iter().flatten().map(|e| e.name.as_str()).collect();
        let want: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        assert_eq!(names, want);
        assert!(
            runs.iter().all(|r| r.len() >= 2 && r.len() <= 3),
            "{:?}",
            runs.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // A small file is one run.
        let small = vec![Entry {
            name: "s".into(),
            dtype: DType::F32,
            shape: vec![1],
            offset: 8,
            bytes: 4,
        }];
        assert_eq!(super::runs(small).len(), 1);
    }

    #[test]
    fn a_file_shorter_than_its_header_says_is_named_as_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::zeros((64,), DType::F32, &Device::Cpu).unwrap();
        write(&path, &[("a", a)]);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 4).unwrap();
        let err = var_builder(std::slice::from_ref(&path), DType::F32, &Device::Cpu)
            .err()
            .unwrap();
        assert!(
            matches!(&err, DiffusionError::BadWeights { file, message }
            if file == &path && message.contains("not a complete safetensors file")),
            "{err}"
        );
    }
}
