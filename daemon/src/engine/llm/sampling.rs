//! Choosing the next token from one position's logits, with the OpenAI
//! request parameters (temperature, top_p, penalties) plus the common
//! top_k and min_p extensions.
//!
//! The order of the steps and the tie-breaking are fixed (lowest id wins)
//! so that a seed reproduces a completion exactly. One [`Sampler`] serves
//! one completion: it counts what it chose for the penalties and reuses
//! its buffers, because the vocabulary can be ~150k wide and a step must
//! not allocate.

use std::cmp::Ordering;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// The request's sampling knobs.
///
/// Out-of-range values degrade to "off" rather than failing here (the API
/// layer validates): a temperature that is not `> 0` is greedy, a `top_p`
/// that is not `< 1` and a `min_p` that is not `> 0` are off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// In (0, 1]; 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: u32,
    /// In [0, 1]; 0 = off.
    pub min_p: f32,
    /// In [-2, 2]; subtracted once from every token already chosen.
    pub presence_penalty: f32,
    /// In [-2, 2]; subtracted once per earlier occurrence.
    pub frequency_penalty: f32,
}

impl SamplingParams {
    /// Argmax decoding with every filter and penalty off.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// The token chooser for one completion.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    vocab: usize,
    /// How often each id was chosen, indexed by id; grown on demand.
    counts: Vec<u32>,
    /// The distinct ids chosen so far, so penalties cost O(distinct), not O(V).
    seen: Vec<u32>,
    /// Scratch: the penalised logits of the current step.
    work: Vec<f32>,
    /// Scratch: (id, logit) of the finite candidates.
    cand: Vec<(u32, f32)>,
    /// Scratch: (id, unnormalised probability) of the survivors.
    probs: Vec<(u32, f64)>,
}

impl Sampler {
    /// `vocab`: ids at or above this get -inf (the graph's logits may be
    /// wider than the tokenizer, e.g. Qwen 151936 vs 151665).
    pub fn new(params: SamplingParams, seed: u64, vocab: usize) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            vocab,
            counts: Vec::new(),
            seen: Vec::new(),
            work: Vec::new(),
            cand: Vec::new(),
            probs: Vec::new(),
        }
    }

    /// Chooses the next id from one position's logits (length V >= 1) and
    /// counts it for the penalties.
    ///
    /// When no id below `vocab` has a logit above -inf (NaN counts as -inf)
    /// there is nothing sensible to choose; it then returns the lowest id, 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let never = |_: &mut [f32]| Ok::<(), std::convert::Infallible>(());
        match self.sample_masked(logits, never) {
            Ok(id) => id,
        }
    }

    /// [`Sampler::sample`] with `mask` first setting to −∞ the logits of
    /// the tokens that may not come next (structured output), before the
    /// penalties and the rest.
    pub(crate) fn sample_masked<E>(
        &mut self,
        logits: &[f32],
        mask: impl FnOnce(&mut [f32]) -> Result<(), E>,
    ) -> Result<u32, E> {
        let n = self.vocab.min(logits.len());
        self.work.clear();
        self.work.extend_from_slice(&logits[..n]);
        mask(&mut self.work)?;
        self.apply_penalties();

        let id = if self.params.temperature > 0.0 {
            self.draw()
        } else {
            argmax(&self.work)
        };
        if (id as usize) < n {
            self.count(id);
        }
        Ok(id)
    }

    /// OpenAI's formula: `l -= c * frequency + (c > 0) * presence`.
    fn apply_penalties(&mut self) {
        let SamplingParams {
            presence_penalty: presence,
            frequency_penalty: frequency,
            ..
        } = self.params;
        if presence == 0.0 && frequency == 0.0 {
            return;
        }
        for &id in &self.seen {
            let c = self.counts[id as usize];
            if let Some(l) = self.work.get_mut(id as usize) {
                *l -= c as f32 * frequency + presence;
            }
        }
    }

    fn count(&mut self, id: u32) {
        let i = id as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        if self.counts[i] == 0 {
            self.seen.push(id);
        }
        self.counts[i] = self.counts[i].saturating_add(1);
    }

    /// Steps 4 to 9: temperature, top_k, softmax, top_p, min_p and the draw.
    fn draw(&mut self) -> u32 {
        let p = self.params;
        self.cand.clear();
        for (id, &l) in (0u32..).zip(&self.work) {
            // `>` also drops NaN; +inf is clamped so the softmax stays finite.
            if l > f32::NEG_INFINITY {
                self.cand.push((id, l.min(f32::MAX)));
            }
        }
        // Drawn even when the choice is forced, so the stream position
        // depends only on the number of sampled steps.
        let u = (self.rng.next_u64() >> 11) as f64 * 2f64.powi(-53);
        if self.cand.is_empty() {
            return argmax(&self.work);
        }

        let k = p.top_k as usize;
        if k > 0 && k < self.cand.len() {
            // A total order (ids are distinct), so the k survivors are exactly
            // the first k by (logit desc, id asc).
            self.cand
                .select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            self.cand.truncate(k);
        }

        // Softmax of l / T, computed as exp((l - max) / T) in f64 so that a
        // tiny temperature cannot overflow. The top token gets exactly 1.
        let max = self
            .cand
            .iter()
            .map(|&(_, l)| l)
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = p.temperature as f64;
        self.probs.clear();
        self.probs.extend(
            self.cand
                .iter()
                .map(|&(id, l)| (id, ((l as f64 - max) / t).exp())),
        );
        self.probs
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Underflowed tokens cannot be drawn; dropping them keeps the
        // fallback below from landing on one. The first has p = 1.
        let nonzero = self.probs.partition_point(|&(_, q)| q > 0.0);
        self.probs.truncate(nonzero.max(1));

        if p.top_p < 1.0 {
            let total: f64 = self.probs.iter().map(|&(_, q)| q).sum();
            let target = p.top_p as f64 * total;
            let mut sum = 0.0;
            let mut keep = self.probs.len();
            for (i, &(_, q)) in self.probs.iter().enumerate() {
                sum += q;
                if sum >= target {
                    keep = i + 1;
                    break;
                }
            }
            self.probs.truncate(keep.max(1));
        }

        if p.min_p > 0.0 {
            let floor = p.min_p as f64 * self.probs[0].1;
            let keep = self.probs.partition_point(|&(_, q)| q >= floor);
            self.probs.truncate(keep.max(1));
        }

        let total: f64 = self.probs.iter().map(|&(_, q)| q).sum();
        let target = u * total;
        let mut sum = 0.0;
        for &(id, q) in &self.probs {
            sum += q;
            if sum > target {
                return id;
            }
        }
        self.probs.last().map_or(0, |&(id, _)| id)
    }
}

/// The first index of the largest value (ties to the lowest id); NaN never
/// wins, and an all -inf/NaN slice gives 0.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0u32;
    let mut best_value = f32::NEG_INFINITY;
    for (id, &v) in (0u32..).zip(values) {
        if v.partial_cmp(&best_value) == Some(Ordering::Greater) {
            best = id;
            best_value = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..SamplingParams::greedy()
        }
    }

    /// Deterministic pseudo-random logits for the reproducibility tests.
    fn random_logits(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_u32() % 1000) as f32 / 100.0 - 5.0)
            .collect()
    }

    #[test]
    fn greedy_ties_go_to_the_lowest_id() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0, 10);
        assert_eq!(s.sample(&[1.0, 3.0, 2.0, 3.0, 3.0]), 1);
        let mut s = Sampler::new(SamplingParams::greedy(), 0, 10);
        assert_eq!(s.sample(&[5.0, 5.0]), 0);
    }

    #[test]
    fn greedy_ignores_nan_and_handles_infinity() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0, 10);
        assert_eq!(s.sample(&[f32::NAN, 1.0, f32::NAN]), 1);
        assert_eq!(s.sample(&[0.0, f32::INFINITY, f32::INFINITY]), 1);
        let mut s = Sampler::new(params(1.0), 0, 10);
        assert_eq!(s.sample(&[0.0, f32::INFINITY, f32::NAN]), 1);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, f32::NAN]), 0);
    }

    #[test]
    fn masked_ids_are_never_chosen() {
        let mut logits = vec![0.0f32; 8];
        logits.extend([100.0; 4]);
        let mut greedy = Sampler::new(SamplingParams::greedy(), 1, 8);
        let mut hot = Sampler::new(params(2.0), 1, 8);
        for _ in 0..200 {
            assert!(greedy.sample(&logits) < 8);
            assert!(hot.sample(&logits) < 8);
        }
    }

    #[test]
    fn top_k_one_is_argmax_even_when_hot() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let p = SamplingParams {
            top_k: 1,
            ..params(1.5)
        };
        let mut s = Sampler::new(p, 3, 64);
        for _ in 0..100 {
            let logits = random_logits(&mut rng, 64);
            assert_eq!(s.sample(&logits), argmax(&logits));
        }
    }

    fn run(seed: u64) -> Vec<u32> {
        let mut logits_rng = ChaCha8Rng::seed_from_u64(99);
        let p = SamplingParams {
            top_p: 0.95,
            top_k: 40,
            min_p: 0.01,
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            ..params(1.0)
        };
        let mut s = Sampler::new(p, seed, 100);
        (0..50)
            .map(|_| s.sample(&random_logits(&mut logits_rng, 120)))
            .collect()
    }

    #[test]
    fn a_seed_reproduces_the_sequence() {
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn frequency_penalty_is_exact() {
        let p = SamplingParams {
            frequency_penalty: 1.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, 0, 5);
        // Id 3 leads by 1.5: chosen twice (penalty 0 then 1), then lowered
        // by 2 it trails id 1 by 0.5.
        let logits = [0.0, 8.5, 0.0, 10.0, 0.0];
        assert_eq!(s.sample(&logits), 3);
        assert_eq!(s.sample(&logits), 3);
        assert_eq!(s.sample(&logits), 1);
        // A lead of exactly 2 ties after the penalty; the lower id wins.
        let mut s = Sampler::new(p, 0, 5);
        let logits = [0.0, 0.0, 0.0, 10.0, 8.0];
        assert_eq!(s.sample(&logits), 3);
        assert_eq!(s.sample(&logits), 3);
        assert_eq!(s.sample(&logits), 3);
        assert_eq!(s.sample(&logits), 4);
    }

    #[test]
    fn presence_penalty_is_exact() {
        let p = SamplingParams {
            presence_penalty: 1.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, 0, 3);
        // Presence does not grow with the count: a lead above 1 survives.
        let logits = [0.0, 1.5, 0.0];
        assert_eq!(s.sample(&logits), 1);
        assert_eq!(s.sample(&logits), 1);
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(p, 0, 3);
        let logits = [0.0, 0.5, 0.0];
        assert_eq!(s.sample(&logits), 1);
        assert_eq!(s.sample(&logits), 0);
        assert_eq!(s.sample(&logits), 2);
        // All now penalised by 1: id 1 leads again.
        assert_eq!(s.sample(&logits), 1);
    }

    #[test]
    fn negative_penalties_encourage_repeats() {
        let p = SamplingParams {
            presence_penalty: -2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(p, 0, 3);
        assert_eq!(s.sample(&[0.0, 1.0, 2.5]), 2);
        assert_eq!(s.sample(&[0.0, 1.0, 2.5]), 2);
        assert_eq!(s.sample(&[3.5, 1.0, 2.0]), 2);
    }

    #[test]
    fn temperature_one_matches_the_softmax() {
        let mut s = Sampler::new(params(1.0), 2024, 2);
        let logits = [0.0, 3f32.ln()];
        let ones = (0..4000).filter(|_| s.sample(&logits) == 1).count();
        assert!((2800..=3200).contains(&ones), "{ones} of 4000");
    }

    #[test]
    fn logits_narrower_than_vocab_are_fine() {
        let mut s = Sampler::new(params(1.0), 0, 1000);
        for _ in 0..20 {
            assert!(s.sample(&[1.0, 2.0, 3.0]) < 3);
        }
    }

    fn valid_params() -> impl Strategy<Value = SamplingParams> {
        (
            prop_oneof![Just(0.0f32), 0.01f32..3.0],
            prop_oneof![Just(1.0f32), 0.001f32..=1.0],
            prop_oneof![Just(0u32), 1u32..20],
            prop_oneof![Just(0.0f32), 0.0f32..=1.0],
            -2.0f32..=2.0,
            -2.0f32..=2.0,
        )
            .prop_map(
                |(temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty)| {
                    SamplingParams {
                        temperature,
                        top_p,
                        top_k,
                        min_p,
                        presence_penalty,
                        frequency_penalty,
                    }
                },
            )
    }

    fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(
            prop_oneof![
                8 => -30.0f32..30.0,
                1 => Just(f32::NEG_INFINITY),
                1 => Just(0.0f32),
            ],
            1..40,
        )
    }

    proptest! {
        #[test]
        fn the_choice_is_in_vocab_finite_and_in_top_k(
            p in valid_params(),
            logits in logits_strategy(),
            vocab in 1usize..50,
            seed in any::<u64>(),
            steps in 1usize..6,
        ) {
            let n = vocab.min(logits.len());
            let mut s = Sampler::new(p, seed, vocab);
            for _ in 0..steps {
                let id = s.sample(&logits) as usize;
                let any_finite = logits[..n].iter().any(|l| l.is_finite());
                if !any_finite {
                    prop_assert_eq!(id, 0);
                    continue;
                }
                prop_assert!(id < n);
                prop_assert!(logits[id].is_finite());
                if p.top_k > 0 {
                    // Penalties shift logits, so rank against what the
                    // sampler saw: recompute them from its counts.
                    let penalised: Vec<f32> = (0..n)
                        .map(|i| {
                            let c = s.counts.get(i).copied().unwrap_or(0);
                            let c = if i == id { c - 1 } else { c };
                            logits[i]
                                - (c as f32 * p.frequency_penalty
                                    + if c > 0 { p.presence_penalty } else { 0.0 })
                        })
                        .collect();
                    let better = (0..n)
                        .filter(|&i| {
                            penalised[i] > penalised[id]
                                || (penalised[i] == penalised[id] && i < id)
                        })
                        .count();
                    prop_assert!(better < p.top_k as usize);
                }
            }
        }

        #[test]
        fn tiny_top_p_is_argmax(
            logits in prop::collection::vec(-30.0f32..30.0, 1..40),
            temperature in 0.05f32..3.0,
            seed in any::<u64>(),
        ) {
            let p = SamplingParams { top_p: 1e-6, ..params(temperature) };
            let mut s = Sampler::new(p, seed, logits.len());
            prop_assert_eq!(s.sample(&logits), argmax(&logits));
        }

        #[test]
        fn min_p_one_is_argmax(
            logits in prop::collection::vec(-30.0f32..30.0, 1..40),
            temperature in 0.05f32..3.0,
            seed in any::<u64>(),
        ) {
            let p = SamplingParams { min_p: 1.0, ..params(temperature) };
            let mut s = Sampler::new(p, seed, logits.len());
            let id = s.sample(&logits) as usize;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // Ties aside: every token sharing the maximum has p = 1.
            prop_assert_eq!(logits[id], max);
        }

        #[test]
        fn same_seed_same_ids(
            p in valid_params(),
            logits in logits_strategy(),
            seed in any::<u64>(),
        ) {
            let mut a = Sampler::new(p, seed, 64);
            let mut b = Sampler::new(p, seed, 64);
            for _ in 0..5 {
                prop_assert_eq!(a.sample(&logits), b.sample(&logits));
            }
        }
    }
}
