"""The project's one-shot GPU check: every open GPU question in one command.

On a GPU machine that reaches no package registry (for example one H200 with Python 3.12,
JAX with CUDA, flax, optax, orbax-checkpoint, torch and torchvision preinstalled), from the
project's root. Once, on a machine that reaches the registries, download the wheels it
lacks (grain, tensorflow-datasets, ml-collections, array-record and their small
dependencies) into `.whl` with `pip download --only-binary=:all: --python-version=3.12`,
and keep them out of git (`echo /.whl/ >> .git/info/exclude`).

Send `.whl` along with the working tree, and there run:

  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . \\
    && export PYTHONPATH=/tmp/site || exit 1
  python3 benchmarks/gpu_check.py --out=$OUT --commit=COMMIT 2> $OUT/gpu_check.log

(the second install puts the project itself in /tmp/site: a plain PYTHONPATH=. does not find
`fgmask_jax.tfds_builder`; COMMIT is the commit sent, as the copy there has no .git).
Expected duration: about 8 minutes on one H200, most of it compilation: an estimate from
what was measured there at commit ed79639 (a whole run's compile to its first step: 65 s
for ResNet-50, about 140 s for ResNet-152), as the current code has not yet run on a GPU;
give the command 10 minutes. It writes `results.json`, `results.md`, `train_loop.log` and
`train_step_hlo.txt` (the compiled step) to --out, each section's entry as soon as it
ends, so that a run cut short still leaves what it measured. A section that fails records
its error and the next one runs; the exit code is 1 if any failed.

Sections, at GPU sizes (--smoke: resnet_tiny at 32 px, batch 8, 3 timed steps, the 60-image
synthetic set, torch rows where torch is installed, XLA's backend optimisation off so that
it compiles fast; about 40 s of CPU time, train_loop's runs beside the other sections, which
took 40 s of wall time on 2 shared cores):
  hlo           our real `train.Steps` train step of ResNet-50 at 224 px, batch 256, with
                config.kernels=auto resolved for the platform, compiled: `conditional` ops
                and host-callback custom calls (none expected), and the custom calls that
                do the convolutions (`__cudnn$conv*` by target; on CPU the count of XLA
                `convolution` ops instead)
  train_step    images/s of the train step, ResNet-50 at 224 px batch 256 and ResNet-152 at
                224 px batch 128 (bfloat16 on a GPU), beside PyTorch AMP + channels_last in
                the same process: train_step.py's fair comparison (one device each, same
                heads, median of 20 synced steps; --torch_compile adds torch.compile)
  train_loop    benchmarks/train_loop.py on ResNet-50 at 112 px, batch 256, the synthetic
                set on the device, validation every epoch, checkpoints timed (every 120 s
                and at the end): the whole run's training images/s over its step's alone
  warm_start    from the same two runs: seconds from the command's start to its first step
                done, with an empty compilation cache and with the one the first run filled
                (the same JAX_COMPILATION_CACHE_DIR)
  study_recipe  the recipe=study step (stem, layer1 and layer2 frozen, 1024-unit heads,
                AdamW, clipping) of ResNet-50 at 112 px, batch 256, beside the same step with
                nothing frozen
  predictor     `inference.Predictor` images/s (host arrays in, probabilities out) of
                ResNet-50 at 112 px, batch 256
The targets (for one H200: ResNet-152 step >= 3,200 img/s and >= 1.5x PyTorch
AMP; ResNet-50 step >= 7,950 img/s; whole run >= 80% of its step; warm first step <= 15 s)
stand beside the measurements with pass or fail on a GPU; on a CPU they are only shown.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import predict  # benchmarks/: the Predictor's rate
import train_step  # benchmarks/: the fair train-step comparison
from absl import app, flags

from fgmask_jax import models, runs
from fgmask_jax.data import build as build_data

_OUT = flags.DEFINE_string("out", None, "Folder for results.json, results.md and the logs "
                           "(created).", required=True)
_SMOKE = flags.DEFINE_bool("smoke", False, "Every section at tiny sizes: a check of this "
                           "script on a CPU, in under a minute.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS folder for the train_loop section's "
                                "synthetic set (built there if missing); default: a "
                                "temporary folder.")
_COMMIT = flags.DEFINE_string("commit", "", "The commit measured, where git cannot tell (a "
                              "copy of the working tree without .git); default: git's.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "Also time PyTorch "
                                   "torch.compile'd in train_step (minutes more on a GPU).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_NOTE = "targets are for one H200"


@dataclasses.dataclass(frozen=True)
class Sizes:
    hlo: tuple[str, int, int]  # (model, size, batch)
    steps: tuple[tuple[str, int, int], ...]
    timed: int  # timed steps (or batches) per rate; the median counts
    warmup: int
    loop_config: str  # train_loop.py's --config, relative to the repository
    loop_overrides: tuple[str, ...]
    dataset: str
    recipe: tuple[str, int, int, str | None]  # (model, size, batch, freeze: None = recipe's)
    predictor: tuple[str, int, int]
    loop_timeout_s: int


FULL = Sizes(
    hlo=("resnet50", 224, 256),
    steps=(("resnet50", 224, 256), ("resnet152", 224, 128)),
    timed=20, warmup=3,
    loop_config="configs/multitask.py:data=synthetic,model=resnet50,size=112",
    # The report's Grad-CAM maps come after training and count in neither measurement.
    loop_overrides=("batch_size=256", "data_on_device=True", "saliency_images=0"),
    dataset="synthetic_masked_faces",
    recipe=("resnet50", 112, 256, None),
    predictor=("resnet50", 112, 256),
    loop_timeout_s=360,
)
SMOKE = Sizes(
    hlo=("resnet_tiny", 32, 8),
    steps=(("resnet_tiny", 32, 8),),
    timed=3, warmup=1,
    loop_config="configs/multitask.py:data=synthetic,model=resnet_tiny,size=32,runlocal",
    loop_overrides=("dataset=synthetic_masked_faces/small", "batch_size=8", "num_epochs=1",
                    "saliency_images=0"),
    dataset="synthetic_masked_faces/small",
    recipe=("resnet_tiny", 32, 8, "stem,layer1"),  # the parts resnet_tiny has
    predictor=("resnet_tiny", 32, 8),
    loop_timeout_s=120,
)
# The targets, for one H200: [(measurement key, "<=" or ">=", target)]. The train
# step's are by row, in the order of Sizes.steps (ResNet-50, then ResNet-152).
STEP_TARGETS = ([("jax_img_s", ">=", 7950.0)],
                [("jax_img_s", ">=", 3200.0), ("ratio", ">=", 1.5)])
TARGETS = {"train_loop": [("ratio", ">=", 0.80)],
           "warm_start": [("warm_first_step_s", "<=", 15.0)]}


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def checks(values: dict, targets: list, prefix: str = "") -> list[dict]:
    """Each target beside its measurement: pass/fail on a GPU, None elsewhere."""
    out = []
    for key, op, target in targets:
        value = values.get(key)
        passed = None
        if on_gpu() and value is not None:
            passed = bool(value >= target if op == ">=" else value <= target)
        out.append({"what": prefix + key, "value": value, "target": f"{op} {target:g}",
                    "pass": passed})
    return out


# --- sections: each returns {"values": ..., "checks": [...]} and may raise


def section_hlo(sizes: Sizes, ctx: dict) -> dict:
    model, size, batch = sizes.hlo
    config = train_step.step_config(model, size, batch)
    steps = train_step.jax_steps(config)
    state = jax.eval_shape(steps.init, jax.random.key(0))
    data = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=steps.data)
            for k, v in train_step.random_batch(batch, size).items()}
    text = steps.lower_train(state, data).compile().as_text()
    targets = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', text))
    cudnn = {t: n for t, n in sorted(targets.items()) if t.startswith("__cudnn$conv")}
    callbacks = {t: n for t, n in sorted(targets.items()) if "callback" in t.lower()}
    conditionals = len(re.findall(r"\bconditional\(", text))
    convolutions = len(re.findall(r"\bconvolution\(", text))
    conv_layers = sum(leaf.ndim == 4 for leaf in jax.tree.leaves(state.params))
    values = {
        "model": model, "size": size, "batch": batch, "platform": jax.default_backend(),
        "kernels": models.resolve_kernels(config.kernels),
        "dtype": jnp.dtype(runs.compute_dtype(config)).name,
        "conditional_ops": conditionals, "no_conditional": conditionals == 0,
        "host_callback_calls": callbacks, "no_host_callback": not callbacks,
        "conv_layers": conv_layers, "convolution_ops": convolutions,
        "cudnn_conv_calls": cudnn, "custom_call_targets": dict(sorted(targets.items())),
    }
    if on_gpu():
        # Every conv a cuDNN call, kernel gradients among them.
        values["kernel_grads_by_cudnn"] = (
            convolutions == 0 and cudnn.get("__cudnn$convBackwardFilter", 0) > 0)
    with open(os.path.join(ctx["out"], "train_step_hlo.txt"), "w") as f:
        f.write(text)  # the compiled module, for a closer look
    return {"values": values, "checks": []}


def section_train_step(sizes: Sizes, ctx: dict) -> dict:
    rows, all_checks = [], []
    for (model, size, batch), targets in zip(sizes.steps, STEP_TARGETS, strict=False):
        config = train_step.step_config(model, size, batch)
        row = {"model": model, "size": size, "batch": batch,
               "dtype": jnp.dtype(runs.compute_dtype(config)).name,
               "jax_img_s": train_step.jax_rate(config, steps=sizes.timed,
                                                warmup=sizes.warmup)}
        try:
            theirs = train_step.peer_rates(config, compile=_TORCH_COMPILE.value,
                                           steps=sizes.timed, warmup=sizes.warmup)
        except Exception as e:  # the JAX rate stands without its peer
            theirs = train_step.PeerRates(None, None, None,
                                          f"PyTorch failed: {type(e).__name__}: {e}")
        finally:
            _free_torch_memory()
        eager, compiled = theirs.eager, theirs.compiled
        row.update(torch_img_s=eager, torch_compiled_img_s=compiled,
                   torch_threads=theirs.threads,
                   ratio=row["jax_img_s"] / eager if eager else None,
                   ratio_compiled=row["jax_img_s"] / compiled if compiled else None,
                   torch_note=theirs.note or None)
        rows.append(row)
        all_checks += checks(row, targets, prefix=f"{model} ")
    return {"values": {"rows": rows}, "checks": all_checks}


def _free_torch_memory() -> None:
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


def start_train_loop(sizes: Sizes, ctx: dict) -> None:
    """Starts benchmarks/train_loop.py: a cold and a warm run of fgmask_jax.main, then the
    step alone. The train_loop and warm_start sections read its table."""
    data_dir = ctx["data_dir"]
    build_data.build(sizes.dataset, data_dir)  # built before timing: the cold run only compiles
    command = [sys.executable, os.path.join(REPO, "benchmarks", "train_loop.py"),
               f"--config={os.path.join(REPO, sizes.loop_config)}", f"--data_dir={data_dir}",
               f"--steps={sizes.timed}", *[f"--override={o}" for o in sizes.loop_overrides]]
    env = dict(os.environ)
    if env.get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false":  # train_step.py's, for PyTorch:
        del env["XLA_PYTHON_CLIENT_PREALLOCATE"]  # the runs take memory as users' runs do
    log = open(os.path.join(ctx["out"], "train_loop.log"), "w")  # closed in run_train_loop
    log.write(" ".join(command) + "\n")
    log.flush()
    ctx["train_loop_run"] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                              env=env, cwd=REPO), log, command)


def run_train_loop(sizes: Sizes, ctx: dict) -> dict:
    """train_loop.py's numbers (started here unless `start_train_loop` started it), or
    {"error": why}."""
    if "train_loop" in ctx:
        return ctx["train_loop"]
    try:
        if "train_loop_run" not in ctx:
            start_train_loop(sizes, ctx)
        process, log, command = ctx["train_loop_run"]
        try:
            code = process.wait(timeout=sizes.loop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        finally:
            log.close()
        if code:
            raise RuntimeError(f"train_loop.py exited with {code}")
        with open(log.name) as f:
            last = [line for line in f.read().splitlines() if line.strip()][-1]
        numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", last)]
        if len(numbers) != 7:
            raise RuntimeError(f"train_loop.py ended with {last!r}, not its 7 numbers")
    except Exception as e:
        ctx["train_loop"] = {"error": f"{type(e).__name__}: {e} (see train_loop.log)"}
        return ctx["train_loop"]
    keys = ("step_img_s", "run_img_s", "ratio", "cold_first_step_s", "warm_first_step_s",
            "cold_run_s", "warm_run_s")
    ctx["train_loop"] = {"command": " ".join(command[1:]),
                         **dict(zip(keys, numbers, strict=True))}
    return ctx["train_loop"]


def section_train_loop(sizes: Sizes, ctx: dict) -> dict:
    found = run_train_loop(sizes, ctx)
    if "error" in found:
        raise RuntimeError(found["error"])
    values = {k: found[k] for k in ("command", "step_img_s", "run_img_s", "ratio")}
    return {"values": values, "checks": checks(values, TARGETS["train_loop"])}


def section_warm_start(sizes: Sizes, ctx: dict) -> dict:
    found = run_train_loop(sizes, ctx)
    if "error" in found:
        raise RuntimeError(found["error"])
    values = {k: found[k] for k in ("cold_first_step_s", "warm_first_step_s", "cold_run_s",
                                    "warm_run_s")}
    return {"values": values, "checks": checks(values, TARGETS["warm_start"])}


def section_study_recipe(sizes: Sizes, ctx: dict) -> dict:
    model, size, batch, freeze = sizes.recipe
    study = train_step.step_config(model, size, batch, recipe="study", freeze=freeze)
    free = train_step.step_config(model, size, batch, recipe="study", freeze="")
    frozen_rate = train_step.jax_rate(study, steps=sizes.timed, warmup=sizes.warmup)
    free_rate = train_step.jax_rate(free, steps=sizes.timed, warmup=sizes.warmup)
    values = {"model": model, "size": size, "batch": batch, "freeze": study.freeze,
              "head_hidden": study.head_hidden, "optimizer": study.optimizer,
              "frozen_img_s": frozen_rate, "not_frozen_img_s": free_rate,
              "ratio": frozen_rate / free_rate}
    return {"values": values, "checks": []}


def section_predictor(sizes: Sizes, ctx: dict) -> dict:
    model, size, batch = sizes.predictor
    predictor = predict.make_predictor(model, size, batch)
    images = np.random.default_rng(0).integers(
        0, 256, ((sizes.timed + 1) * batch, size, size, 3), dtype=np.uint8)
    rate = predict.predictor_rate(predictor, images, sizes.timed)
    dtype = runs.compute_dtype(train_step.step_config(model, size, batch))
    values = {"model": model, "size": size, "batch": batch, "dtype": jnp.dtype(dtype).name,
              "img_s": rate}
    return {"values": values, "checks": []}


# On a GPU train_loop runs first, alone: fgmask_jax.main's processes then start while this
# one holds no device memory, and nothing else runs beside their timings. Under --smoke it
# runs beside the others (its numbers mean nothing there), and is waited for last.
ORDER = ("train_loop", "warm_start", "hlo", "train_step", "study_recipe", "predictor")
SMOKE_ORDER = ("hlo", "train_step", "study_recipe", "predictor", "train_loop", "warm_start")
SECTIONS = {"hlo": section_hlo, "train_step": section_train_step,
            "train_loop": section_train_loop, "warm_start": section_warm_start,
            "study_recipe": section_study_recipe, "predictor": section_predictor}
REPORT_ORDER = ("hlo", "train_step", "train_loop", "warm_start", "study_recipe", "predictor")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine, what the
    wall clock cannot say."""
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                      resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def describe_machine(smoke: bool) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = _COMMIT.value or git("rev-parse", "--short", "HEAD") or "unknown"
    if not _COMMIT.value and git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit, "command": " ".join(sys.argv), "smoke": smoke,
        "backend": jax.default_backend(), "device": device.device_kind,
        "devices": jax.device_count(), "cpus": os.cpu_count(), "host": platform.node(),
        "load_average": round(os.getloadavg()[0], 1), "jax": jax.__version__,
        "torch": torch_version, "targets": "for one H200" if on_gpu() else TARGET_NOTE,
    }


def write_results(out: str, results: dict) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(results))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    return "n/a" if value is None else str(value)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# GPU check{' (smoke)' if m['smoke'] else ''}", "",
             f"`{m['command']}` on {m['devices']} x {m['device']} ({m['backend']}), "
             f"{m['cpus']} CPUs, load average {m['load_average']}; JAX {m['jax']}, PyTorch "
             f"{m['torch'] or 'not installed'}; commit {m['commit']}; {m['date']}; "
             f"{m['targets']}.", "",
             "| section | measurement | value | target | pass |", "|---|---|---|---|---|"]
    for name in REPORT_ORDER:
        entry = results["sections"].get(name)
        if entry is None:
            lines.append(f"| {name} | not run | | | |")
            continue
        if entry["error"]:
            lines.append(f"| {name} | **error** | {entry['error'].splitlines()[-1][:200]} "
                         "| | |")
            continue
        targets = {c["what"]: c for c in entry["checks"]}
        for what, value in _flat(name, entry["values"]):
            c = targets.get(what)
            passed = "" if c is None else ("n/a" if c["pass"] is None else
                                            "pass" if c["pass"] else "**FAIL**")
            lines.append(f"| {name} | {what} | {_fmt(value)} | "
                         f"{c['target'] if c else ''} | {passed} |")
    return "\n".join(lines) + "\n"


def _flat(section: str, values: dict):
    """(what, value) rows of a section's values; a train_step row's keys named by model."""
    for key, value in values.items():
        if key == "rows":
            for row in value:
                label = f"{row['model']} @{row['size']} b{row['batch']} {row['dtype']}"
                for k, v in row.items():
                    if k not in ("model", "size", "batch", "dtype"):
                        yield (f"{row['model']} {k}" if k in ("jax_img_s", "ratio")
                               else f"{label} {k}"), v
        elif key != "custom_call_targets":
            yield key, value


def main(argv):
    del argv
    sizes = SMOKE if _SMOKE.value else FULL
    if _SMOKE.value:  # timings mean nothing there: compile fast, here and in the runs started
        flags_now = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags_now} --xla_backend_optimization_level=0".strip()
    elif jax.default_backend() == "cpu":
        raise app.UsageError("no accelerator here: the full check takes hours on a CPU and is "
                             "sized for one H200; --smoke runs every section at tiny sizes")
    out = os.path.abspath(_OUT.value)
    os.makedirs(out, exist_ok=True)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # hlo's compile serves train_step
            jax.config.update("jax_compilation_cache_dir", os.path.join(tmp, "xla"))
        ctx = {"out": out, "data_dir": _DATA_DIR.value or os.path.join(tmp, "tfds")}
        results = {"machine": describe_machine(_SMOKE.value), "sections": {}}
        print(f"gpu_check{' --smoke' if _SMOKE.value else ''}: {results['machine']['device']}"
              f" ({results['machine']['backend']}); {results['machine']['targets']}",
              flush=True)
        if _SMOKE.value:
            start_train_loop(sizes, ctx)
        for name in SMOKE_ORDER if _SMOKE.value else ORDER:
            start, cpu = time.perf_counter(), cpu_seconds()
            try:
                entry = {**SECTIONS[name](sizes, ctx), "error": None}
            except Exception as e:  # recorded; the next section runs
                entry = {"values": {}, "checks": [], "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()}
            entry["seconds"] = round(time.perf_counter() - start, 1)
            entry["cpu_seconds"] = round(cpu_seconds() - cpu, 1)
            results["sections"][name] = entry
            results["seconds"] = round(time.perf_counter() - began, 1)
            write_results(out, results)
            print(f"{name}: {'ok' if not entry['error'] else 'ERROR ' + entry['error'][:300]}"
                  f" ({entry['seconds']} s, {entry['cpu_seconds']} s of CPU)", flush=True)
    failed = [n for n, e in results["sections"].items() if e["error"]]
    print(f"results in {out}/results.md and results.json ({results['seconds']} s)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    app.run(main)
