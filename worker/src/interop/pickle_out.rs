//! The pickle writer of [`super::pickle`]: protocol 2, the value subset a PyTorch checkpoint needs
//! (what `torch.save` writes; `torch.load` reads it back, also with `weights_only=True`).

/// A value to write with [`dumps`]: the subset PyTorch checkpoints need.
#[derive(Debug, Clone)]
pub enum Out {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Out>),
    Tuple(Vec<Out>),
    Dict(Vec<(String, Out)>),
    /// `collections.OrderedDict` with string keys.
    OrderedDict(Vec<(String, Out)>),
    /// `torch.device(name)`.
    Device(String),
    /// A contiguous float32 CPU tensor stored in `data/{storage}` with `numel` elements.
    FloatTensor {
        storage: usize,
        shape: Vec<i64>,
        numel: usize,
    },
}

/// Writes a protocol-2 pickle of `v` (what `torch.save` writes; no memo, which the format allows).
pub fn dumps(v: &Out) -> Vec<u8> {
    let mut w = vec![0x80, 2];
    write(&mut w, v);
    w.push(b'.');
    w
}

fn write_str(w: &mut Vec<u8>, s: &str) {
    w.push(b'X');
    w.extend_from_slice(&(s.len() as u32).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn write_int(w: &mut Vec<u8>, i: i64) {
    if let Ok(v) = i32::try_from(i) {
        w.push(b'J');
        w.extend_from_slice(&v.to_le_bytes());
    } else {
        w.push(0x8a);
        w.push(8);
        w.extend_from_slice(&i.to_le_bytes());
    }
}

fn write_global(w: &mut Vec<u8>, module: &str, name: &str) {
    w.push(b'c');
    w.extend_from_slice(module.as_bytes());
    w.push(b'\n');
    w.extend_from_slice(name.as_bytes());
    w.push(b'\n');
}

fn write_tuple(w: &mut Vec<u8>, items: &[Out]) {
    if items.is_empty() {
        w.push(b')');
        return;
    }
    w.push(b'(');
    for i in items {
        write(w, i);
    }
    w.push(b't');
}

fn write_items(w: &mut Vec<u8>, items: &[(String, Out)]) {
    if items.is_empty() {
        return;
    }
    w.push(b'(');
    for (k, v) in items {
        write_str(w, k);
        write(w, v);
    }
    w.push(b'u');
}

fn write(w: &mut Vec<u8>, v: &Out) {
    match v {
        Out::None => w.push(b'N'),
        Out::Bool(b) => w.push(if *b { 0x88 } else { 0x89 }),
        Out::Int(i) => write_int(w, *i),
        Out::Float(f) => {
            w.push(b'G');
            w.extend_from_slice(&f.to_be_bytes());
        }
        Out::Str(s) => write_str(w, s),
        Out::List(items) => {
            w.push(b']');
            if !items.is_empty() {
                w.push(b'(');
                for i in items {
                    write(w, i);
                }
                w.push(b'e');
            }
        }
        Out::Tuple(items) => write_tuple(w, items),
        Out::Dict(items) => {
            w.push(b'}');
            write_items(w, items);
        }
        Out::OrderedDict(items) => {
            write_global(w, "collections", "OrderedDict");
            w.extend_from_slice(b")R");
            write_items(w, items);
        }
        Out::Device(d) => {
            write_global(w, "torch", "device");
            write_tuple(w, &[Out::Str(d.clone())]);
            w.push(b'R');
        }
        Out::FloatTensor { storage, shape, numel } => {
            // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks)
            write_global(w, "torch._utils", "_rebuild_tensor_v2");
            w.push(b'(');
            w.push(b'(');
            write_str(w, "storage");
            write_global(w, "torch", "FloatStorage");
            write_str(w, &storage.to_string());
            write_str(w, "cpu");
            write_int(w, *numel as i64);
            w.push(b't');
            w.push(b'Q');
            write_int(w, 0);
            write_tuple(w, &shape.iter().map(|&s| Out::Int(s)).collect::<Vec<_>>());
            let mut stride = vec![1i64; shape.len()];
            for d in (0..shape.len().saturating_sub(1)).rev() {
                stride[d] = stride[d + 1] * shape[d + 1];
            }
            write_tuple(w, &stride.iter().map(|&s| Out::Int(s)).collect::<Vec<_>>());
            w.push(0x89);
            write(w, &Out::OrderedDict(vec![]));
            w.push(b't');
            w.push(b'R');
        }
    }
}
