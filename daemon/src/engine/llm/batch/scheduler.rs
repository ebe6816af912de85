//! Continuous batching: one thread per causal LM owns its one session and
//! runs, turn after turn, one prefill chunk of the request being admitted
//! and one decode step of every running request together. Requests join
//! between steps, once their prompt is in the cache, and leave at once
//! when they finish or their client goes; nobody else's output changes.
//!
//! Admission is bounded twice: by `sequences` rows and by the cache pool.
//! The batch's cache holds `rows × longest row` positions (rows are padded
//! to the longest, [`super::cache`]), so a request is admitted only while
//! `rows × the longest reservation` stays within `kv_cache_tokens`, a
//! reservation being the prompt plus `max_tokens`. A request that does not
//! fit waits, first come first served; a running one is never evicted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;

use ort::session::Session;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::cache::{BatchCache, BatchPlacement, Joining};
use super::stats::{BatchSnapshot, BatchStats};
use crate::engine::llm::decoder::{GraphSpec, KvPlacement, SequenceCache};
use crate::engine::llm::generate::{
    Delta, FinishReason, Finished, GenerateError, GenerateRequest, PREFILL_CHUNK,
};
use crate::engine::llm::generation::{Generation, Next};
use crate::engine::llm::tokenizer::Tokenizer;

/// How much a batch may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows decoded at once (`sessions`).
    pub sequences: usize,
    /// Cache positions, padding included (`kv_cache_tokens`).
    pub cache_tokens: usize,
}

/// A request handed to the scheduler.
#[derive(Debug)]
pub struct Job {
    pub request: GenerateRequest,
    pub events: mpsc::UnboundedSender<Delta>,
    pub done: oneshot::Sender<Result<Finished, GenerateError>>,
    /// The request's place in the model's admission, given back when it
    /// ends.
    pub admitted: OwnedSemaphorePermit,
}

/// The handle requests are submitted through.
#[derive(Debug)]
pub(crate) struct Batcher {
    jobs: std_mpsc::Sender<Job>,
    stats: Arc<BatchStats>,
}

/// The scheduler thread is gone (it never ends while the daemon serves).
#[derive(Debug, thiserror::Error)]
#[error("the batch scheduler has stopped")]
pub(crate) struct Stopped;

/// What starting a scheduler can fail on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the batch scheduler thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("{0}")]
    Runtime(#[from] ort::Error),
    #[error(
        "the warm-up (two prefills joining a batch, one batched decode step, one leaving) failed: {0}; \
         set warm_up = false in its [[model]] table to load it anyway"
    )]
    WarmUp(ort::Error),
    /// The warm-up's rows did not give the logits their sequences give
    /// alone: the graph does not take padded rows.
    #[error(
        "batched logits differ from the same sequences run alone (row {row}: {difference} apart, \
         more than {SELF_TEST_TOLERANCE} of the largest logit): the graph does not take padded rows"
    )]
    Unbatchable { row: usize, difference: f32 },
    #[error("a shared past/present buffer cannot be batched")]
    SharedBuffer,
}

/// How far a batched row's logits may be from its sequence's alone, as a
/// share of the largest logit, before the warm-up judges that the graph
/// does not take padded rows. Rounding differences are orders of magnitude
/// smaller; a graph that ignores the padding is off by whole logits.
const SELF_TEST_TOLERANCE: f32 = 0.01;

/// What the scheduler thread is started with.
#[derive(Debug)]
pub(crate) struct Setup {
    pub session: Session,
    pub spec: GraphSpec,
    pub tokenizer: Arc<Tokenizer>,
    /// Host or device (`KvPlacement::Host` or `Device`).
    pub placement: KvPlacement,
    pub limits: Limits,
    /// Warm up on this token before serving.
    pub warm_up: Option<u32>,
}

impl Batcher {
    /// Starts the scheduler thread and waits for its warm-up.
    pub(crate) fn start(setup: Setup) -> Result<Self, StartError> {
        let (jobs, receiver) = std_mpsc::channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("llm-batch".to_owned())
            .spawn(move || {
                let Setup {
                    session,
                    spec,
                    tokenizer,
                    placement,
                    limits,
                    warm_up,
                } = setup;
                let started = Scheduler::new(session, spec, &tokenizer, placement, limits)
                    .and_then(|mut scheduler| {
                        if let Some(token) = warm_up {
                            scheduler.warm_up(token)?;
                        }
                        Ok(scheduler)
                    });
                match started {
                    Ok(mut scheduler) => {
                        let _ = ready_tx.send(Ok(Arc::clone(&scheduler.stats)));
                        scheduler.serve(&receiver);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let stats = ready_rx.recv().map_err(|_| {
            StartError::Runtime(ort::Error::new("the batch scheduler thread died"))
        })??;
        Ok(Self { jobs, stats })
    }

    /// Queues a request; it is admitted when a row and room in the cache
    /// are free.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Stopped> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs.send(job).map_err(|_| {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            Stopped
        })
    }

    pub(crate) fn stats(&self) -> BatchSnapshot {
        self.stats.snapshot()
    }
}

/// A request that has left the queue: its generation, the cache positions
/// it may grow to, and where its answer goes.
struct Started<'t> {
    generation: Generation<'t>,
    /// Prompt plus `max_tokens`.
    reserve: usize,
    done: oneshot::Sender<Result<Finished, GenerateError>>,
    _admitted: OwnedSemaphorePermit,
}

impl Started<'_> {
    /// Answers it: the flushed generation, or the error.
    fn respond(self, ended: Result<FinishReason, GenerateError>) {
        let generation = self.generation;
        let _ = self
            .done
            .send(ended.and_then(|reason| generation.finish(reason)));
    }
}

/// A request in the batch.
struct Row<'t> {
    request: Started<'t>,
    /// The token its next step feeds.
    next: u32,
}

/// The request whose prompt is being prefilled, chunk by chunk.
struct Prefill<'t> {
    request: Started<'t>,
    /// Prompt tokens already in its cache.
    offset: usize,
}

/// The batch of one model and the requests waiting to join it. The
/// [`Batcher`]'s thread runs [`Scheduler::turn`] while there is work; tests
/// drive it turn by turn.
pub struct Scheduler<'t> {
    session: Session,
    spec: GraphSpec,
    tokenizer: &'t Tokenizer,
    limits: Limits,
    stats: Arc<BatchStats>,
    batch: BatchCache,
    rows: Vec<Row<'t>>,
    /// The cache a prompt is prefilled into before it joins the batch.
    sequence: SequenceCache,
    prefill: Option<Prefill<'t>>,
    waiting: VecDeque<Job>,
    logits: Vec<f32>,
}

impl std::fmt::Debug for Scheduler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("rows", &self.rows.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl<'t> Scheduler<'t> {
    /// A scheduler running `session`, its caches kept as `placement` says
    /// (on the host, or on the device; a shared buffer cannot batch).
    pub fn new(
        session: Session,
        spec: GraphSpec,
        tokenizer: &'t Tokenizer,
        placement: KvPlacement,
        limits: Limits,
    ) -> Result<Self, StartError> {
        let batch_placement = match &placement {
            KvPlacement::Device(memory) => BatchPlacement::Device(memory.clone()),
            KvPlacement::Host => BatchPlacement::Host,
            KvPlacement::Shared { .. } => return Err(StartError::SharedBuffer),
        };
        let batch = BatchCache::new(&session, batch_placement)?;
        let mut sequence = SequenceCache::new(&session, &spec, placement)?;
        sequence.reset(&spec)?;
        Ok(Self {
            logits: Vec::with_capacity(spec.vocab),
            session,
            spec,
            tokenizer,
            limits,
            stats: Arc::default(),
            batch,
            rows: Vec::new(),
            sequence,
            prefill: None,
            waiting: VecDeque::new(),
        })
    }

    /// Every path a request takes, run before the daemon locks itself
    /// down, and a self-test of the graph: a 3-token and a 1-token
    /// sequence join the batch, one step decodes both, the longer leaves
    /// and one more step decodes the other; each row's logits must be its
    /// sequence's alone, or the graph does not take padded rows.
    pub fn warm_up(&mut self, token: u32) -> Result<(), StartError> {
        let warm = StartError::WarmUp;
        let long = self.alone(&[token; 3], &[token]).map_err(warm)?;
        let short = self.alone(&[token], &[token]).map_err(warm)?;
        let short_next = self.alone(&[token], &[token, token]).map_err(warm)?;
        for prompt in [&[token; 3][..], &[token]] {
            self.sequence.reset(&self.spec).map_err(warm)?;
            self.sequence
                .forward(&mut self.session, &self.spec, prompt, &mut self.logits)
                .map_err(warm)?;
            let joining = self.joining();
            let keep: Vec<usize> = (0..self.batch.rows()).collect();
            self.batch
                .relayout(&self.spec, &keep, Some(joining))
                .map_err(warm)?;
        }
        self.batch
            .step(
                &mut self.session,
                &self.spec,
                &[token, token],
                &mut self.logits,
            )
            .map_err(warm)?;
        let vocab = self.spec.vocab;
        self_test(0, &self.logits[..vocab], &long)?;
        self_test(1, &self.logits[vocab..], &short)?;
        self.batch.relayout(&self.spec, &[1], None).map_err(warm)?;
        self.batch
            .step(&mut self.session, &self.spec, &[token], &mut self.logits)
            .map_err(warm)?;
        self_test(1, &self.logits, &short_next)?;
        self.batch.clear();
        self.sequence.reset(&self.spec).map_err(warm)
    }

    /// The logits of `prompt`'s sequence after `steps` fed one at a time,
    /// alone.
    fn alone(&mut self, prompt: &[u32], steps: &[u32]) -> Result<Vec<f32>, ort::Error> {
        self.sequence.reset(&self.spec)?;
        self.sequence
            .forward(&mut self.session, &self.spec, prompt, &mut self.logits)?;
        for &id in steps {
            self.sequence
                .forward(&mut self.session, &self.spec, &[id], &mut self.logits)?;
        }
        self.sequence.take();
        Ok(self.logits.clone())
    }

    /// The prefilled sequence, handed over to the batch.
    fn joining(&mut self) -> Joining {
        let len = self.sequence.cached();
        Joining {
            past: self.sequence.take(),
            len,
        }
    }

    /// Nothing is running or waiting.
    pub fn idle(&self) -> bool {
        self.rows.is_empty() && self.prefill.is_none() && self.waiting.is_empty()
    }

    /// Serves until every [`Batcher`] is dropped. (A panic aborts the
    /// daemon, as everywhere in it: `panic = "abort"`.)
    fn serve(&mut self, jobs: &std_mpsc::Receiver<Job>) {
        loop {
            if self.idle() {
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            self.waiting.extend(jobs.try_iter());
            self.turn();
        }
    }

    /// Adds a request to the end of the queue (as [`Batcher::submit`]
    /// does through the scheduler's thread).
    pub fn enqueue(&mut self, job: Job) {
        self.waiting.push_back(job);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// What the scheduler is doing.
    pub fn stats(&self) -> BatchSnapshot {
        self.stats.snapshot()
    }

    /// One turn: waiting requests whose client left are answered, the
    /// first waiting one starts its prefill if it fits, one chunk of the
    /// prefill runs, then one decode step of every row.
    pub fn turn(&mut self) {
        self.drop_abandoned();
        if self.prefill.is_none() {
            self.admit();
        }
        if self.prefill.is_some() {
            self.prefill_chunk();
        }
        if self.batch.rows() > 0 {
            self.decode_step();
        }
        self.publish();
    }

    fn publish(&self) {
        let stats = &self.stats;
        let running = self.rows.len() + usize::from(self.prefill.is_some());
        stats.running.store(running, Ordering::Relaxed);
        if self.rows.is_empty() {
            stats.last_batch.store(0, Ordering::Relaxed);
        }
        stats.cache_positions.store(
            self.batch.positions() + self.sequence.cached(),
            Ordering::Relaxed,
        );
        stats
            .cache_reserved
            .store(running * self.longest_reservation(0), Ordering::Relaxed);
    }

    fn longest_reservation(&self, with: usize) -> usize {
        self.rows
            .iter()
            .map(|row| row.request.reserve)
            .chain(self.prefill.as_ref().map(|p| p.request.reserve))
            .fold(with, usize::max)
    }

    /// Waiting requests whose client left are answered `cancelled` at once.
    fn drop_abandoned(&mut self) {
        if !self.waiting.iter().any(|job| job.events.is_closed()) {
            return;
        }
        let (gone, waiting) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition::<VecDeque<_>, _>(|job| job.events.is_closed());
        self.waiting = waiting;
        self.stats.queued.fetch_sub(gone.len(), Ordering::Relaxed);
        for job in gone {
            let _ = job.done.send(Ok(Finished::cancelled_before_start()));
        }
    }

    /// Starts prefilling the first waiting request if a row and room in
    /// the cache are free.
    fn admit(&mut self) {
        let Some(head) = self.waiting.front() else {
            return;
        };
        let request = &head.request;
        let reserve = (request.prompt_ids.len() + request.max_tokens).min(self.limits.cache_tokens);
        let rows = self.rows.len() + 1;
        if rows > self.limits.sequences
            || rows * self.longest_reservation(reserve) > self.limits.cache_tokens
        {
            return;
        }
        let Some(job) = self.waiting.pop_front() else {
            return;
        };
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        let request = Started {
            generation: Generation::new(self.tokenizer, job.request, job.events),
            reserve,
            done: job.done,
            _admitted: job.admitted,
        };
        if let Err(source) = self.sequence.reset(&self.spec) {
            return request.respond(Err(GenerateError::Runtime { step: 0, source }));
        }
        self.prefill = Some(Prefill { request, offset: 0 });
    }

    /// Runs the next chunk of the prompt being prefilled; once the whole
    /// prompt is in, samples its first token and joins it to the batch.
    fn prefill_chunk(&mut self) {
        let Some(prefill) = self.prefill.as_mut() else {
            return;
        };
        if prefill.request.generation.abandoned() {
            if let Some(p) = self.prefill.take() {
                self.sequence.take();
                self.publish();
                p.request.respond(Ok(FinishReason::Cancelled));
            }
            return;
        }
        let prompt = &prefill.request.generation.request().prompt_ids;
        let end = (prefill.offset + PREFILL_CHUNK).min(prompt.len());
        let ran = self.sequence.forward(
            &mut self.session,
            &self.spec,
            &prompt[prefill.offset..end],
            &mut self.logits,
        );
        prefill.offset = end;
        let complete = end == prompt.len();
        if ran.is_ok() && !complete {
            return;
        }
        let Some(Prefill { mut request, .. }) = self.prefill.take() else {
            return;
        };
        // The prompt's cache joins the batch, or is dropped with this turn.
        let joining = self.joining();
        let next = match ran {
            Err(source) => Err(GenerateError::Runtime { step: 0, source }),
            Ok(()) => request.generation.step(&self.logits),
        };
        let ended = match next {
            Ok(Next::Token(next)) => {
                let keep: Vec<usize> = (0..self.rows.len()).collect();
                self.rows.push(Row { request, next });
                if let Err(source) = self.batch.relayout(&self.spec, &keep, Some(joining)) {
                    self.fail_all(&source);
                }
                return;
            }
            Ok(Next::Done(reason)) => Ok(reason),
            Err(e) => Err(e),
        };
        self.publish();
        request.respond(ended);
    }

    /// One decode step of every row; rows that finish leave the batch.
    fn decode_step(&mut self) {
        let ids: Vec<u32> = self.rows.iter().map(|row| row.next).collect();
        if let Err(source) = self
            .batch
            .step(&mut self.session, &self.spec, &ids, &mut self.logits)
        {
            return self.fail_all(&source);
        }
        self.stats.last_batch.store(ids.len(), Ordering::Relaxed);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let vocab = self.spec.vocab;
        let mut keep = Vec::with_capacity(self.rows.len());
        let mut ended = Vec::new();
        for (index, row) in self.rows.iter_mut().enumerate() {
            let logits = &self.logits[index * vocab..(index + 1) * vocab];
            match row.request.generation.step(logits) {
                Ok(Next::Token(id)) => {
                    row.next = id;
                    keep.push(index);
                }
                Ok(Next::Done(reason)) => ended.push((index, Ok(reason))),
                Err(e) => ended.push((index, Err(e))),
            }
        }
        if ended.is_empty() {
            return;
        }
        let relaid = self.batch.relayout(&self.spec, &keep, None);
        let mut rows: Vec<Option<Row<'t>>> = self.rows.drain(..).map(Some).collect();
        let ended: Vec<_> = ended
            .into_iter()
            .filter_map(|(index, result)| rows[index].take().map(|row| (row, result)))
            .collect();
        self.rows = rows.into_iter().flatten().collect();
        if let Err(source) = relaid {
            self.fail_all(&source);
        }
        // The state is published before the answers go out, so a client
        // that has its answer sees its request gone from `/v1/models`.
        self.publish();
        for (row, result) in ended {
            row.request.respond(result);
        }
    }

    /// A batched run failed: the cache is lost, and every row ends with
    /// the error.
    fn fail_all(&mut self, source: &ort::Error) {
        tracing::error!(error = %source, rows = self.rows.len(), "a batched decode step failed");
        self.batch.clear();
        let rows: Vec<Row<'t>> = self.rows.drain(..).collect();
        self.publish();
        for row in rows {
            let error = GenerateError::Runtime {
                step: row.request.generation.generated(),
                source: ort::Error::new(source.to_string()),
            };
            row.request.respond(Err(error));
        }
    }
}

/// Whether a batched row's logits are its sequence's alone, within
/// [`SELF_TEST_TOLERANCE`].
fn self_test(row: usize, batched: &[f32], alone: &[f32]) -> Result<(), StartError> {
    let largest = alone.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let difference = batched
        .iter()
        .zip(alone)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    if batched.len() != alone.len()
        || difference.is_nan()
        || difference > SELF_TEST_TOLERANCE * largest
    {
        return Err(StartError::Unbatchable { row, difference });
    }
    Ok(())
}
