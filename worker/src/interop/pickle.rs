//! A small, safe Python pickle reader and writer (protocols 0-5 read, protocol 2 written) for PyTorch
//! checkpoints. Nothing is ever imported or called: a `GLOBAL` is a name, `REDUCE`/`NEWOBJ` build an
//! [`Value::Object`] recording the callable and its arguments, and the caller interprets the few it
//! knows (`torch._utils._rebuild_tensor_v2`, `collections.OrderedDict`, numpy scalars).
//!
//! Objects live in an arena while reading so that `SETITEMS`/`APPENDS`/`BUILD` mutate the object the
//! memo also points at (Python's sharing semantics); the result is materialized into an owned tree at
//! `STOP`, with a depth and size bound (the input is untrusted).
use anyhow::{anyhow, bail, Result};

/// A materialized pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// A dict or `collections.OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// `module.name` of a GLOBAL.
    Global(String, String),
    /// `callable(*args)` (REDUCE/NEWOBJ), with the BUILD state when there was one.
    Object {
        callable: Box<Value>,
        args: Box<Value>,
        state: Option<Box<Value>>,
    },
    /// A persistent id (PyTorch: `('storage', StorageType, key, location, numel)`).
    PersId(Box<Value>),
}

impl Value {
    /// The entry `key` of a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => self.numpy_scalar().and_then(|(kind, b)| match (kind.as_str(), b.len()) {
                ("i8", 8) => Some(i64::from_le_bytes(b.try_into().ok()?)),
                ("i4", 4) => Some(i32::from_le_bytes(b.try_into().ok()?) as i64),
                _ => None,
            }),
        }
    }
    /// A Python float or int, or a numpy float64/float32 scalar.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => self.numpy_scalar().and_then(|(kind, b)| match (kind.as_str(), b.len()) {
                ("f8", 8) => Some(f64::from_le_bytes(b.try_into().ok()?)),
                ("f4", 4) => Some(f32::from_le_bytes(b.try_into().ok()?) as f64),
                _ => self.as_i64().map(|i| i as f64),
            }),
        }
    }
    /// Items of a list or tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }
    /// `numpy.core.multiarray.scalar(dtype('f8'), bytes)` -> ("f8", bytes).
    fn numpy_scalar(&self) -> Option<(String, &[u8])> {
        let Value::Object { callable, args, .. } = self else { return None };
        let Value::Global(m, n) = callable.as_ref() else { return None };
        if !(m.starts_with("numpy") && n == "scalar") {
            return None;
        }
        let a = args.as_seq()?;
        let Value::Object { args: dargs, .. } = a.first()? else { return None };
        let kind = dargs.as_seq()?.first()?.as_str()?.to_string();
        match a.get(1)? {
            Value::Bytes(b) => Some((kind, b)),
            _ => None,
        }
    }
}

/// Bounds on what a pickle may expand to.
const MAX_DEPTH: usize = 256;
const MAX_NODES: usize = 20_000_000;

#[derive(Debug, Clone)]
enum Obj {
    Leaf(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Object { callable: usize, args: usize, state: Option<usize> },
    PersId(usize),
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Obj(usize),
    Mark,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    arena: Vec<Obj>,
    stack: Vec<Item>,
    memo: std::collections::HashMap<u64, usize>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| anyhow!("pickle ends early (truncated)"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("pickle ends early (unterminated line)"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| anyhow!("pickle text field is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }
    fn alloc(&mut self, o: Obj) -> usize {
        self.arena.push(o);
        self.arena.len() - 1
    }
    fn push(&mut self, o: Obj) {
        let id = self.alloc(o);
        self.stack.push(Item::Obj(id));
    }
    fn push_leaf(&mut self, v: Value) {
        self.push(Obj::Leaf(v));
    }
    fn pop(&mut self) -> Result<usize> {
        match self.stack.pop() {
            Some(Item::Obj(id)) => Ok(id),
            Some(Item::Mark) => bail!("pickle: unexpected MARK on the stack"),
            None => bail!("pickle: stack underflow"),
        }
    }
    fn top(&self) -> Result<usize> {
        match self.stack.last() {
            Some(Item::Obj(id)) => Ok(*id),
            _ => bail!("pickle: expected an object on the stack"),
        }
    }
    /// Pops everything down to the last MARK.
    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let m = self.stack.iter().rposition(|i| matches!(i, Item::Mark)).ok_or_else(|| anyhow!("pickle: MARK missing"))?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items.into_iter().map(|i| if let Item::Obj(id) = i { id } else { unreachable!() }).collect())
    }
    fn put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }
    fn get(&mut self, key: u64) -> Result<()> {
        let id = *self.memo.get(&key).ok_or_else(|| anyhow!("pickle: memo key {key} not defined"))?;
        self.stack.push(Item::Obj(id));
        Ok(())
    }
    fn global_of(&self, id: usize) -> Option<(&str, &str)> {
        match &self.arena[id] {
            Obj::Leaf(Value::Global(m, n)) => Some((m, n)),
            _ => None,
        }
    }
    fn str_of(&self, id: usize) -> Option<&str> {
        match &self.arena[id] {
            Obj::Leaf(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn reduce(&mut self, callable: usize, args: usize) {
        let empty_args = matches!(&self.arena[args], Obj::Tuple(v) if v.is_empty());
        match self.global_of(callable) {
            // OrderedDict() is filled by SETITEMS afterwards: make it a dict so that works.
            Some(("collections", "OrderedDict")) if empty_args => self.push(Obj::Dict(vec![])),
            // Protocol 2 writes a bytes object as `_codecs.encode(latin1 string, 'latin1')`.
            Some(("_codecs", "encode")) => {
                let parts = match &self.arena[args] {
                    Obj::Tuple(v) if v.len() == 2 => Some((v[0], v[1])),
                    _ => None,
                };
                if let Some((s, enc)) = parts {
                    if let (Some(s), Some("latin1")) = (self.str_of(s), self.str_of(enc)) {
                        let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                        if let Some(b) = bytes {
                            self.push_leaf(Value::Bytes(b));
                            return;
                        }
                    }
                }
                self.push(Obj::Object { callable, args, state: None });
            }
            _ => self.push(Obj::Object { callable, args, state: None }),
        }
    }
    fn set_items(&mut self, target: usize, kv: &[usize]) -> Result<()> {
        if !kv.len().is_multiple_of(2) {
            bail!("pickle: SETITEMS with an odd number of items");
        }
        match &mut self.arena[target] {
            Obj::Dict(d) => {
                d.extend(kv.chunks(2).map(|c| (c[0], c[1])));
                Ok(())
            }
            _ => bail!("pickle: SETITEM(S) on a non-dict"),
        }
    }
    fn append(&mut self, target: usize, items: &[usize]) -> Result<()> {
        match &mut self.arena[target] {
            Obj::List(l) => {
                l.extend_from_slice(items);
                Ok(())
            }
            _ => bail!("pickle: APPEND(S) on a non-list"),
        }
    }

    fn run(&mut self) -> Result<usize> {
        loop {
            let op = self.u8()?;
            if op == b'.' {
                return self.pop();
            }
            if !(self.literal(op)? || self.structure(op)? || self.bookkeeping(op)?) {
                bail!("pickle: unsupported opcode 0x{op:02x} at byte {}", self.pos - 1);
            }
        }
    }

    /// Opcodes that push one value: None, booleans, integers, floats, strings, bytes, globals. Returns whether `op` is one of them.
    fn literal(&mut self, op: u8) -> Result<bool> {
        match op {
            b'N' => self.push_leaf(Value::None),
            0x88 => self.push_leaf(Value::Bool(true)),
            0x89 => self.push_leaf(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                self.push_leaf(Value::Int(v as i64))
            }
            b'K' => {
                let v = self.u8()?;
                self.push_leaf(Value::Int(v as i64))
            }
            b'M' => {
                let v = self.u16()?;
                self.push_leaf(Value::Int(v as i64))
            }
            0x8a | 0x8b => {
                let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                let b = self.take(n)?;
                if n > 8 {
                    bail!("pickle: integer of {n} bytes is too large");
                }
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                buf[..n].copy_from_slice(b);
                self.push_leaf(Value::Int(i64::from_le_bytes(buf)))
            }
            b'I' | b'L' => {
                let l = self.line()?.trim_end_matches('L');
                let v = match l {
                    "01" => Value::Bool(true),
                    "00" => Value::Bool(false),
                    _ => Value::Int(l.parse().map_err(|_| anyhow!("pickle: bad integer {l:?}"))?),
                };
                self.push_leaf(v)
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                self.push_leaf(Value::Float(v))
            }
            b'F' => {
                let l = self.line()?;
                self.push_leaf(Value::Float(l.parse().map_err(|_| anyhow!("pickle: bad float {l:?}"))?))
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => self.u32()? as usize,
                    0x8c => self.u8()? as usize,
                    _ => self.u64()? as usize,
                };
                let s = std::str::from_utf8(self.take(n)?).map_err(|_| anyhow!("pickle: string is not UTF-8"))?;
                self.push_leaf(Value::Str(s.to_string()))
            }
            b'B' | b'C' | 0x8e | b'T' | b'U' => {
                let n = match op {
                    b'B' | b'T' => self.u32()? as usize,
                    b'C' | b'U' => self.u8()? as usize,
                    _ => self.u64()? as usize,
                };
                let b = self.take(n)?.to_vec();
                self.push_leaf(Value::Bytes(b))
            }
            b'c' => {
                let m = self.line()?.to_string();
                let n = self.line()?.to_string();
                self.push_leaf(Value::Global(m, n))
            }
            0x93 => {
                let n = self.pop()?;
                let m = self.pop()?;
                match (self.str_of(m), self.str_of(n)) {
                    (Some(m), Some(n)) => {
                        let g = Value::Global(m.to_string(), n.to_string());
                        self.push_leaf(g)
                    }
                    _ => bail!("pickle: STACK_GLOBAL needs two strings"),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    /// Opcodes that build containers and objects: marks, tuples, lists, dicts, REDUCE, BUILD, persistent ids. Returns whether `op` is one of them.
    fn structure(&mut self, op: u8) -> Result<bool> {
        match op {
            b'(' => self.stack.push(Item::Mark),
            b'}' => self.push(Obj::Dict(vec![])),
            b']' => self.push(Obj::List(vec![])),
            b')' => self.push(Obj::Tuple(vec![])),
            0x8f => self.push(Obj::List(vec![])),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Obj::Tuple(items))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Obj::Tuple(items))
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Obj::List(items))
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Obj::Tuple(items))
            }
            b'd' => {
                let items = self.pop_mark()?;
                let id = self.alloc(Obj::Dict(vec![]));
                self.set_items(id, &items)?;
                self.stack.push(Item::Obj(id))
            }
            b'a' => {
                let v = self.pop()?;
                let l = self.top()?;
                self.append(l, &[v])?
            }
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                let l = self.top()?;
                self.append(l, &items)?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let d = self.top()?;
                self.set_items(d, &[k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let d = self.top()?;
                self.set_items(d, &items)?
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.reduce(callable, args)
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let callable = self.pop()?;
                self.reduce(callable, args)
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?;
                if let Obj::Object { state: s, .. } = &mut self.arena[target] {
                    *s = Some(state);
                }
                // BUILD on a dict (an OrderedDict's `_metadata` attribute) carries nothing we use.
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push(Obj::PersId(pid))
            }
            b'P' => {
                let l = self.line()?.to_string();
                let s = self.alloc(Obj::Leaf(Value::Str(l)));
                self.push(Obj::PersId(s))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    /// Framing, memo and stack opcodes: PROTO, FRAME, PUT/GET in all their forms, POP, POP_MARK, DUP. Returns whether `op` is one of them.
    fn bookkeeping(&mut self, op: u8) -> Result<bool> {
        match op {
            0x80 => {
                self.u8()?;
            }
            0x95 => {
                self.u64()?;
            }
            b'q' => {
                let k = self.u8()? as u64;
                self.put(k)?
            }
            b'r' => {
                let k = self.u32()? as u64;
                self.put(k)?
            }
            b'p' => {
                let k: u64 = self.line()?.parse().map_err(|_| anyhow!("pickle: bad PUT key"))?;
                self.put(k)?
            }
            0x94 => {
                let k = self.memo.len() as u64;
                self.put(k)?
            }
            b'h' => {
                let k = self.u8()? as u64;
                self.get(k)?
            }
            b'j' => {
                let k = self.u32()? as u64;
                self.get(k)?
            }
            b'g' => {
                let k: u64 = self.line()?.parse().map_err(|_| anyhow!("pickle: bad GET key"))?;
                self.get(k)?
            }
            b'0' => {
                self.stack.pop().ok_or_else(|| anyhow!("pickle: POP on an empty stack"))?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let t = *self.stack.last().ok_or_else(|| anyhow!("pickle: DUP on an empty stack"))?;
                self.stack.push(t)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn materialize(&self, id: usize, depth: usize, budget: &mut usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("pickle: nesting deeper than {MAX_DEPTH} (or a cycle)");
        }
        *budget = budget.checked_sub(1).ok_or_else(|| anyhow!("pickle: expands to more than {MAX_NODES} values"))?;
        let m = |i: usize, b: &mut usize| self.materialize(i, depth + 1, b);
        Ok(match &self.arena[id] {
            Obj::Leaf(v) => v.clone(),
            Obj::List(v) => Value::List(v.iter().map(|&i| m(i, budget)).collect::<Result<_>>()?),
            Obj::Tuple(v) => Value::Tuple(v.iter().map(|&i| m(i, budget)).collect::<Result<_>>()?),
            Obj::Dict(v) => Value::Dict(v.iter().map(|&(k, x)| Ok((m(k, budget)?, m(x, budget)?))).collect::<Result<_>>()?),
            Obj::Object { callable, args, state } => Value::Object {
                callable: Box::new(m(*callable, budget)?),
                args: Box::new(m(*args, budget)?),
                state: state.map(|s| m(s, budget)).transpose()?.map(Box::new),
            },
            Obj::PersId(p) => Value::PersId(Box::new(m(*p, budget)?)),
        })
    }
}

/// Parses one pickle.
pub fn loads(data: &[u8]) -> Result<Value> {
    let mut r = Reader { data, pos: 0, arena: Vec::new(), stack: Vec::new(), memo: Default::default() };
    let root = r.run()?;
    let mut budget = MAX_NODES;
    r.materialize(root, 0, &mut budget)
}

pub use super::pickle_out::{dumps, Out};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_the_written_subset() {
        let v = Out::Dict(vec![
            ("a".into(), Out::Int(3)),
            ("big".into(), Out::Int(1 << 40)),
            ("neg".into(), Out::Int(-5)),
            ("f".into(), Out::Float(0.25)),
            ("l".into(), Out::List(vec![Out::Str("x".into()), Out::None, Out::Bool(true)])),
            ("t".into(), Out::Tuple(vec![Out::Int(0), Out::Int(1)])),
            ("od".into(), Out::OrderedDict(vec![("k".into(), Out::Float(1.5))])),
            ("dev".into(), Out::Device("cpu".into())),
        ]);
        let back = loads(&dumps(&v)).unwrap();
        assert_eq!(back.get("a"), Some(&Value::Int(3)));
        assert_eq!(back.get("big").and_then(Value::as_i64), Some(1 << 40));
        assert_eq!(back.get("neg").and_then(Value::as_i64), Some(-5));
        assert_eq!(back.get("f").and_then(Value::as_f64), Some(0.25));
        assert_eq!(back.get("l").and_then(Value::as_seq).map(|s| s.len()), Some(3));
        assert_eq!(back.get("t"), Some(&Value::Tuple(vec![Value::Int(0), Value::Int(1)])));
        assert_eq!(back.get("od").and_then(|d| d.get("k")).and_then(Value::as_f64), Some(1.5));
        assert!(matches!(back.get("dev"), Some(Value::Object { .. })));
    }

    #[test]
    fn memo_shares_mutated_containers_and_truncation_is_an_error() {
        // Python: pickle.dumps(({'a': 1}, ) * 2, protocol=2) shares the dict through the memo.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01sh\x00\x86q\x02.";
        let v = loads(p).unwrap();
        let t = v.as_seq().unwrap();
        assert_eq!(t[0], t[1]);
        assert_eq!(t[1].get("a"), Some(&Value::Int(1)));
        assert!(loads(&p[..p.len() - 3]).is_err());
    }
}
