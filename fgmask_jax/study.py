r"""The study's eight methods in one command, compared with confidence intervals by person.

  python -m fgmask_jax.study --data=synthetic --protocol=study --workdir=DIR --runlocal
  python -m fgmask_jax.study --data=fgnet_mask --protocol=subject --workdir=DIR
  python -m fgmask_jax.study --data=synthetic --protocol=lopo --workdir=DIR --runlocal \
      --methods=lbp,tiny_image,eigenface,multitask_cnn
  python -m fgmask_jax.study --data=synthetic_paired --protocol=study,photo,subject \
      --workdir=DIR --runlocal
  python -m fgmask_jax.study --workdir=DIR --compare_with=RUNLOCAL_DIR

Runs LBP, Tiny Image, VGG-Face, Eigenface, the single-task CNN and ResNet (one run
per task), and the multi-task CNN and ResNet, each through the functions
``fgmask_jax.main`` calls, in ``DIR/<method>`` (``DIR/<method>/<task>`` for the
single-task ones). A method whose folder already holds ``results.json`` is not run
again. Then it writes:

- ``DIR/study.md``: accuracy per method and task with its 95% interval from a
  bootstrap over persons (`evaluation.bootstrap`), the study's comparisons as paired
  differences on the same persons (multi-task vs single-task, ResNet vs CNN, the best
  neural vs the best classical method), balanced accuracy and macro-F1, and the
  majority-class rate as the floor;
- ``DIR/study.csv``: one row per method x task x metric (value, low, high, seeds, sd);
- ``DIR/study.png``: accuracies as grouped bars with the intervals as error bars;
- ``DIR/study.json``: what each run was and how long it took.

``--seeds=N`` trains each neural method N times on the same splits (``config.seed``
0..N-1; seed s > 0 in ``DIR/<method>[/<task>].seed<s>``): its value is then the mean,
its interval resamples persons and seeds (a two-level bootstrap), and the table adds
the seeds' standard deviation. Finished seeds are not run again, so raising N later
trains only the new ones.

Intervals need each run's per-image predictions (``predictions.npz`` in its folder:
``subject_id``, ``label_<task>``, ``pred_<task>``); a run without them gets its
point values from ``results.json`` and no interval, and study.md says so.
Under ``--protocol=lopo`` (leave persons out) each method trains one model per fold
of persons (every method the same folds; ``--lopo_folds``); the neural methods
then take that many times longer. All eight run under every protocol; VGG-Face is
VGG-16 trained end to end unless ``--pretrained_vgg_face`` names a local weights file
(none is downloaded; a named file that is not there stops the study before anything
runs).

Several protocols (``--protocol=study,photo,subject``) run the study once per
protocol in ``DIR/<protocol>`` and compare them in ``DIR/leak.md`` (and
``leak.csv``, ``leak.json``): per method and task the accuracy under each protocol
and the points by which the study's random image split inflates it over the
others (`run_comparison`). On ``synthetic_paired`` (about 3.4 masked copies of
each photo) that measures the copy leak of the study's protocol. ``--persons_control``
adds a control for the subject protocol's fewer training persons: study and photo run
again on as many training persons as subject's, in ``DIR/<protocol>_<K>persons``.

``--compare_with=OTHER`` trains nothing: it sets this study's finished runs against those
of another study of the same test images (e.g. the same command without ``--runlocal``),
method by method, as paired differences with intervals, in ``DIR/compare.md`` and
``compare.json`` (`experiments.compare`).

Where a report gives many intervals (the paired comparisons, the inflations), it says
how many would exclude 0 by chance alone and which still do after Holm's correction
(two-sided bootstrap p-values, family-wise error 5%). A method of the eight that did
not run is named under study.md's accuracy table with the reason.
"""

from __future__ import annotations

import sys

from absl import flags

from fgmask_jax import cli, config_lib, distributed, errors
from fgmask_jax.experiments import compare, leak, study


def define_flags() -> None:
    """The command's flags (defined only when run as a command: importing this module
    leaves absl's global flags alone)."""
    cli.define_cluster_flags()  # a cluster job joins as main does
    flags.DEFINE_enum("data", "synthetic", list(config_lib.DATASETS),
                      "Which data: FGNET-MASK, the synthetic set (synthetic_paired: masked "
                      "copies of each photo and its unmasked twin), or FG-NET with drawn "
                      "masked copies of each photo (fgnet_paired).")
    flags.DEFINE_list("protocol", ["study"],
                      "study: the study's random image split; subject: subject-disjoint; "
                      "photo: photo-disjoint (synthetic_paired, fgnet_mask, fgnet_paired); "
                      "lopo: leave persons out (one model per fold of persons). Several, "
                      "comma-separated and study among them (e.g. study,photo,subject): each "
                      "runs in WORKDIR/<protocol> and leak.md/csv/json compare them side by side.")
    flags.DEFINE_string("workdir", None,
                        "The study's folder; each run in WORKDIR/<method>[/<task>] "
                        "(WORKDIR/<protocol>/<method>[/<task>] with several protocols).")
    flags.DEFINE_bool("runlocal", False, f"Sized for a laptop CPU: {study.RUNLOCAL_TEXT}.")
    flags.DEFINE_list("methods", list(study.METHODS),
                      f"A subset of: {', '.join(study.METHODS)}. "
                      "Not given, with several protocols and --runlocal: "
                      f"{','.join(leak.RUNLOCAL_METHODS)}.")
    flags.DEFINE_string("data_dir", "", "TFDS data dir ('' -> $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets); a missing dataset is built there.")
    flags.DEFINE_string("manual_dir", "", "fgnet_mask and fgnet_paired: the folder of their "
                        "archives ('' -> DATA_DIR/downloads/manual).")
    flags.DEFINE_string("resnet", "", "ResNet of the ResNet methods ('' -> resnet18 under "
                        "--runlocal, else resnet152).")
    flags.DEFINE_string("pretrained_resnet", "",
                        "A torchvision ResNet file (.safetensors, or .pth with torch) of "
                        "--resnet's depth: the ResNet methods fine-tune from it, as the study "
                        "did; their rows say 'pretrained'.")
    flags.DEFINE_string("pretrained_vgg_face", "",
                        "A local VGG-Face .safetensors file: VGG-Face is then fc7 features + a "
                        "linear classifier, as in the study; without it VGG-16 is trained end "
                        "to end.")
    flags.DEFINE_multi_string("neural_override", [], "KEY=VALUE set on every neural config "
                              "(after --runlocal's variant), e.g. num_epochs=2.")
    flags.DEFINE_integer("lopo_folds", 0, "--protocol=lopo: folds of persons, the same for "
                         "every method (0: 10, or 5 under --runlocal).")
    flags.DEFINE_bool("persons_control", False, "With several protocols, subject among them: "
                      "also run study and photo with their training split cut to as many "
                      "persons as subject's (drawn with split_seed) and tested on those "
                      "persons' test images, as a control for subject's fewer training "
                      "persons; leak.md adds its section. Trains every method once per cut "
                      "protocol more.")
    flags.DEFINE_string("compare_with", "", "Train nothing: compare the finished runs of "
                        "WORKDIR with those of this other study's folder (same data, protocol "
                        "and split_seed; e.g. the same study without --runlocal): per method "
                        "and task, WORKDIR's accuracy minus the other's, paired on the test "
                        "persons, in WORKDIR/compare.md and compare.json.")
    flags.DEFINE_integer("num_samples", 1000, "Bootstrap samples of persons.")
    flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")
    flags.DEFINE_integer("seeds", 1, "Train each neural method this many times on the same "
                         "splits (config.seed 0..N-1; seed s>0 in <method>.seed<s>): the "
                         "tables give the mean, intervals over persons and seeds, and the "
                         "seeds' standard deviation. The classical methods run once.")


def main(argv):
    if len(argv) > 1:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    distributed.maybe_initialize(cli.cluster_options())  # before any JAX computation
    # The command line without the workdir, for the comparison's outputs.
    command = "python -m fgmask_jax.study " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--workdir")) + " --workdir=DIR"
    if f.compare_with:
        out = compare.compare_studies(cli.absolute(f.workdir), cli.absolute(f.compare_with),
                                      num_samples=f.num_samples, seed=f.seed)
        print(out["markdown"])
        return
    print(leak.run_protocols(
        cli.absolute(f.workdir), f.protocol, data=f.data,
        methods=tuple(f.methods) if f["methods"].present else None, command=command,
        runlocal=f.runlocal, resnet=f.resnet,
        pretrained_resnet=cli.absolute(f.pretrained_resnet),
        pretrained_vgg_face=cli.absolute(f.pretrained_vgg_face),
        data_dir=cli.absolute(f.data_dir), manual_dir=cli.absolute(f.manual_dir),
        neural_overrides=study.parse_overrides(f.neural_override), lopo_folds=f.lopo_folds,
        num_samples=f.num_samples, seed=f.seed, seeds=f.seeds,
        persons_control=f.persons_control))


if __name__ == "__main__":
    define_flags()
    flags.mark_flags_as_required(["workdir"])
    cli.run(main, prog="fgmask_jax.study")
