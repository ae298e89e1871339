"""Smoke test of benchmarks/pipeline_benchmark.py on a few small images."""

import json

import pytest
from module_files import load_module


def _load():
    return load_module("benchmarks/pipeline_benchmark.py")


@pytest.mark.slow
def test_benchmark_writes_consistent_results(shared_data, tmp_path):
    benchmark = _load()
    benchmark.main(
        [
            "--data",
            str(shared_data / "dsb2018_nuclei"),
            "--out",
            str(tmp_path),
            "--image-size",
            "64",
            "--batch-size",
            "2",
            "--limit",
            "6",
            "--repeats",
            "1",
            "--cached-epochs",
            "2",
            "--train-steps",
            "1",
            "--warmup",
            "1",
            "--depth",
            "1",  # Depth 4 takes ~20 s to trace; the code path is the same.
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["images"] == 6 and results["image_size"] == [64, 64]
    assert results["depth"] == 1
    assert len(results["cold_runs"]) == 1 and len(results["cached_runs"]) == 2
    cached = results["cached_runs"]
    assert min(cached) <= results["cached_images_per_s"] <= max(cached)
    ratio = results["cold_images_per_s"] / results["training_images_per_s"]
    assert results["cold_over_training"] == pytest.approx(ratio)
    assert (tmp_path / "pipeline_benchmark.png").stat().st_size > 1000
