"""The environment record written with every benchmark result."""

from __future__ import annotations

import json

import pytest
import torch

from fastlstm.bench.env import environment, machine_slug


def test_environment_records_hardware_versions_date_and_dtype():
    env = environment("cpu", torch.bfloat16)
    for key in ("date_utc", "hardware", "cpu_model", "cpu_count", "torch", "triton", "cuda"):
        assert key in env
    assert env["device"] == "cpu" and env["dtype"] == "bfloat16"
    assert env["torch"] == torch.__version__
    assert env["hardware"] and env["hardware"] != "unknown"
    assert env["date_utc"].endswith("Z")
    json.dumps(env)  # must be serialisable as written into results.json


def test_machine_slug_is_file_name_safe():
    slug = machine_slug({"device": "cpu", "hardware": "AMD EPYC 7B13 (64-Core)", "cpu_count": 2})
    assert slug == "cpu-amd-epyc-7b13-64-core-2c"
    assert machine_slug({"device": "cuda", "hardware": "NVIDIA H200"}) == "cuda-nvidia-h200"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_gpu_name_is_the_one_the_design_table_is_looked_up_by():
    from fastlstm.kernels.launch import target_of

    env = environment("cuda", "tf32")
    assert env["gpu_name"] == torch.cuda.get_device_properties(0).name
    assert env["gpu_name"] == target_of(torch.device("cuda")).name  # measured_designs' key
    for key in ("torch", "triton", "date_utc", "git_commit"):
        assert env[key]
