"""One process of a multi-process test job, started by tests/test_multiprocess.py.

  python tests/multiprocess_worker.py --mode=MODE --out=DIR [fgmask_jax.distributed flags]

Modes:
  join                joins (fgmask_jax.distributed.maybe_initialize), all-reduces once,
                      writes DIR/topology_I.json; with --exit_after_join=CODE process 1
                      then dies at once (a crashed peer) and the others keep all-reducing
  train_and_evaluate  train.train_and_evaluate on a built dataset (--data_dir) into DIR,
                      and this process's rows of the training order in DIR/order_I.npy
  fail_one            no JAX: process 1 exits with status 3, the others sleep (for
                      launch/local.sh's failure handling)

The test imports the helpers below to run the same steps in one process.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

TASKS = ("age_group", "gender", "expression")
GLOBAL_BATCH = 8
IMAGE_SIZE = 32
ORDER_EXAMPLES = 37  # 4 batches of 8 per epoch, 5 dropped
ORDER_BATCHES = 8  # two epochs


def tiny_config():
    from fgmask_jax import config_lib

    c = config_lib.neural_config(f"model=resnet_tiny,size={IMAGE_SIZE}", tasks=TASKS)
    c.batch_size = GLOBAL_BATCH
    c.warmup_epochs = 0.0  # so that the first step already moves the parameters
    return c


def training_order() -> np.ndarray:
    """This process's rows of the first ORDER_BATCHES training batches: int64[batches, rows]."""
    from fgmask_jax.data import pipeline

    order = pipeline.batch_order(np.arange(ORDER_EXAMPLES), global_batch=GLOBAL_BATCH, seed=3)
    return np.stack([np.asarray(order[t]) for t in range(ORDER_BATCHES)])


def _define_flags() -> None:
    flags.DEFINE_enum("mode", None, ["join", "train_and_evaluate", "fail_one"],
                      "What this process does.")
    flags.DEFINE_string("out", None, "Output folder (the workdir in train_and_evaluate).")
    flags.DEFINE_integer("steps", 3, "Train steps (mode=train_and_evaluate).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (mode=train_and_evaluate).")
    flags.DEFINE_integer("exit_after_join", None, "mode=join: process 1 dies with this status.")
    flags.mark_flags_as_required(["mode", "out"])


def _join(out: str) -> None:
    import jax

    from fgmask_jax import cli, distributed

    joined = distributed.maybe_initialize(cli.cluster_options())
    total = distributed.check_all_reduce()
    info = {"joined": joined, "process_index": jax.process_index(),
            "process_count": jax.process_count(), "local_devices": jax.local_device_count(),
            "devices": jax.device_count(), "all_reduce": total}
    with open(os.path.join(out, f"topology_{jax.process_index()}.json"), "w") as f:
        json.dump(info, f)
    code = flags.FLAGS.exit_after_join
    if code is None:
        return
    if jax.process_index() == 1:
        os._exit(code)  # a crash: no shutdown, no goodbye to the coordinator
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # JAX must stop this process (heartbeat timeout)
        distributed.check_all_reduce()
        time.sleep(0.2)
    raise SystemExit("the dead peer was not noticed within 120 s")


def _train_and_evaluate(out: str, num_steps: int, data_dir: str) -> None:
    import jax

    from fgmask_jax import cli, distributed, train
    from fgmask_jax.data import build as build_data

    distributed.maybe_initialize(cli.cluster_options())
    config = tiny_config()
    config.dataset = "synthetic_masked_faces/small"
    config.data_dir = data_dir
    config.num_train_steps = num_steps
    config.eval_every_steps = num_steps
    config.checkpoint_every_steps = num_steps
    config.log_every_steps = 1
    build_data.build(config.dataset, data_dir)  # built already: registers the builder
    train.train_and_evaluate(config, out)
    np.save(os.path.join(out, f"order_{jax.process_index()}.npy"), training_order())


def _fail_one() -> None:
    process_id = flags.FLAGS.process_id or 0
    with open(os.path.join(flags.FLAGS.out, f"pid_{process_id}"), "w") as f:
        f.write(str(os.getpid()))
    if process_id == 1:
        time.sleep(0.5)
        sys.exit(3)
    time.sleep(120)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    os.makedirs(f.out, exist_ok=True)
    if f.mode == "join":
        _join(f.out)
    elif f.mode == "train_and_evaluate":
        _train_and_evaluate(f.out, f.steps, f.data_dir)
    else:
        _fail_one()


if __name__ == "__main__":
    from fgmask_jax import cli

    cli.define_cluster_flags()

    _define_flags()
    app.run(main)
