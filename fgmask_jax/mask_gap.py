r"""What the mask costs: train on masked or unmasked faces, test on both versions of the
same test photos.

  python -m fgmask_jax.mask_gap --workdir=DIR --runlocal
  python -m fgmask_jax.mask_gap --workdir=DIR --protocol=subject \
      --methods=multitask_cnn,multitask_resnet,single_task_cnn

Needs data whose masked images and unmasked twins of one photo are both known: the
synthetic ``paired`` set (``--data=synthetic_paired``, the default), or FG-NET's photos
with masked copies of each (``--data=fgnet_paired``: FG-NET and FGNET-MASK's archive in
the manual dir; see docs/beyond_the_study.md). For each neural method it trains one
model on each training set of the protocol's training photos:

- ``masked``: every masked copy (``<protocol>_train``, about 3.4 copies a photo);
- ``masked_one``: one masked copy per photo, drawn at random (seed 0): as many images
  of the same photos as the unmasked set (``--one_copy``, on by default);
- ``unmasked``: the unmasked twin of each photo (``unmasked_<protocol>_train``);

every model on the ``masked`` run's schedule: its number of steps, a validation check
every epoch of the ``masked`` set (so all three get the same number of checks, the same
images seen between them, and early stopping's patience means the same), and its
warmup; each is early-stopped on its own photo- (or person-) disjoint validation subset.
Each model is then tested on the masked copies of the protocol's test photos
(``<protocol>_test``) and on their unmasked twins (``unmasked_<protocol>_test``). A run
whose folder holds results.json and both test files is not run again.

Writes in ``DIR``: ``mask_gap.md`` (per method and task, accuracy [95% interval by
person] for each training set x test set, each test photo counted once (its masked
copies' share answered right); the gap, unmasked test minus masked test of one model,
and the cost, trained and tested unmasked minus trained and tested masked, both paired
by photo with intervals from a bootstrap over the test persons (their photos nested in
them); whether each interval excludes 0, and whether it still does after Holm's
correction over all of them) and ``mask_gap.json`` (the same, with p-values, sizes and
timings). Each run's folder ``DIR/<method>[/<task>]/<training set>`` holds its usual
report and ``test_masked.npz`` / ``test_unmasked.npz`` (``index``, ``subject_id``,
``label_<task>``, ``pred_<task>``).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from fgmask_jax import cli, distributed, errors
from fgmask_jax.experiments import mask_gap
from fgmask_jax.experiments.mask_gap import run_mask_gap
from fgmask_jax.experiments.study import parse_overrides


def define_flags() -> None:
    """The command's flags (defined only when run as a command)."""
    cli.define_cluster_flags()  # a cluster job joins as main does
    flags.DEFINE_string("workdir", None, "The folder; each run in "
                        "WORKDIR/<method>[/<task>]/<training set>.")
    flags.DEFINE_enum("protocol", "photo", list(mask_gap.PROTOCOLS),
                      "Which photos are tested: photo: 75/25 of source photos; subject: "
                      "75/25 of persons.")
    flags.DEFINE_list("methods", list(mask_gap.DEFAULT_METHODS),
                      f"A subset of: {', '.join(mask_gap.METHODS)}.")
    flags.DEFINE_enum("data", "synthetic_paired", list(mask_gap.DATA),
                      "Data with unmasked twins of the masked photos: the synthetic paired "
                      "set, or FG-NET's photos with masked copies of each.")
    flags.DEFINE_bool("runlocal", False, "The runlocal configs (ResNet-18 and the CNN at 64 "
                      "px), 5 epochs of the all-copies set: about 30 minutes on two CPU "
                      "cores.")
    flags.DEFINE_bool("one_copy", True, "Also train on one masked copy per photo: as many "
                      "images of the same photos as the unmasked set.")
    flags.DEFINE_string("resnet", "", "ResNet of the ResNet methods ('' -> resnet18 under "
                        "--runlocal, else resnet152).")
    flags.DEFINE_string("data_dir", "", "TFDS data dir ('' -> $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets); a missing dataset is built there.")
    flags.DEFINE_string("manual_dir", "", "fgnet_paired only: the folder of FGNET.zip and "
                        "FGNET-MASK_dataset.zip ('' -> DATA_DIR/downloads/manual).")
    flags.DEFINE_multi_string("neural_override", [], "KEY=VALUE set on every run, e.g. "
                              "num_epochs=2 (the steps of every training set follow it).")
    flags.DEFINE_integer("num_samples", 1000, "Bootstrap samples of persons.")
    flags.DEFINE_integer("seed", 0, "Seed of the bootstrap and of the one-copy draw.")
    flags.DEFINE_integer("seeds", 1, "Train each model this many times on the same sets "
                         "(config.seed 0..N-1; seed s>0 in <method>.seed<s>): accuracies, gaps "
                         "and costs are their means, with intervals over persons and seeds.")


def main(argv):
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    distributed.maybe_initialize(cli.cluster_options())  # before any JAX computation
    workdir = cli.absolute(f.workdir)
    command = "python -m fgmask_jax.mask_gap " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--workdir")) + " --workdir=DIR"
    out = run_mask_gap(workdir, protocol=f.protocol, methods=tuple(f.methods),
                       runlocal=f.runlocal, resnet=f.resnet, one_copy=f.one_copy,
                       data=f.data, data_dir=cli.absolute(f.data_dir),
                       manual_dir=cli.absolute(f.manual_dir),
                       neural_overrides=parse_overrides(f.neural_override),
                       num_samples=f.num_samples, seed=f.seed, command=command,
                       seeds=f.seeds)
    print(f"mask_gap: {len(out['runs'])} runs "
          f"({sum(r['status'] == 'ran' for r in out['runs'])} ran now) in "
          f"{out['seconds']:.0f}s; see {os.path.join(workdir, 'mask_gap.md')}")


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    cli.run(main, prog="fgmask_jax.mask_gap")
