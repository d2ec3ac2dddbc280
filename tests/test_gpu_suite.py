"""The GPU suite (docs/gpu.md) is wired on a machine without a GPU too: `-m gpu` collects every test of
tests/gpu/ and each skips with "CUDA is not available" (the default run deselects them), and
scripts/bench_gpu.py refuses in one line, exit 2. On a GPU machine the suite itself runs instead."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.gpu import NO_CUDA

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the suite itself")

EXPECTED = {
    "test_gpu_training": [
        "test_each_precision_trains_on_the_gpu[32-true]",
        "test_each_precision_trains_on_the_gpu[16-mixed]",
        "test_each_precision_trains_on_the_gpu[bf16-mixed]",
        "test_channels_last_and_compile_train_a_conv_net_on_the_gpu[channels_last]",
        "test_channels_last_and_compile_train_a_conv_net_on_the_gpu[compile]",
    ],
    "test_gpu_ddp": ["test_ddp_trains_on_every_gpu"],
    "test_gpu_recipes": [
        "test_a_gpu_trained_net_quantizes_and_exports_with_parity",
        "test_gan_trains_on_the_gpu",
        "test_adversarial_training_on_the_gpu",
    ],
    "test_gpu_resume": [
        "test_a_stopped_run_resumes_to_the_end_of_its_budget[gpu-gpu]",
        "test_a_stopped_run_resumes_to_the_end_of_its_budget[cpu-gpu]",
        "test_a_stopped_run_resumes_to_the_end_of_its_budget[gpu-cpu]",
        "test_the_cuda_rng_states_round_trip",
    ],
}


def test_minus_m_gpu_collects_the_suite_and_skips_it_with_the_reason(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-p", "no:cacheprovider", "-q"]
    proc = subprocess.run(
        [*command, f"--junitxml={report}", "tests/gpu"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    found = {
        (case.get("classname").rsplit(".", 1)[-1], case.get("name")): [s.get("message") for s in case.iter("skipped")]
        for case in ET.parse(report).getroot().iter("testcase")
    }
    assert set(found) == {(module, name) for module, names in EXPECTED.items() for name in names}
    assert all(reasons == [NO_CUDA] for reasons in found.values()), found


@pytest.mark.parametrize("selection", [[], ["-m", "slow"]], ids=["default", "slow"])
def test_the_default_and_slow_runs_deselect_the_suite(selection: list[str]) -> None:
    command = [sys.executable, "-m", "pytest", *selection, "-n", "0", "-p", "no:cacheprovider", "-q", "--co"]
    proc = subprocess.run([*command, "tests/gpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    total = sum(len(names) for names in EXPECTED.values())
    assert proc.returncode == 5 and f"no tests collected ({total} deselected)" in proc.stdout, proc.stdout[-2000:]


def test_bench_gpu_refuses_in_one_line_without_cuda() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "scripts/bench_gpu.py"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout[-2000:])
    assert proc.stderr == "error: scripts/bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)\n"
