//! Connected components with full connectivity, as `skimage.measure.label(connectivity=None)`
//! numbers them, and acvl_utils' `remove_all_but_largest_component`
//! (`acvl_utils/morphology/morphology_helper.py`).

/// Labels the connected components of `mask` (shape (Z, X, Y), C order) with full 26-connectivity;
/// returns per-voxel component ids (0 = background, 1.. in raster order of first voxel) and the
/// sizes indexed by id - 1. Same numbering as `skimage.measure.label`.
pub fn label_components(mask: &[bool], shape: [usize; 3]) -> (Vec<u32>, Vec<u64>) {
    let [nz, nx, ny] = shape;
    assert_eq!(mask.len(), nz * nx * ny, "mask length does not match shape");
    let mut ids = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || ids[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        let mut size = 0u64;
        ids[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            let (z, x, y) = (i / (nx * ny), (i / ny) % nx, i % ny);
            for dz in -1i64..=1 {
                let zz = z as i64 + dz;
                if zz < 0 || zz >= nz as i64 {
                    continue;
                }
                for dx in -1i64..=1 {
                    let xx = x as i64 + dx;
                    if xx < 0 || xx >= nx as i64 {
                        continue;
                    }
                    for dy in -1i64..=1 {
                        let yy = y as i64 + dy;
                        if yy < 0 || yy >= ny as i64 {
                            continue;
                        }
                        let j = (zz as usize * nx + xx as usize) * ny + yy as usize;
                        if mask[j] && ids[j] == 0 {
                            ids[j] = id;
                            stack.push(j);
                        }
                    }
                }
            }
        }
        sizes.push(size);
    }
    (ids, sizes)
}

/// acvl's `remove_all_but_largest_component`: true where a component of maximal size is (all of
/// them on a tie); all false for an empty mask.
pub fn remove_all_but_largest_component(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let (ids, sizes) = label_components(mask, shape);
    let Some(&max) = sizes.iter().max() else {
        return vec![false; mask.len()];
    };
    let keep: Vec<bool> = sizes.iter().map(|&s| s == max).collect();
    ids.iter().map(|&id| id != 0 && keep[id as usize - 1]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (Vec<bool>, [usize; 3]) {
        let nx = rows.len();
        let ny = rows[0].len();
        (rows.iter().flat_map(|r| r.chars().map(|c| c == '#')).collect(), [1, nx, ny])
    }

    #[test]
    fn diagonal_pixels_are_connected_like_skimage_full_connectivity() {
        // skimage.measure.label(a, connectivity=None) on this 2D array gives 2 components:
        // the diagonal chain (4 px) and the lone pixel (1 px); 4-connectivity would give 5.
        let (m, s) = grid(&["#...", ".#..", "..#.", "...#", "#..."]);
        let m: Vec<bool> = {
            let mut m = m;
            m[3 * 4 + 3] = true;
            m
        };
        let (ids, sizes) = label_components(&m, s);
        assert_eq!(sizes, vec![4, 1]);
        assert_eq!(ids[0], 1);
        assert_eq!(ids[4 * 4], 2);
        let keep = remove_all_but_largest_component(&m, s);
        assert!(keep[0] && keep[15] && !keep[16]);
    }

    #[test]
    fn volumes_use_26_neighbourhood_and_ties_keep_all() {
        // voxels (0,0,0) and (1,1,1) touch only at a corner: one component in 3D full connectivity.
        let mut m = vec![false; 8];
        m[0] = true;
        m[7] = true;
        let (_, sizes) = label_components(&m, [2, 2, 2]);
        assert_eq!(sizes, vec![2]);
        // two separate equal components: both kept (acvl keeps every component of maximal size).
        let (m, s) = grid(&["#.#"]);
        assert_eq!(remove_all_but_largest_component(&m, s), vec![true, false, true]);
        assert_eq!(remove_all_but_largest_component(&[false; 3], [1, 1, 3]), vec![false; 3]);
    }
}
