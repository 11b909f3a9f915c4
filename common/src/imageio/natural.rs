//! Natural 2D images: PNG (8/16-bit), TIFF (8/16/32-bit integer, float32/64), BMP and JPEG, gray,
//! gray+alpha, RGB and RGBA, read the way nnU-Net's NaturalImage2DIO reads them
//! (`nnunetv2/imageio/natural_image_reader_writer.py::NaturalImage2DIO.read_images`): an (H, W) image becomes
//! (1, 1, H, W), an (H, W, C) image becomes (C, 1, H, W), float32, spacing (999, 1, 1).
//!
//! TIFF goes through the `tiff` crate directly because `image` refuses single-channel float
//! TIFFs, which microscopy tools write routinely.
use super::{Geometry, ImageData};
use crate::{Error, Result};
use image::DynamicImage;
use std::path::Path;

fn natural_geometry(format: &str) -> Geometry {
    Geometry { spacing: [999.0, 1.0, 1.0], affine: None, format: format.into() }
}

/// Interleaved (H, W, C) samples into planar (C, 1, H, W) float32.
fn planar<T: Copy>(h: usize, w: usize, c: usize, src: &[T], f: impl Fn(T) -> f32) -> Vec<f32> {
    let mut out = vec![0f32; c * h * w];
    let plane = h * w;
    for (i, px) in src.chunks_exact(c).enumerate().take(plane) {
        for (k, &v) in px.iter().enumerate() {
            out[k * plane + i] = f(v);
        }
    }
    out
}

fn from_dynamic(path: &Path, img: DynamicImage, format: &str) -> Result<ImageData> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, data) = match img {
        DynamicImage::ImageLuma8(b) => (1, planar(h, w, 1, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageLumaA8(b) => (2, planar(h, w, 2, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageRgb8(b) => (3, planar(h, w, 3, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageRgba8(b) => (4, planar(h, w, 4, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageLuma16(b) => (1, planar(h, w, 1, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageLumaA16(b) => (2, planar(h, w, 2, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageRgb16(b) => (3, planar(h, w, 3, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageRgba16(b) => (4, planar(h, w, 4, b.as_raw(), |v| v as f32)),
        DynamicImage::ImageRgb32F(b) => (3, planar(h, w, 3, b.as_raw(), |v| v)),
        DynamicImage::ImageRgba32F(b) => (4, planar(h, w, 4, b.as_raw(), |v| v)),
        other => {
            return Err(Error::Image {
                path: path.into(),
                msg: format!("unsupported pixel layout {:?}; save it as 8/16-bit gray, RGB or RGBA", other.color()),
            })
        }
    };
    Ok(ImageData { shape: [c, 1, h, w], data, geometry: natural_geometry(format) })
}

fn read_tiff(path: &Path) -> Result<ImageData> {
    use tiff::decoder::{Decoder, DecodingResult, Limits};
    use tiff::ColorType;
    let bad = |msg: String| Error::Image { path: path.into(), msg };
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = Decoder::new(std::io::BufReader::new(f))
        .map_err(|e| bad(format!("not a readable TIFF ({e}); the file is corrupt or truncated")))?
        .with_limits(Limits::unlimited());
    let (w, h) = dec.dimensions().map_err(|e| bad(format!("cannot read TIFF dimensions: {e}")))?;
    let (w, h) = (w as usize, h as usize);
    let ct = dec.colortype().map_err(|e| bad(format!("cannot read TIFF color type: {e}")))?;
    let c = match ct {
        ColorType::Gray(_) => 1,
        ColorType::GrayA(_) => 2,
        ColorType::RGB(_) => 3,
        ColorType::RGBA(_) => 4,
        other => {
            return Err(bad(format!("TIFF color type {other:?} is not supported; save it as gray, RGB or RGBA")));
        }
    };
    let res = dec
        .read_image()
        .map_err(|e| bad(format!("cannot decode TIFF pixel data ({e}); the file is corrupt or uses an unsupported compression")))?;
    if dec.more_images() {
        return Err(bad(
            "multi-page TIFF (a stack); nnU-Net's 2D reader wants one 2D image per file: split the pages into separate files (one case or one channel each)".into(),
        ));
    }
    let n = h * w * c;
    let data = match res {
        DecodingResult::U8(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::U16(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::U32(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::U64(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::I8(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::I16(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::I32(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::I64(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        DecodingResult::F16(v) if v.len() >= n => planar(h, w, c, &v, |x| x.to_f32()),
        DecodingResult::F32(v) if v.len() >= n => planar(h, w, c, &v, |x| x),
        DecodingResult::F64(v) if v.len() >= n => planar(h, w, c, &v, |x| x as f32),
        _ => return Err(bad(format!("TIFF pixel data is shorter than {h}x{w}x{c} samples; the file is truncated"))),
    };
    Ok(ImageData { shape: [c, 1, h, w], data, geometry: natural_geometry("tif") })
}

/// Reads a PNG, TIFF, BMP or JPEG into (C, 1, H, W) float32 with spacing (999, 1, 1).
pub fn read_natural(path: &Path) -> Result<ImageData> {
    let format = super::detect_format(path).unwrap_or("");
    if format == "tif" {
        return read_tiff(path);
    }
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let mut reader = reader;
    reader.no_limits();
    let img = reader.decode().map_err(|e| Error::Image {
        path: path.into(),
        msg: format!("cannot decode ({e}); the file is corrupt, truncated or not really a {format:?} file: re-export it"),
    })?;
    let mut out = from_dynamic(path, img, if format.is_empty() { "png" } else { format })?;
    if format == "bmp" && bmp_bits_per_pixel(path)? <= 8 {
        collapse_gray_palette(&mut out);
    }
    Ok(out)
}

/// Bits per pixel from the BMP info header (offset 28).
fn bmp_bits_per_pixel(path: &Path) -> Result<u16> {
    use std::io::Read;
    let mut head = [0u8; 30];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    f.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
    Ok(u16::from_le_bytes([head[28], head[29]]))
}

/// A palette BMP (<= 8 bits per pixel) is expanded to RGB by the decoder; when its palette is
/// gray (R = G = B everywhere, as 8-bit gray BMPs and 1-bit masks are) it is a gray image, which
/// is how PIL, and so nnU-Net's skimage reader, opens it.
fn collapse_gray_palette(img: &mut ImageData) {
    let n = img.n_voxels();
    let c = img.shape[0];
    if c < 3 {
        return;
    }
    let (r, g, b) = (&img.data[..n], &img.data[n..2 * n], &img.data[2 * n..3 * n]);
    let alpha_opaque = c < 4 || img.data[3 * n..4 * n].iter().all(|&a| a == 255.0);
    if alpha_opaque && r == g && g == b {
        img.data.truncate(n);
        img.shape[0] = 1;
    }
}

/// Reads a palette (indexed-color) PNG as its palette INDICES, (1, 1, H, W); `None` for any other
/// PNG. Label maps are often saved this way (PASCAL VOC and many annotation tools): the index is
/// the label and the palette only colors it for viewing. Decoders, nnU-Net's skimage included,
/// expand the palette to RGB, which would turn every label map into a 3-channel color image.
pub fn read_png_palette_indices(path: &Path) -> Result<Option<ImageData>> {
    let bad = |msg: String| Error::Image { path: path.into(), msg };
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(|e| bad(format!("cannot decode PNG ({e}); the file is corrupt or truncated")))?;
    let info = reader.info();
    if info.color_type != png::ColorType::Indexed {
        return Ok(None);
    }
    let (w, h, bits) = (info.width as usize, info.height as usize, info.bit_depth as usize);
    let mut buf = vec![0u8; reader.output_buffer_size().unwrap_or(0)];
    let frame =
        reader.next_frame(&mut buf).map_err(|e| bad(format!("cannot decode PNG pixel data ({e}); the file is corrupt or truncated")))?;
    let stride = frame.line_size;
    let mut data = Vec::with_capacity(h * w);
    for y in 0..h {
        let row = &buf[y * stride..(y + 1) * stride];
        for x in 0..w {
            // Indices narrower than a byte are packed most significant bits first.
            let v = if bits == 8 {
                row[x]
            } else {
                let per = 8 / bits;
                (row[x / per] >> (8 - bits * (x % per + 1))) & ((1u8 << bits) - 1)
            };
            data.push(v as f32);
        }
    }
    Ok(Some(ImageData { shape: [1, 1, h, w], data, geometry: natural_geometry("png") }))
}

/// Writes a label map of shape (H, W) as PNG, TIFF or BMP (`format` as [`super::detect_format`]
/// names them): 8-bit gray when every label is at most 255, else 16-bit (PNG/TIFF only). This
/// is how predictions go back to a user who gave PNG/TIFF/BMP masks.
pub fn write_seg_natural(path: &Path, h: usize, w: usize, labels: &[u16], format: &str) -> Result<()> {
    if labels.len() != h * w {
        return Err(Error::Invalid(format!("cannot write {}: {} labels do not fill {h}x{w}", path.display(), labels.len())));
    }
    let max = labels.iter().copied().max().unwrap_or(0);
    let enc_err = |e: String| Error::Image { path: path.into(), msg: format!("cannot encode: {e}") };
    let mut bytes: Vec<u8> = Vec::new();
    match format {
        "tif" => {
            use tiff::encoder::{colortype, TiffEncoder};
            let mut cur = std::io::Cursor::new(&mut bytes);
            let mut enc = TiffEncoder::new(&mut cur).map_err(|e| enc_err(e.to_string()))?;
            if max <= 255 {
                let v: Vec<u8> = labels.iter().map(|&x| x as u8).collect();
                enc.write_image::<colortype::Gray8>(w as u32, h as u32, &v).map_err(|e| enc_err(e.to_string()))?;
            } else {
                enc.write_image::<colortype::Gray16>(w as u32, h as u32, labels).map_err(|e| enc_err(e.to_string()))?;
            }
        }
        "png" | "bmp" => {
            let fmt = if format == "png" { image::ImageFormat::Png } else { image::ImageFormat::Bmp };
            let img = if max <= 255 {
                let v: Vec<u8> = labels.iter().map(|&x| x as u8).collect();
                DynamicImage::ImageLuma8(image::GrayImage::from_raw(w as u32, h as u32, v).unwrap())
            } else if format == "png" {
                DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w as u32, h as u32, labels.to_vec()).unwrap())
            } else {
                return Err(Error::Invalid(format!(
                    "cannot write {}: label {max} does not fit an 8-bit BMP; write PNG or TIFF instead",
                    path.display()
                )));
            };
            img.write_to(&mut std::io::Cursor::new(&mut bytes), fmt).map_err(|e| enc_err(e.to_string()))?;
        }
        other => {
            return Err(Error::Invalid(format!(
                "cannot write {}: masks are written as png, tif or bmp, not {other:?} (JPEG would corrupt labels)",
                path.display()
            )))
        }
    }
    crate::hash::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_rgb_rgba_16bit_png_and_float_tiff() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let rgb = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 200]));
        rgb.save(d.join("rgb.png")).unwrap();
        let img = read_natural(&d.join("rgb.png")).unwrap();
        assert_eq!(img.shape, [3, 1, 2, 3]);
        assert_eq!(img.data[..6], [0., 1., 2., 0., 1., 2.]); // R plane, rows of x
        assert_eq!(img.data[6..12], [0., 0., 0., 1., 1., 1.]); // G plane = y
        assert_eq!(img.geometry.spacing, [999.0, 1.0, 1.0]);
        let rgba = image::RgbaImage::from_fn(2, 2, |_, _| image::Rgba([1, 2, 3, 4]));
        rgba.save(d.join("a.png")).unwrap();
        assert_eq!(read_natural(&d.join("a.png")).unwrap().shape, [4, 1, 2, 2]);
        let g16: image::ImageBuffer<image::Luma<u16>, Vec<u16>> = image::ImageBuffer::from_fn(2, 1, |x, _| image::Luma([60000 + x as u16]));
        g16.save(d.join("g16.png")).unwrap();
        assert_eq!(read_natural(&d.join("g16.png")).unwrap().data, [60000.0, 60001.0]);
        // Gray float32 TIFF, which the `image` crate refuses.
        let mut bytes = Vec::new();
        {
            let mut enc = tiff::encoder::TiffEncoder::new(std::io::Cursor::new(&mut bytes)).unwrap();
            enc.write_image::<tiff::encoder::colortype::Gray32Float>(2, 2, &[0.5, -1.0, 3.25, 1e6]).unwrap();
        }
        std::fs::write(d.join("f.tif"), &bytes).unwrap();
        let t = read_natural(&d.join("f.tif")).unwrap();
        assert_eq!((t.shape, t.data.clone()), ([1, 1, 2, 2], vec![0.5, -1.0, 3.25, 1e6]));
    }

    #[test]
    fn palette_png_gives_indices() {
        let dir = tempfile::tempdir().unwrap();
        // 8-bit: one byte per index. 2-bit, width 3: one byte per row, packed high bits first:
        // row [0, 1, 2] = 00 01 10 00, row [1, 2, 0] = 01 10 00 00.
        for (bits, rows) in [(png::BitDepth::Eight, vec![0u8, 1, 2, 1, 0, 2]), (png::BitDepth::Two, vec![0b0001_1000, 0b0110_0000])] {
            let p = dir.path().join("p.png");
            let f = std::fs::File::create(&p).unwrap();
            let mut enc = png::Encoder::new(f, 3, 2);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(bits);
            enc.set_palette(vec![0, 0, 0, 128, 0, 0, 0, 128, 0]);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&rows).unwrap();
            drop(w);
            let got = read_png_palette_indices(&p).unwrap().unwrap();
            assert_eq!(got.shape, [1, 1, 2, 3]);
            if bits == png::BitDepth::Eight {
                assert_eq!(got.data, [0., 1., 2., 1., 0., 2.]);
            } else {
                assert_eq!(got.data, [0., 1., 2., 1., 2., 0.]);
            }
            // The generic reader expands the palette to color, as nnU-Net's does.
            assert_eq!(read_natural(&p).unwrap().shape[0], 3);
        }
        gray_png_for_test(&dir.path().join("g.png"));
        assert!(read_png_palette_indices(&dir.path().join("g.png")).unwrap().is_none());
    }

    fn gray_png_for_test(p: &Path) {
        image::GrayImage::from_pixel(2, 2, image::Luma([3])).save(p).unwrap();
    }

    #[test]
    fn seg_writers_pick_bit_depth() {
        let dir = tempfile::tempdir().unwrap();
        for fmt in ["png", "tif", "bmp"] {
            let p = dir.path().join(format!("m.{fmt}"));
            write_seg_natural(&p, 2, 2, &[0, 1, 2, 255], fmt).unwrap();
            assert_eq!(read_natural(&p).unwrap().data, [0., 1., 2., 255.], "{fmt}");
        }
        for fmt in ["png", "tif"] {
            let p = dir.path().join(format!("m16.{fmt}"));
            write_seg_natural(&p, 1, 2, &[0, 300], fmt).unwrap();
            assert_eq!(read_natural(&p).unwrap().data, [0., 300.], "{fmt}");
        }
        let e = write_seg_natural(&dir.path().join("x.bmp"), 1, 1, &[300], "bmp").unwrap_err().to_string();
        assert!(e.contains("8-bit BMP"), "{e}");
    }
}
