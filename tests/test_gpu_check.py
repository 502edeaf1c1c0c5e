"""benchmarks/gpu_check.py --smoke, typed as a user types it: every section measured."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("hlo", "train_step", "train_loop", "warm_start", "study_recipe", "predictor")


def positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_smoke_measures_every_section(tmp_path, small_data_dir):
    out = tmp_path / "gpu_check"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", f"--out={out}",
         f"--data_dir={small_data_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["smoke"] is True
    sections = results["sections"]
    assert set(sections) == set(SECTIONS)
    for name, entry in sections.items():
        assert entry["error"] is None, (name, entry.get("traceback"))

    hlo = sections["hlo"]["values"]
    assert hlo["platform"] == "cpu" and hlo["kernels"] == "cpu"  # kernels=auto resolved
    assert hlo["no_conditional"] is True and hlo["conditional_ops"] == 0
    assert hlo["no_host_callback"] is True
    assert hlo["convolution_ops"] > 0 and hlo["conv_layers"] > 0

    (row,) = sections["train_step"]["values"]["rows"]
    assert positive(row["jax_img_s"])
    if row["torch_img_s"] is None:  # without torch, a note says why
        assert "torch" in row["torch_note"]
    else:
        assert positive(row["torch_img_s"]) and positive(row["ratio"])
    # The targets are shown beside the measurements, judged only on a GPU.
    step_checks = sections["train_step"]["checks"]
    assert step_checks and all(c["pass"] is None for c in step_checks)

    loop = sections["train_loop"]["values"]
    assert all(positive(loop[k]) for k in ("step_img_s", "run_img_s", "ratio"))
    assert [c["pass"] for c in sections["train_loop"]["checks"]] == [None]
    warm = sections["warm_start"]["values"]
    assert all(positive(warm[k]) for k in ("cold_first_step_s", "warm_first_step_s"))

    study = sections["study_recipe"]["values"]
    assert study["freeze"] and study["head_hidden"] == 1024
    assert positive(study["frozen_img_s"]) and positive(study["not_frozen_img_s"])
    assert positive(sections["predictor"]["values"]["img_s"])

    table = (out / "results.md").read_text()
    assert "| section | measurement | value | target | pass |" in table
    assert "targets are for one H200" in table
    for name in SECTIONS:
        assert f"| {name} |" in table
