"""The environment record written with every benchmark result."""

from __future__ import annotations

import json

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
