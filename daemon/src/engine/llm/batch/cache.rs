//! The KV cache of a batch of sequences, for graphs whose cache grows by
//! concatenation (Hugging Face Optimum's layout): one tensor per past name,
//! `[rows, kv_heads, width, head_dim]`, fed to a decode step of every row at
//! once and replaced by the step's presents.
//!
//! Rows of different lengths are right-aligned: row `r` holds its `len[r]`
//! positions in the last columns, and the columns before them are padding,
//! masked out by `attention_mask` (zeros in the cache, never read). Every
//! step appends one column for all rows, so `width` stays the longest
//! row's length. Rows join (a new request's prefilled cache) and leave (a
//! finished one) by one copy of the cache into a new layout, on the host;
//! decode steps copy nothing the graph does not.

use half::f16;
use ort::memory::{AllocationDevice, MemoryInfo};
use ort::session::{IoBinding, Session};
use ort::value::{DynTensorValueType, DynValue, PrimitiveTensorElementType, Tensor};

use crate::engine::llm::decoder::{
    GraphSpec, KvType, bind_past_and_presents, rows_logits, run_bound, run_values, take_presents,
};

/// Where the batch's cache lives between steps.
#[derive(Debug)]
pub(crate) enum BatchPlacement {
    /// Session values on the host, fed back each step.
    Host,
    /// Presents allocated in this (device) memory and bound as the next
    /// step's past; a new layout is built on the host and copied in by the
    /// next step.
    Device(MemoryInfo<'static>),
}

#[derive(Debug)]
enum Runner {
    Host,
    Device {
        binding: Box<IoBinding>,
        memory: MemoryInfo<'static>,
    },
}

/// The cache of the rows being decoded together.
#[derive(Debug)]
pub(crate) struct BatchCache {
    runner: Runner,
    /// One per past name, `[rows, kv_heads, width, head_dim]`; empty when
    /// there are no rows.
    past: Vec<DynValue>,
    /// Each row's cached positions.
    lens: Vec<usize>,
    width: usize,
}

/// A sequence's own cache, `[1, kv_heads, len, head_dim]` per past name,
/// about to join the batch.
#[derive(Debug)]
pub(crate) struct Joining {
    pub past: Vec<DynValue>,
    pub len: usize,
}

impl BatchCache {
    pub(crate) fn new(session: &Session, placement: BatchPlacement) -> Result<Self, ort::Error> {
        let runner = match placement {
            BatchPlacement::Host => Runner::Host,
            BatchPlacement::Device(memory) => Runner::Device {
                binding: Box::new(session.create_binding()?),
                memory,
            },
        };
        Ok(Self {
            runner,
            past: Vec::new(),
            lens: Vec::new(),
            width: 0,
        })
    }

    /// Rows in the batch.
    pub(crate) fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Positions the cache holds, padding included (`rows × width`).
    pub(crate) fn positions(&self) -> usize {
        self.lens.len() * self.width
    }

    /// Drops every row (after a failed step, whose cache is lost).
    pub(crate) fn clear(&mut self) {
        self.past.clear();
        self.lens.clear();
        self.width = 0;
        if let Runner::Device { binding, .. } = &mut self.runner {
            binding.clear();
        }
    }

    /// One decode step: `ids[r]` after row `r`'s cached tokens, for every
    /// row at once. Writes the logits of each row, one after the other
    /// (`rows × vocab`), into `logits`. On an error the cache is lost:
    /// [`BatchCache::clear`] it.
    pub(crate) fn step(
        &mut self,
        session: &mut Session,
        spec: &GraphSpec,
        ids: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ort::Error> {
        let rows = self.lens.len();
        if ids.len() != rows || rows == 0 {
            return Err(ort::Error::new(format!(
                "a decode step of {rows} rows was given {} tokens",
                ids.len()
            )));
        }
        let width = self.width;
        let total = width + 1;
        let input_ids = Tensor::from_array((
            [rows, 1],
            ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        ))?;
        let positions = Tensor::from_array((
            [rows, 1],
            self.lens
                .iter()
                .map(|&len| i64::try_from(len).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        ))?;
        let mask = Tensor::from_array(([rows, total], step_mask(&self.lens, width)))?;
        let past = std::mem::take(&mut self.past);
        let mut outputs = match &mut self.runner {
            Runner::Host => run_values(session, spec, [input_ids, mask, positions], past)?,
            Runner::Device { binding, memory } => {
                bind_past_and_presents(binding, memory, spec, &past)?;
                run_bound(session, binding, spec, [&input_ids, &mask, &positions])?
            }
        };
        rows_logits(spec, &outputs, rows, 1, logits)?;
        self.past = take_presents(spec, &mut outputs)?;
        self.width = total;
        for len in &mut self.lens {
            *len += 1;
        }
        Ok(())
    }

    /// Keeps the rows `keep` (old indices, in their new order) and appends
    /// `joining` as the last row, in one new layout as narrow as the
    /// longest row.
    pub(crate) fn relayout(
        &mut self,
        spec: &GraphSpec,
        keep: &[usize],
        joining: Option<Joining>,
    ) -> Result<(), ort::Error> {
        let mut lens: Vec<usize> = keep.iter().map(|&row| self.lens[row]).collect();
        if let Some(joining) = &joining {
            lens.push(joining.len);
        }
        let width = lens.iter().copied().max().unwrap_or(0);
        if lens.is_empty() || width == 0 {
            self.clear();
            return Ok(());
        }
        let old = Layout {
            lens: &self.lens,
            width: self.width,
            kv_heads: spec.kv_heads,
            head_dim: spec.head_dim,
        };
        let new = Layout {
            lens: &lens,
            width,
            ..old
        };
        let mut past = Vec::with_capacity(self.past.len().max(spec.layers * 2));
        for index in 0..spec.layers * 2 {
            let from = self.past.get(index);
            let extra = joining.as_ref().map(|j| (&j.past[index], j.len));
            past.push(match spec.kv_type {
                KvType::F32 => relayout_one::<f32>(from, &old, keep, extra, &new)?,
                KvType::F16 => relayout_one::<f16>(from, &old, keep, extra, &new)?,
            });
        }
        self.past = past;
        self.lens = lens;
        self.width = width;
        Ok(())
    }
}

/// `attention_mask` for a step: each row's cached columns and the new one.
fn step_mask(lens: &[usize], width: usize) -> Vec<i64> {
    let mut mask = Vec::with_capacity(lens.len() * (width + 1));
    for &len in lens {
        let pad = width - len;
        mask.extend(std::iter::repeat_n(0, pad));
        mask.extend(std::iter::repeat_n(1, len + 1));
    }
    mask
}

/// The shape of a batch's cache tensors.
#[derive(Debug, Clone, Copy)]
struct Layout<'l> {
    lens: &'l [usize],
    width: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Layout<'_> {
    /// Where row `row`'s data for head `head` starts, and how long it is.
    fn span(&self, row: usize, head: usize) -> std::ops::Range<usize> {
        let len = self.lens[row];
        let start = ((row * self.kv_heads + head) * self.width + self.width - len) * self.head_dim;
        start..start + len * self.head_dim
    }

    fn size(&self) -> usize {
        self.lens.len() * self.kv_heads * self.width * self.head_dim
    }
}

/// The host copy of a cache tensor, wherever it lives.
fn on_host(value: &DynValue) -> Result<Option<DynValue>, ort::Error> {
    let tensor = value.view().downcast::<DynTensorValueType>()?;
    if tensor.memory_info().is_cpu_accessible() {
        return Ok(None);
    }
    Ok(Some(tensor.to(AllocationDevice::CPU, 0)?.into_dyn()))
}

fn host_data<'v, T: PrimitiveTensorElementType + std::fmt::Debug>(
    value: &'v DynValue,
    copy: &'v Option<DynValue>,
) -> Result<&'v [T], ort::Error> {
    Ok(copy.as_ref().unwrap_or(value).try_extract_tensor::<T>()?.1)
}

/// One past name's tensor in the new layout.
fn relayout_one<T: PrimitiveTensorElementType + Copy + Default + std::fmt::Debug + 'static>(
    from: Option<&DynValue>,
    old: &Layout<'_>,
    keep: &[usize],
    joining: Option<(&DynValue, usize)>,
    new: &Layout<'_>,
) -> Result<DynValue, ort::Error> {
    let mut data = vec![T::default(); new.size()];
    if let Some(from) = from.filter(|_| !keep.is_empty()) {
        let copy = on_host(from)?;
        let src = host_data::<T>(from, &copy)?;
        if src.len() != old.size() {
            return Err(ort::Error::new(format!(
                "a cache tensor has {} values, expected {}",
                src.len(),
                old.size()
            )));
        }
        for (to_row, &from_row) in keep.iter().enumerate() {
            for head in 0..new.kv_heads {
                data[new.span(to_row, head)].copy_from_slice(&src[old.span(from_row, head)]);
            }
        }
    }
    if let Some((value, len)) = joining {
        let copy = on_host(value)?;
        let src = host_data::<T>(value, &copy)?;
        let single = Layout {
            lens: &[len],
            width: len,
            ..*new
        };
        if src.len() != single.size() {
            return Err(ort::Error::new(format!(
                "a joining cache tensor has {} values, expected {}",
                src.len(),
                single.size()
            )));
        }
        let row = new.lens.len() - 1;
        for head in 0..new.kv_heads {
            data[new.span(row, head)].copy_from_slice(&src[single.span(0, head)]);
        }
    }
    let shape = [new.lens.len(), new.kv_heads, new.width, new.head_dim];
    Ok(Tensor::from_array((shape, data))?.into_dyn())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_right_aligns_rows_and_opens_the_new_column() {
        assert_eq!(step_mask(&[3, 1], 3), vec![1, 1, 1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn spans_right_align_each_row() {
        let layout = Layout {
            lens: &[2, 4],
            width: 4,
            kv_heads: 2,
            head_dim: 3,
        };
        // Row 0, head 1: columns 2..4 of the second head block.
        assert_eq!(layout.span(0, 1), (4 + 2) * 3..(4 + 4) * 3);
        assert_eq!(layout.span(1, 0), (2 * 4) * 3..(2 * 4 + 4) * 3);
        assert_eq!(layout.size(), 2 * 2 * 4 * 3);
    }
}
