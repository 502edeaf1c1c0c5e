"""The training loop: steps, logging, validation and early stopping, the checkpoint
policy, and stopping on Ctrl-C or SIGTERM with the work saved.

The host runs up to `RUN_AHEAD` steps ahead of the device: it reads nothing from the
device between the steps where it must sync anyway (a log, a validation or a checkpoint
step, the last step), and only waits for the step `RUN_AHEAD` behind the one it dispatched.
Each step carries forward, on the device, the first step whose loss or parameters were
not finite and the largest signal any process received (`Steps.train`); the host reads
both at those sync steps, so every process learns a signal from the same step, saves
that step and stops there. A process alone stops at the step it received the signal.
The best validation state is copied on the device and written to ``best/`` with the
next checkpoint (on time, at the end, on early stopping or a signal), not when it
happens, and before that checkpoint: every checkpoint's best step is in ``best/``.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from fgmask_jax import checkpointing, errors, signals
from fgmask_jax.data import pipeline
from fgmask_jax.evaluation import writers
from fgmask_jax.train import evaluate as evaluate_lib
from fgmask_jax.train.state import TrainState
from fgmask_jax.train.steps import Steps

# Steps the host may dispatch beyond the last one the device finished: enough to keep the
# device busy, few enough that a stop comes within about two steps of device time (a stop saves
# the step the host reached, so it waits for every step queued before it).
RUN_AHEAD = 2


@dataclasses.dataclass
class Trained:
    """What the loop leaves: the last state, its bookkeeping, timings, and the
    validation batches and decoding workers the test phase reuses."""

    state: TrainState
    meta: dict
    timing: dict
    val_batches: Callable[[], Iterator]
    workers: int


def inputs(steps: Steps, config, source, fit: np.ndarray, val: np.ndarray, start: int):
    """(training batches from step ``start`` on, a function giving the validation batches,
    decoding workers): on the device when the images fit (`pipeline.placement`), else
    decoded on the host by grain and sent to the devices two batches ahead."""
    on_device, workers, why = pipeline.placement(config, len(fit) + len(val))
    if on_device:  # fit and validation images decoded once, replicated on every device
        logging.info("data on device (%s): decoding %d images once", why, len(fit) + len(val))
        data = jax.device_put(pipeline.load_all(source, np.concatenate([fit, val]),
                                                config.image_size, workers), steps.replicated)
        order = pipeline.batch_order(np.arange(len(fit)), global_batch=config.batch_size,
                                     seed=config.seed)
        batches = (steps.gather(data, jax.make_array_from_process_local_data(
            steps.data, ix)) for ix in pipeline.iterate(order, start))
        val_rows = np.arange(len(fit), len(fit) + len(val))
        return batches, lambda: evaluate_lib.device_eval_batches(
            steps, data, val_rows, config.batch_size), workers
    logging.info("data on host (%s): grain with %d decoding processes", why, workers)
    host = pipeline.train_batches(source, fit, global_batch=config.batch_size,
                                  image_size=config.image_size, seed=config.seed)
    batches = pipeline.prefetch(pipeline.to_global(b, steps.data)
                                for b in pipeline.iterate(host, start, workers))
    # Validation passes read one endless stream: one pool of decoding processes per run.
    passes = pipeline.eval_batches(source, val, global_batch=config.batch_size,
                                   image_size=config.image_size)
    stream = pipeline.iterate(passes.repeat(), workers=workers)
    return batches, lambda: (pipeline.to_global(next(stream), steps.data)
                             for _ in range(len(passes))), workers


class Loop:
    """One run's loop from ``meta["step"]`` to ``total_steps``: `run` it once."""

    def __init__(self, steps: Steps, config, *, ckpt: checkpointing.Checkpointer,
                 best_ckpt: checkpointing.Checkpointer, writer: writers.MetricWriter,
                 schedule: Callable, total_steps: int, eval_every: int, began: float,
                 profile_dir: str | None = None):
        self.steps, self.config = steps, config
        self.ckpt, self.best_ckpt, self.writer = ckpt, best_ckpt, writer
        self.schedule, self.total_steps, self.eval_every = schedule, total_steps, eval_every
        self.began = began  # when the run started: the first step's time counts from it
        self.stopped_early = False
        self.best_state = None  # a device copy of the best validation state, not yet saved
        self.last_save = time.monotonic()
        self.first_step_s = self.loop_began = None
        self.seen = None  # the last step's scalars: what it carries forward (Steps.train)
        self.in_flight = collections.deque()  # the newest steps' "stop" scalars, oldest first
        self.profile_dir = profile_dir
        self.profiling = False

    def run(self, state: TrainState, meta: dict, source, fit, val) -> Trained:
        """Trains from ``state`` (at step ``meta["step"]``) on ``source[fit]``, validating on
        ``source[val]``; returns what the test phase needs."""
        start = int(meta["step"])
        self.meta, self.t0, self.n0 = meta, time.perf_counter(), start
        self.reached = self.saved = start  # the last step computed, the last one saved
        self.signum = 0  # the signal every process agreed to stop for (`agreed_stop`)
        # Ctrl-C or SIGTERM ends the step, saves and stops, on every process at the same
        # step: each step carries this process's pending signal to all of them (Steps.train).
        try:
            with signals.deferred() as self.stop:
                batches, val_batches, workers = inputs(self.steps, self.config, source, fit,
                                                       val, start)
                for step in range(start + 1, self.total_steps + 1):
                    state = self._step(state, next(batches), step, val_batches)
                    if self.signum:
                        self._stop(step)
                    if self.stopped_early:
                        break
                self._wait()
                # A signal after the last step's check: the processes agree on it once more.
                self.signum = agreed_stop(self.stop.signum)
                if self.signum:
                    self._stop(self.reached)
        except KeyboardInterrupt as e:  # a second signal: stop now
            self.writer.close_after_failure()
            self._wait()
            last = (f"the last checkpoint is step {self.saved}" if self.saved
                    else "no checkpoint was written")
            raise signals.Interrupted(signals.signum_of(e), stopped_message(
                signals.signum_of(e), self.reached, self.total_steps,
                f"{last} in {self.ckpt.directory}; rerun the same command to resume from it."
            )) from e
        except BaseException:
            self.writer.close_after_failure()
            raise
        finally:  # an interrupted run still completes the saves it started
            self._wait()
            self._profile_end()
        return Trained(state, self.meta, self._timing(start), val_batches, workers)

    def _step(self, state: TrainState, batch, step: int, val_batches) -> TrainState:
        first, last = tuple(self.config.get("profile_steps") or ()) or (0, 0)
        if step == first and self.profile_dir:
            jax.profiler.start_trace(self.profile_dir)
            self.profiling = True
        state, scalars = self.steps.train(state, batch, self.stop.signum, self.seen)
        self.seen = scalars
        self.in_flight.append(scalars["stop"])
        if len(self.in_flight) > RUN_AHEAD:  # wait for the step RUN_AHEAD behind this one
            jax.block_until_ready(self.in_flight.popleft())
        if step == last:
            jax.block_until_ready(scalars)
            self._profile_end()
        self.reached = step
        if self.first_step_s is None:  # data, initialisation and compilation
            jax.block_until_ready(scalars)
            self.loop_began = time.perf_counter()
            self.first_step_s = self.loop_began - self.began
            logging.info("first step done %.1fs after the run started", self.first_step_s)
        last = step == self.total_steps
        if self.stop.signum and jax.process_count() == 1:  # nobody else to agree with
            self.signum = self.stop.signum
        if step % self.config.log_every_steps == 0 or last:
            self._log(step, scalars)
        if step % self.eval_every == 0 or last:
            self._validate(state, step, val_batches)
        if (last or self.stopped_early or self.signum
                or checkpoint_due(self.config, step, self.last_save, self.eval_every)):
            self._save(state, step)
        return state

    def _profile_end(self) -> None:
        if self.profiling:
            jax.profiler.stop_trace()
            self.profiling = False
            logging.info("profile of steps %s..%s written to %s (tensorboard --logdir=%s, "
                         "Profile tab; or Perfetto)", *self.config.profile_steps,
                         self.profile_dir, self.profile_dir)

    def _check(self) -> None:
        """Checks the steps so far (`check_finite`) and takes in the stop they carry."""
        self.signum = check_finite(self.reached, self.seen, self.ckpt) or self.signum

    def _log(self, step: int, scalars: dict) -> None:
        self._check()
        self.ckpt.check()
        values = jax.device_get({k: v for k, v in scalars.items()
                                 if k not in ("stop", "bad_step")})
        dt = time.perf_counter() - self.t0
        rate = (step - self.n0) * self.config.batch_size / max(dt, 1e-9)
        eta = (self.total_steps - step) * self.config.batch_size / max(rate, 1e-9)
        logging.info("step %d/%d loss %.4f  %.1f img/s  ETA %.0fs", step, self.total_steps,
                     values["loss"], rate, eta)
        self.writer.write(step, {**{f"train/{k}": v for k, v in values.items()},
                                 "train/learning_rate": self.schedule(step - 1),
                                 "train/images_per_second": rate})
        self.t0, self.n0 = time.perf_counter(), step

    def _validate(self, state: TrainState, step: int, val_batches) -> None:
        self._check()
        meta, config = self.meta, self.config
        results = evaluate_lib.evaluate(self.steps, state, val_batches(), config)
        self.writer.write(step, evaluate_lib.flat(results, "val"))
        score = evaluate_lib.selection_score(results, config.early_stopping_metric)
        if meta["best_score"] is None or score > meta["best_score"]:
            meta.update(best_score=score, best_step=step, bad_evals=0)
            self.best_state = self.steps.copy(state)
        else:
            meta["bad_evals"] += 1
        logging.info("step %d validation %s (best %.4f at step %s)", step,
                     {t: round(r["accuracy"], 4) for t, r in results.items()},
                     meta["best_score"], meta["best_step"])
        patience = config.early_stopping_patience
        if patience and meta["bad_evals"] >= patience:
            logging.info("Early stop at step %d: no better validation %s in %d evaluations",
                         step, config.early_stopping_metric, patience)
            self.stopped_early = True

    def _save(self, state: TrainState, step: int) -> None:
        self._check()
        if self.best_state is not None:
            # Written before the checkpoint that names it: a checkpoint's best step is
            # always in best/ (a crash in between leaves an extra best, dropped on resume).
            self.best_ckpt.save(self.meta["best_step"], self.best_state,
                                {**self.meta, "step": self.meta["best_step"]})
            self.best_ckpt.wait()
            self.best_state = None
        self.meta["step"] = self.saved = step
        self.ckpt.save(step, state, self.meta)
        self.last_save = time.monotonic()

    def _stop(self, step: int) -> None:
        self._wait()
        raise signals.Interrupted(self.signum, stopped_message(
            self.signum, step, self.total_steps, f"saved a checkpoint at step {step} in "
            f"{self.ckpt.directory}; rerun the same command to resume from it."))

    def _wait(self) -> None:
        self.ckpt.wait()
        self.best_ckpt.wait()

    def _timing(self, start: int) -> dict:
        timing = {"first_step_s": self.first_step_s}
        if self.loop_began is not None and self.reached > start + 1:  # the steps after the first
            seconds = time.perf_counter() - self.loop_began
            rate = (self.reached - start - 1) * self.config.batch_size / seconds
            timing.update(train_s=seconds, train_images_per_s=rate)
            logging.info("trained %d steps in %.1fs after the first: %.1f img/s with "
                         "validation and checkpoints", self.reached - start - 1, seconds, rate)
        return timing


def stopped_message(signum: int, step: int, total_steps: int, rest: str) -> str:
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    return f"stopped by {name} at step {step} of {total_steps}; {rest}"


def checkpoint_due(config, step: int, last_save: float, eval_every: int) -> bool:
    """Whether ``step`` is a checkpoint step besides the last one: every
    ``config.checkpoint_every_steps`` steps, or when 0, the first log or validation step
    ``config.checkpoint_every_secs`` after the last save (every process agrees: process 0's
    clock decides)."""
    if config.checkpoint_every_steps:
        return step % config.checkpoint_every_steps == 0
    if step % config.log_every_steps and step % eval_every:
        return False
    due = time.monotonic() - last_save >= config.get("checkpoint_every_secs", 120.0)
    if jax.process_count() > 1:
        due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due


def agreed_stop(signum: int | None) -> int:
    """The largest signal number any process passes (0: none), the same on every process;
    outside the train step's own collectives, one exchange between the processes."""
    if jax.process_count() == 1:
        return int(signum or 0)
    return int(np.max(multihost_utils.process_allgather(np.int32(signum or 0))))


def check_finite(step: int, scalars: dict, ckpt: checkpointing.Checkpointer) -> int:
    """Stops the run if a step up to ``step`` produced a non-finite loss or parameters; else
    returns the largest signal those steps carried (`Steps.train`; 0: none)."""
    bad_step, stop = map(int, jax.device_get((scalars["bad_step"], scalars["stop"])))
    if bad_step:
        ckpt.wait()
        raise errors.NonFiniteError(
            f"non-finite loss or parameters at step {bad_step} (seen at step {step}); the "
            f"last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Lower "
            "config.learning_rate or set config.clip_norm, then rerun the same command to "
            "resume from it."
        )
    return stop
