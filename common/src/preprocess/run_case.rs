//! One case through nnU-Net v2's `DefaultPreprocessor.run_case_npy`: transpose -> crop to nonzero
//! -> normalize -> resample, then foreground locations for oversampling.
use super::locations::{sample_foreground_locations, LocationClass};
use super::normalize::normalize_channel;
use crate::case::CaseProperties;
use crate::crop::{crop_to_nonzero, transpose_spatial, Cropped};
use crate::dataset_json::DatasetJson;
use crate::imageio::ImageData;
use crate::plans::{Configuration2d, Plans};
use crate::resample::compute_new_shape;
use crate::resample::resample_data_to_shape;
use crate::{Error, Result};
use std::collections::BTreeMap;

/// (data (C,Z,X,Y) float32, its shape, seg int8 (1,Z,X,Y), properties): what [`preprocess_case`] returns.
pub type PreprocessedCase = (Vec<f32>, [usize; 4], Vec<i8>, CaseProperties);

/// Preprocesses one case (`DefaultPreprocessor.run_case_npy`). `image` and `seg` are as read (C, Z, X, Y), before transpose.
/// Returns (data (C,Z,X,Y) float32, its shape, seg int8 (1,Z,X,Y), properties). With `seg = None`
/// (inference) the returned seg is the nonzero mask (0 inside, -1 outside) and no class locations
/// are sampled. `data_sha256`/`seg_sha256` are left empty (filled when written).
pub fn preprocess_case(
    plans: &Plans,
    config: &Configuration2d,
    dataset_json: &DatasetJson,
    image: ImageData,
    seg: Option<ImageData>,
) -> Result<PreprocessedCase> {
    if let Some(s) = &seg {
        if s.shape[1..] != image.shape[1..] {
            return Err(Error::Invalid(format!(
                "segmentation shape {:?} differs from image shape {:?}; run `nnunet verify` on the dataset",
                &s.shape[1..],
                &image.shape[1..]
            )));
        }
    }
    let nch = config.normalization_schemes.len();
    if image.shape[0] != nch {
        return Err(Error::Invalid(format!(
            "image has {} channel(s) but the plans expect {nch} (dataset.json channel_names)",
            image.shape[0]
        )));
    }
    let fwd = &plans.transpose_forward;
    let geometry = image.geometry.clone();
    let spacing: Vec<f64> = fwd.iter().map(|&i| geometry.spacing[i]).collect();
    let (data, shape) = transpose_spatial(&image.data, image.shape, fwd);
    let image_t = ImageData { shape, data, geometry: geometry.clone() };
    drop(image);
    let seg_t = seg.map(|s| {
        let (d, sh) = transpose_spatial(&s.data, s.shape, fwd);
        ImageData { shape: sh, data: d, geometry: s.geometry }
    });
    let has_seg = seg_t.is_some();
    let crop = crop_to_nonzero(&image_t, seg_t.as_ref());
    drop(image_t);
    drop(seg_t);
    let Cropped { mut data, data_shape, seg: mut segc, bbox, shape_before } = crop;

    let mut target = vec![spacing[0]];
    target.extend_from_slice(&config.spacing);
    let sz = [data_shape[1], data_shape[2], data_shape[3]];
    let ns = compute_new_shape(&sz, &spacing, &target);
    let new_shape = [ns[0], ns[1], ns[2]];

    let n = sz.iter().product::<usize>();
    for c in 0..nch {
        let props = plans.foreground_intensity_properties_per_channel.get(&c.to_string());
        normalize_channel(&mut data[c * n..(c + 1) * n], &segc, config.normalization_schemes[c], config.use_mask_for_norm[c], props)?;
    }
    if new_shape != sz {
        let order = config.resampling_fn_data_kwargs.order;
        data = resample_data_to_shape(&data, data_shape, new_shape, &spacing, &target, order, false);
        let segf: Vec<f32> = segc.iter().map(|&v| v as f32).collect();
        let order_s = config.resampling_fn_seg_kwargs.order;
        segc = resample_data_to_shape(&segf, [1, sz[0], sz[1], sz[2]], new_shape, &spacing, &target, order_s, true)
            .into_iter()
            .map(|v| v as i16)
            .collect();
    }
    let out_shape = [nch, new_shape[0], new_shape[1], new_shape[2]];

    let mut class_locations = BTreeMap::new();
    if has_seg {
        // `collect_for_this`: the foreground regions with regions, else the foreground labels.
        let lm = crate::labels::LabelManager::new(dataset_json)?;
        let mut classes: Vec<LocationClass> = match lm.has_regions() {
            true => lm.foreground_regions().iter().map(LocationClass::from).collect(),
            false => lm.foreground_labels().into_iter().map(LocationClass::Label).collect(),
        };
        if dataset_json.ignore_label().is_some() {
            let mut all = vec![-1];
            all.extend(dataset_json.label_values());
            classes.push(LocationClass::Union(all));
        }
        class_locations = sample_foreground_locations(&segc, new_shape, &classes);
    }
    if let Some(&bad) = segc.iter().find(|&&v| !(-128..=127).contains(&v)) {
        return Err(Error::Invalid(format!("label {bad} does not fit the int8 seg storage (labels must be < 128)")));
    }
    let seg8: Vec<i8> = segc.into_iter().map(|v| v as i8).collect();
    let props = CaseProperties {
        spacing,
        shape_before_cropping: shape_before.to_vec(),
        bbox_used_for_cropping: bbox.to_vec(),
        shape_after_cropping_and_before_resampling: sz.to_vec(),
        class_locations,
        raw_geometry: Some(geometry),
        data_sha256: String::new(),
        seg_sha256: String::new(),
    };
    Ok((data, out_shape, seg8, props))
}
