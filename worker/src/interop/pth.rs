//! PyTorch's `.pth` container (what `torch.save` writes since torch 1.6): a stored zip holding
//! `<archive>/data.pkl` (the pickled object, tensors as persistent ids), `<archive>/data/<key>` (one raw
//! little-endian storage per key), `<archive>/byteorder` and `<archive>/version`.
//!
//! [`read`] parses it without Python (our own unpickler, [`super::pickle`]) and turns every
//! `torch._utils._rebuild_tensor_v2` into a CPU tensor; [`write`] produces a file `torch.load` opens.
use super::pickle::{self, Out, Value};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use tch::{Kind, Tensor};

/// A loaded checkpoint: the pickled tree with tensors replaced by [`Loaded::tensor`] handles.
pub struct Loaded {
    pub root: Value,
    /// Tensors by the id stored in `Value::Object { callable: Global("nnunet_rs", "tensor"), args: Int(id) }`.
    pub tensors: Vec<Tensor>,
}

impl Loaded {
    /// The tensor a value stands for, if it is one.
    pub fn tensor(&self, v: &Value) -> Option<&Tensor> {
        match v {
            Value::Object { callable, args, .. } if matches!(callable.as_ref(), Value::Global(m, n) if m == "nnunet_rs" && n == "tensor") => {
                args.as_i64().and_then(|i| self.tensors.get(i as usize))
            }
            _ => None,
        }
    }
}

/// Upper bound on the size of one archive member we read (a 2D nnU-Net checkpoint is < 1 GB).
const MAX_MEMBER: u64 = 4 << 30;

fn storage_kind(name: &str) -> Option<(Kind, usize)> {
    Some(match name {
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// Reads a `.pth` file. Errors name the file and say what is wrong (truncated, legacy format, ...).
pub fn read(path: &Path) -> Result<Loaded> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 4];
    let n = (&file).read(&mut head)?;
    if n >= 2 && head[0] == 0x80 {
        bail!(
            "{}: legacy (pre torch 1.6) PyTorch serialization; re-save it with a current torch: torch.save(torch.load(f, weights_only=False), f)",
            path.display()
        );
    }
    if n < 4 || &head != b"PK\x03\x04" {
        bail!("{}: not a PyTorch checkpoint (a .pth is a zip archive; this file starts with {:02x?})", path.display(), &head[..n]);
    }
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path)?).map_err(|e| {
        anyhow!("{}: the checkpoint archive is unreadable ({e}); the file is probably truncated or corrupt: copy it again", path.display())
    })?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: no <archive>/data.pkl inside; not a torch.save checkpoint", path.display()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_member = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip.by_name(name).map_err(|e| anyhow!("{}: member {name}: {e}", path.display()))?;
        if f.size() > MAX_MEMBER {
            bail!("{}: member {name} is {} bytes, more than this reader accepts", path.display(), f.size());
        }
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).map_err(|e| anyhow!("{}: reading member {name}: {e}; the file is probably truncated", path.display()))?;
        Ok(buf)
    };
    if let Ok(b) = read_member(&format!("{prefix}byteorder")) {
        if b != b"little" {
            bail!("{}: big-endian checkpoint; only little-endian is supported", path.display());
        }
    }
    let pkl = read_member(&pkl_name)?;
    let root = pickle::loads(&pkl).with_context(|| format!("{}: data.pkl", path.display()))?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut tensors = Vec::new();
    let root = rebuild(root, &mut |args: &Value| -> Result<Value> {
        let t = rebuild_tensor(args, &prefix, &mut storages, &mut read_member).with_context(|| format!("{}: a tensor", path.display()))?;
        tensors.push(t);
        Ok(Value::Object {
            callable: Box::new(Value::Global("nnunet_rs".into(), "tensor".into())),
            args: Box::new(Value::Int(tensors.len() as i64 - 1)),
            state: None,
        })
    })?;
    Ok(Loaded { root, tensors })
}

/// Replaces every `_rebuild_tensor_v2(...)` (also inside `_rebuild_parameter`) by `f(args)`.
fn rebuild(v: Value, f: &mut dyn FnMut(&Value) -> Result<Value>) -> Result<Value> {
    Ok(match v {
        Value::Object { callable, args, state } => match callable.as_ref() {
            Value::Global(m, n) if m == "torch._utils" && n == "_rebuild_tensor_v2" => f(&args)?,
            Value::Global(m, n) if m == "torch._utils" && n == "_rebuild_parameter" => {
                let data = args.as_seq().and_then(|a| a.first()).cloned().ok_or_else(|| anyhow!("_rebuild_parameter without data"))?;
                rebuild(data, f)?
            }
            _ => Value::Object { callable, args: Box::new(rebuild(*args, f)?), state },
        },
        Value::Dict(items) => Value::Dict(items.into_iter().map(|(k, v)| Ok((k, rebuild(v, f)?))).collect::<Result<_>>()?),
        Value::List(items) => Value::List(items.into_iter().map(|v| rebuild(v, f)).collect::<Result<_>>()?),
        Value::Tuple(items) => Value::Tuple(items.into_iter().map(|v| rebuild(v, f)).collect::<Result<_>>()?),
        other => other,
    })
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>> {
    v.as_seq()
        .ok_or_else(|| anyhow!("{what} is not a tuple"))?
        .iter()
        .map(|x| x.as_i64().filter(|&i| i >= 0).ok_or_else(|| anyhow!("{what} holds a non-integer")))
        .collect()
}

fn rebuild_tensor(
    args: &Value,
    prefix: &str,
    storages: &mut HashMap<String, Tensor>,
    read_member: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<Tensor> {
    let a = args.as_seq().filter(|a| a.len() >= 4).ok_or_else(|| anyhow!("_rebuild_tensor_v2 with unexpected arguments"))?;
    let Value::PersId(pid) = &a[0] else { bail!("tensor storage is not a persistent id") };
    let p = pid.as_seq().filter(|p| p.len() >= 5).ok_or_else(|| anyhow!("unexpected storage id {pid:?}"))?;
    let (kind, width) = match &p[1] {
        Value::Global(m, n) if m == "torch" => storage_kind(n).ok_or_else(|| anyhow!("unsupported storage type torch.{n}"))?,
        other => bail!("unsupported storage type {other:?}"),
    };
    let key = p[2].as_str().ok_or_else(|| anyhow!("storage key is not a string"))?.to_string();
    if key.contains('/') || key.contains("..") {
        bail!("storage key {key:?} is not a plain name");
    }
    let numel = p[4].as_i64().filter(|&n| n >= 0).ok_or_else(|| anyhow!("storage size is not a count"))?;
    if !storages.contains_key(&key) {
        let bytes = read_member(&format!("{prefix}data/{key}"))?;
        if bytes.len() as i64 != numel * width as i64 {
            bail!("storage {key} holds {} bytes, its header says {numel} elements of {width} bytes", bytes.len());
        }
        storages.insert(key.clone(), Tensor::from_data_size(&bytes, &[numel], kind));
    }
    let storage = &storages[&key];
    let offset = a[1].as_i64().filter(|&o| o >= 0).ok_or_else(|| anyhow!("bad storage offset"))?;
    let size = ints(&a[2], "tensor size")?;
    let stride = ints(&a[3], "tensor stride")?;
    if size.len() != stride.len() {
        bail!("tensor size {size:?} and stride {stride:?} differ in rank");
    }
    let extent: i64 = size.iter().zip(&stride).map(|(&s, &st)| if s == 0 { 0 } else { (s - 1) * st }).sum::<i64>();
    let empty = size.contains(&0);
    if !empty && offset + extent >= numel {
        bail!("tensor of size {size:?} stride {stride:?} at offset {offset} reaches past its storage of {numel} elements");
    }
    Ok(if empty { Tensor::zeros(&size, (Kind::Float, tch::Device::Cpu)) } else { storage.as_strided(&size, &stride, offset).contiguous() })
}

/// Writes the archive of [`to_bytes`] atomically (temp file in the same folder, fsync, rename).
pub fn write(path: &Path, root: &Out, tensors: &[Tensor]) -> Result<()> {
    let bytes = to_bytes(root, tensors)?;
    nnunet_common::hash::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// The `.pth` bytes of `root` whose tensors are `tensors` (referenced by `Out::FloatTensor { storage }`):
/// stored members, data 64-byte aligned, as torch's `PyTorchStreamWriter` lays them out.
pub fn to_bytes(root: &Out, tensors: &[Tensor]) -> Result<Vec<u8>> {
    let archive = "archive";
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64)
            .large_file(false);
        z.start_file(format!("{archive}/data.pkl"), opts)?;
        z.write_all(&pickle::dumps(root))?;
        z.start_file(format!("{archive}/byteorder"), opts)?;
        z.write_all(b"little")?;
        for (i, t) in tensors.iter().enumerate() {
            let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
            let n = t.numel();
            let mut bytes = vec![0u8; n * 4];
            t.copy_data_u8(&mut bytes, n);
            let big = bytes.len() as u64 >= 0xFFFF_FFFF;
            z.start_file(format!("{archive}/data/{i}"), opts.large_file(big))?;
            z.write_all(&bytes)?;
        }
        z.start_file(format!("{archive}/version"), opts)?;
        z.write_all(b"3\n")?;
        z.finish()?;
    }
    Ok(buf.into_inner())
}

/// `Out` handle for tensor `i` of shape `t`.
pub fn tensor_out(i: usize, t: &Tensor) -> Out {
    Out::FloatTensor { storage: i, shape: t.size(), numel: t.numel() }
}
