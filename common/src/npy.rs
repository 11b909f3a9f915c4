//! NumPy `.npy` (format 1.0) and `.npz` reading and writing, little-endian, C order.
//! Files written here are readable with `numpy.load`, and `.npy` files can be memory-mapped
//! ([`MappedArray`]) so the training loader touches only the patches it crops.
use crate::{Error, Result};
use std::io::{Read, Write};
use std::path::Path;

/// Element types we store.
pub trait Element: bytemuck::Pod + Copy + Default + Send + Sync + 'static {
    const DESCR: &'static str;
}
impl Element for f32 {
    const DESCR: &'static str = "<f4";
}
impl Element for f64 {
    const DESCR: &'static str = "<f8";
}
impl Element for i8 {
    const DESCR: &'static str = "|i1";
}
impl Element for u8 {
    const DESCR: &'static str = "|u1";
}
impl Element for i16 {
    const DESCR: &'static str = "<i2";
}
impl Element for u16 {
    const DESCR: &'static str = "<u2";
}
impl Element for i32 {
    const DESCR: &'static str = "<i4";
}
impl Element for i64 {
    const DESCR: &'static str = "<i8";
}

fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_str = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic(6) + version(2) + len(2) + dict + '\n' must be a multiple of 64
    let total = 10 + dict.len() + 1;
    let pad = (64 - total % 64) % 64;
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = Vec::with_capacity(10 + dict.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Serializes an array to `.npy` bytes.
pub fn to_npy_bytes<T: Element>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy: shape does not match data length");
    let mut out = header_bytes(T::DESCR, shape);
    out.extend_from_slice(bytemuck::cast_slice(data));
    out
}

/// Writes an array to `path` atomically.
pub fn write_npy<T: Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy: shape does not match data length");
    crate::hash::write_atomic_with(path, |w| {
        w.write_all(&header_bytes(T::DESCR, shape))?;
        w.write_all(bytemuck::cast_slice(data))
    })
}

/// Parsed `.npy` header: dtype descriptor, shape and data offset.
#[derive(Debug, Clone)]
pub struct Header {
    pub descr: String,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start + hlen;
    if bytes.len() < end {
        return Err("truncated header".into());
    }
    let dict = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not UTF-8")?;
    let field = |key: &str| -> Option<&str> {
        let k = format!("'{key}':");
        let i = dict.find(&k)? + k.len();
        Some(dict[i..].trim_start())
    };
    let descr = field("descr").ok_or("no descr")?;
    let descr = descr.strip_prefix('\'').ok_or("bad descr")?;
    let descr = descr[..descr.find('\'').ok_or("bad descr")?].to_string();
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into());
    }
    let shape = field("shape").ok_or("no shape")?;
    let shape = &shape[1..shape.find(')').ok_or("bad shape")?];
    let shape = shape
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("bad shape entry {s:?}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Header { descr, shape, data_offset: end })
}

fn check_descr<T: Element>(descr: &str) -> std::result::Result<(), String> {
    let norm = |d: &str| d.replace(['=', '|'], "<");
    if norm(descr) != norm(T::DESCR) {
        return Err(format!("dtype {descr} where {} was expected", T::DESCR));
    }
    Ok(())
}

/// Decodes `.npy` bytes into (shape, data).
pub fn from_npy_bytes<T: Element>(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<T>), String> {
    let h = parse_header(bytes)?;
    check_descr::<T>(&h.descr)?;
    let n: usize = h.shape.iter().product();
    let need = h.data_offset + n * std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(format!("truncated: {} bytes, {need} needed", bytes.len()));
    }
    let mut data = vec![T::default(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut data).copy_from_slice(&bytes[h.data_offset..need]);
    Ok((h.shape, data))
}

pub fn read_npy<T: Element>(path: &Path) -> Result<(Vec<usize>, Vec<T>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_npy_bytes(&bytes).map_err(|m| Error::format(path, m))
}

/// A read-only memory-mapped `.npy` array.
pub struct MappedArray<T: Element> {
    map: memmap2::Mmap,
    pub shape: Vec<usize>,
    offset: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Element> MappedArray<T> {
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the files are written atomically (rename) and never modified in place.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
        let h = parse_header(&map).map_err(|m| Error::format(path, m))?;
        check_descr::<T>(&h.descr).map_err(|m| Error::format(path, m))?;
        let n: usize = h.shape.iter().product();
        if map.len() < h.data_offset + n * std::mem::size_of::<T>() {
            return Err(Error::format(path, "truncated .npy file"));
        }
        if h.data_offset % std::mem::align_of::<T>() != 0 {
            return Err(Error::format(path, "misaligned .npy data offset"));
        }
        Ok(MappedArray { map, shape: h.shape, offset: h.data_offset, _t: std::marker::PhantomData })
    }
    pub fn as_slice(&self) -> &[T] {
        let n: usize = self.shape.iter().product();
        bytemuck::cast_slice(&self.map[self.offset..self.offset + n * std::mem::size_of::<T>()])
    }
}

/// Writes an `.npz` (zip of `.npy` members, deflate-compressed like `np.savez_compressed`).
pub fn write_npz_f32(path: &Path, members: &[(&str, &[usize], &[f32])]) -> Result<()> {
    crate::hash::write_atomic_with(path, |w| {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut zip = zip::ZipWriter::new(&mut buf);
            let opts =
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).compression_level(Some(1));
            for (name, shape, data) in members {
                zip.start_file(format!("{name}.npy"), opts).map_err(std::io::Error::other)?;
                zip.write_all(&to_npy_bytes(shape, data))?;
            }
            zip.finish().map_err(std::io::Error::other)?;
        }
        w.write_all(buf.get_ref())
    })
}

/// Reads one member (`key`, without `.npy`) of an `.npz` file.
pub fn read_npz_member<T: Element>(path: &Path, key: &str) -> Result<(Vec<usize>, Vec<T>)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| Error::format(path, e.to_string()))?;
    let mut member = zip.by_name(&format!("{key}.npy")).map_err(|_| Error::format(path, format!("no array '{key}' in the .npz")))?;
    let mut bytes = Vec::new();
    member.read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    from_npy_bytes(&bytes).map_err(|m| Error::format(path, format!("member {key}: {m}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn npy_round_trip_and_mmap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        write_npy(&p, &[2, 3, 4], &data).unwrap();
        let (shape, back) = read_npy::<f32>(&p).unwrap();
        assert_eq!(shape, vec![2, 3, 4]);
        assert_eq!(back, data);
        let m = MappedArray::<f32>::open(&p).unwrap();
        assert_eq!(m.as_slice(), &data[..]);
        assert!(read_npy::<i8>(&p).is_err(), "dtype mismatch must be refused");
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(parse_header(&bytes).unwrap().data_offset % 64, 0);
    }
    #[test]
    fn npz_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.npz");
        let d = vec![1.0f32, 2.0, 3.0, 4.0];
        write_npz_f32(&p, &[("probabilities", &[1, 2, 2], &d)]).unwrap();
        let (s, back) = read_npz_member::<f32>(&p, "probabilities").unwrap();
        assert_eq!(s, vec![1, 2, 2]);
        assert_eq!(back, d);
    }
}
