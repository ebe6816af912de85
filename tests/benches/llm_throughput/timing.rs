//! What one generation took, as its client saw it, and the statistics the
//! tables are made of.

use std::time::{Duration, Instant};

/// One generation, as its client saw it.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub start: Instant,
    /// The first text.
    pub first: Instant,
    /// The generation's last event (the finish chunk; in process, the last
    /// delta): what comes after it is the `completion` audit record.
    pub last: Instant,
    pub end: Instant,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub text: String,
}

impl Timing {
    pub(crate) fn ttft(&self) -> Duration {
        self.first - self.start
    }

    pub(crate) fn prefill_rate(&self) -> f64 {
        self.prompt_tokens as f64 / self.ttft().as_secs_f64()
    }

    /// From the generation's last event to the end of the answer.
    pub(crate) fn tail(&self) -> Duration {
        self.end - self.last
    }

    /// Tokens after the first over the time after the first.
    pub(crate) fn decode_rate(&self) -> f64 {
        (self.completion_tokens - 1) as f64 / (self.end - self.first).as_secs_f64()
    }
}

/// The generations of one batch of concurrent clients.
#[derive(Debug)]
pub(crate) struct Batch(pub Vec<Timing>);

impl Batch {
    /// The median of `f` over the clients.
    pub(crate) fn each(&self, f: impl Fn(&Timing) -> f64) -> f64 {
        median(self.0.iter().map(f).collect())
    }

    /// All tokens of the batch over its wall time: from the first request
    /// sent to the last client's `end_of` (its first text for prefill, its
    /// end for decode).
    pub(crate) fn aggregate(
        &self,
        tokens: fn(&Timing) -> usize,
        end_of: fn(&Timing) -> Instant,
    ) -> f64 {
        let start = self.0.iter().map(|t| t.start).min().expect("a client");
        let end = self.0.iter().map(end_of).max().expect("a client");
        self.0.iter().map(tokens).sum::<usize>() as f64 / (end - start).as_secs_f64()
    }
}

/// Fisher-Yates with a xorshift64 generator: a fixed, reproducible order.
pub(crate) fn shuffle(items: &mut [usize], state: &mut u64) {
    for i in (1..items.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let j = usize::try_from(*state % (i as u64 + 1)).expect("index fits");
        items.swap(i, j);
    }
}

/// The `p` quantile, nearest rank.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
