//! The log-probabilities a request may ask for with each generated token:
//! the log-softmax of the model's raw logits at that position, before the
//! penalties, the temperature and the top-k/p/min-p filters, so that they
//! compare across sampling settings. Computed only for requests that ask,
//! at O(vocabulary) per token.

/// What a request asks for: each token's logprob and its `top` most likely
/// alternatives (the protocol bounds `top`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logprobs {
    pub top: usize,
}

/// One generated token's logprob, with the most likely tokens at its
/// position (logprob descending, then id ascending).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// The logprob of `id` and the `top` most likely ids among the first
/// `vocab` logits: those the tokenizer has, the only ones the sampler may
/// choose. NaN counts as -inf and +inf as the largest float, as in the
/// sampler; when every logit is -inf, every logprob is.
pub(crate) fn token_logprob(logits: &[f32], vocab: usize, id: u32, top: usize) -> TokenLogprob {
    let logits = &logits[..vocab.min(logits.len())];
    let clean = |l: f32| {
        if l.is_nan() {
            f32::NEG_INFINITY
        } else {
            l.min(f32::MAX)
        }
    };
    let max = logits
        .iter()
        .map(|&l| clean(l))
        .fold(f32::NEG_INFINITY, f32::max);
    // log(sum(exp(l))) in f64, shifted by the largest logit so that nothing
    // overflows; +inf when there is nothing to normalise, so that every
    // logprob comes out -inf.
    let log_sum = if max == f32::NEG_INFINITY {
        f64::INFINITY
    } else {
        let max = f64::from(max);
        let sum: f64 = logits
            .iter()
            .map(|&l| (f64::from(clean(l)) - max).exp())
            .sum();
        max + sum.ln()
    };
    let logprob = |l: f32| (f64::from(clean(l)) - log_sum) as f32;
    let chosen = logits
        .get(id as usize)
        .map_or(f32::NEG_INFINITY, |&l| logprob(l));
    TokenLogprob {
        id,
        logprob: chosen,
        top: most_likely(logits, top, clean)
            .into_iter()
            .map(|(id, l)| (id, logprob(l)))
            .collect(),
    }
}

/// The `top` (id, logit) pairs with the largest logits, ties to the lowest
/// id, in that order: one pass, keeping a sorted list of at most `top`.
fn most_likely(logits: &[f32], top: usize, clean: impl Fn(f32) -> f32) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top == 0 {
        return best;
    }
    // Ids arrive in ascending order, so a later id only passes an equal
    // logit's earlier one when it is strictly larger.
    for (id, &l) in (0u32..).zip(logits) {
        let l = clean(l);
        if best.len() == top && best.last().is_some_and(|&(_, worst)| l <= worst) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (id, l));
        best.truncate(top);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// log-softmax computed the plain way, in f64.
    fn reference(logits: &[f32]) -> Vec<f64> {
        let total: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        logits.iter().map(|&l| f64::from(l) - total.ln()).collect()
    }

    #[test]
    fn it_is_the_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 2.0, 3.0, 0.5];
        let got = token_logprob(&logits, 4, 1, 2);
        let want = reference(&logits);
        assert!((f64::from(got.logprob) - want[1]).abs() < 1e-6);
        assert_eq!(got.top.len(), 2);
        assert_eq!((got.top[0].0, got.top[1].0), (2, 1));
        assert!((f64::from(got.top[0].1) - want[2]).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_lowest_id() {
        let logits = [0.0f32, 5.0, 1.0, 5.0, 5.0, 1.0];
        let ids: Vec<u32> = token_logprob(&logits, 6, 0, 4)
            .top
            .iter()
            .map(|&(id, _)| id)
            .collect();
        assert_eq!(ids, [1, 3, 4, 2]);
    }

    #[test]
    fn ids_outside_the_vocabulary_are_left_out() {
        // Id 3 is padding: it neither counts in the sum nor appears.
        let got = token_logprob(&[0.0, 0.0, 0.0, 100.0], 3, 0, 5);
        assert!((got.logprob - (1.0f32 / 3.0).ln()).abs() < 1e-6);
        assert_eq!(got.top.len(), 3);
        assert!(got.top.iter().all(|&(id, _)| id < 3));
    }

    #[test]
    fn nan_and_infinities_do_not_poison_the_rest() {
        let got = token_logprob(&[f32::NAN, 0.0, f32::NEG_INFINITY, 0.0], 4, 1, 4);
        assert!((got.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(got.top[2].1, f32::NEG_INFINITY);
        let all_masked = token_logprob(&[f32::NEG_INFINITY; 3], 3, 0, 1);
        assert_eq!(all_masked.logprob, f32::NEG_INFINITY);
        assert_eq!(all_masked.top, [(0, f32::NEG_INFINITY)]);
    }

    proptest! {
        #[test]
        fn matches_the_reference_and_sorts_the_top(
            logits in prop::collection::vec(-30.0f32..30.0, 1..64),
            top in 0usize..25,
            pick in any::<prop::sample::Index>(),
        ) {
            let id = pick.index(logits.len()) as u32;
            let got = token_logprob(&logits, logits.len(), id, top);
            let want = reference(&logits);
            prop_assert!((f64::from(got.logprob) - want[id as usize]).abs() < 1e-4);
            prop_assert_eq!(got.top.len(), top.min(logits.len()));
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
            for (rank, &(id, lp)) in got.top.iter().enumerate() {
                prop_assert_eq!(id, order[rank]);
                prop_assert!((f64::from(lp) - want[id as usize]).abs() < 1e-4);
            }
        }
    }
}
