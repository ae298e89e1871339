"""The peers script: its shared protocol (batches, scoring) and its workers."""

import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import peers_dsb  # noqa: E402


def test_batches_turn_and_flip_image_and_mask_alike():
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 8, 8, 1)) > 0.5).astype(np.float32)
    # The image's first channel is the mask: any transform must keep them equal.
    images = np.concatenate([masks, rng.random((6, 8, 8, 2))], -1).astype(np.float32)
    batches = peers_dsb.Batches(images, masks, batch=4, seed=1)
    changed = False
    for _ in range(5):
        x, y = next(batches)
        np.testing.assert_array_equal(x[..., :1], y)
        changed |= not any(np.array_equal(x[0, ..., :1], m) for m in masks)
    assert changed  # some batch was turned or flipped
    # The same seed gives the same batches for every model.
    a = peers_dsb.Batches(images, masks, 4, seed=2)
    b = peers_dsb.Batches(images, masks, 4, seed=2)
    for _ in range(3):
        np.testing.assert_array_equal(next(a)[0], next(b)[0])


class _Oracle:
    """Returns given probabilities: the scoring path without a network."""

    def __init__(self, probs):
        self.probs = probs

    def predict(self, x):
        assert x.shape[1:] == (16, 16, 3)
        return {"oracle": self.probs}


def test_score_resizes_back_to_native_size_and_uses_field_metrics():
    # Two images of other sizes whose masks are a block that survives the
    # bilinear 16x16 round trip exactly (scales 2 and 1, boundaries on the
    # grid); probabilities are the resized masks themselves.
    val, probs = [], []
    for h, w in ((32, 32), (32, 16)):
        mask = np.zeros((h, w), bool)
        mask[: h // 2, : w // 2] = True
        val.append((np.zeros((h, w, 3), np.float32), mask))
        probs.append(peers_dsb._resize_image(mask.astype(np.float32), 16))
    results = peers_dsb.score(_Oracle(np.stack(probs)), val, 16, ("components",))
    assert results["oracle"]["iou"] == pytest.approx(1.0)
    assert results["oracle"]["dsb_ap"] == pytest.approx(1.0)
    text = peers_dsb.format_rows(
        [{"model": "m", "level": "L4", "params": 10, "steps": 3, "epochs": 0.5,
          **results["oracle"]}, {"model": "x", "error": "not installed: x"}]
    )  # fmt: skip
    assert text.splitlines()[1].split()[:3] == ["m", "L4", "10"]
    assert "(not installed: x)" in text.splitlines()[2]


def test_a_crashed_worker_costs_its_row_only(tmp_path):
    rows_path = tmp_path / ".rows_m.json"
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    rows = peers_dsb.run_worker([sys.executable, "-c", crash], rows_path, "m")
    assert rows == [{"model": "m", "error": "worker failed: killed by signal 11"}]
    rows_path.write_text("[]")  # a stale file of an earlier run is not read
    rows = peers_dsb.run_worker([sys.executable, "-c", "exit(3)"], rows_path, "m")
    assert rows == [{"model": "m", "error": "worker failed: exit status 3"}]
    write = f"open({str(rows_path)!r}, 'w').write('[{{\"model\": \"m\"}}]')"
    rows = peers_dsb.run_worker([sys.executable, "-c", write], rows_path, "m")
    assert rows == [{"model": "m"}] and not rows_path.exists()


def test_peers_run_each_model_in_a_worker_and_write_as_they_go(tmp_path, capsys):
    import cli_helpers

    data = tmp_path / "data"
    cli_helpers.run(["synthetic", str(data), "--num-images", "12"]
                    + ["--image-size", "32", "32"])  # fmt: skip
    out = tmp_path / "peers"
    argv = ["--data", str(data), "--minutes", "0.01", "--size", "32",
            "--filters", "4", "--models", "keras_unetpp_unet",
            "--dsb-instances", "components", "--output", str(out)]  # fmt: skip
    assert peers_dsb.main(argv) == 0
    rows = json.loads((out / "peers.json").read_text())["rows"]
    assert [(r["model"], r["level"]) for r in rows] == [("keras_unetpp_unet", "L4")]
    assert rows[0]["steps"] >= 2 and 0.0 <= rows[0]["iou"] <= 1.0
    assert "worker" not in json.loads((out / "peers.json").read_text())["args"]
    csv_rows = (out / "peers.csv").read_text().splitlines()
    assert csv_rows[1].startswith("keras_unetpp_unet,L4,")
    assert not list(out.glob(".rows_*"))  # the worker's hand-over is read


def test_crop_batches_cut_native_windows_of_image_and_mask_alike():
    rng = np.random.default_rng(3)
    images, masks = [], []
    for h, w in ((12, 20), (16, 10)):
        mask = (rng.random((h, w, 1)) > 0.5).astype(np.float32)
        images.append(np.concatenate([mask, rng.random((h, w, 2))], -1))
        masks.append(mask)
    batches = peers_dsb.Batches(images, masks, batch=2, seed=0, crop=8)
    for _ in range(4):
        x, y = next(batches)
        assert x.shape == (2, 8, 8, 3) and y.shape == (2, 8, 8, 1)
        np.testing.assert_array_equal(x[..., :1], y)
        # Each window is a turned/flipped piece of one of the images.
        for window in x[..., 1]:
            found = False
            for image in images:
                h, w = image.shape[:2]
                for turns in range(4):
                    for flip in (False, True):
                        piece = (
                            np.rot90(window, -turns)
                            if not flip
                            else np.rot90(window[:, ::-1], -turns)
                        )
                        for top in range(h - 7):
                            for left in range(w - 7):
                                found |= np.array_equal(
                                    image[top : top + 8, left : left + 8, 1], piece
                                )
            assert found


def test_cosine_schedule_runs_from_the_rate_to_zero_over_the_budget():
    assert peers_dsb.cosine_lr(2e-3, 0.0) == pytest.approx(2e-3)
    assert peers_dsb.cosine_lr(2e-3, 0.5) == pytest.approx(1e-3)
    assert peers_dsb.cosine_lr(2e-3, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert peers_dsb.cosine_lr(2e-3, 1.5) == pytest.approx(0.0, abs=1e-12)


def test_peers_crop_protocol_scores_whole_images_at_their_size(tmp_path):
    import cli_helpers

    data = tmp_path / "data"
    cli_helpers.run(["synthetic", str(data), "--num-images", "12"]
                    + ["--image-size", "40", "48"])  # fmt: skip
    out = tmp_path / "peers"
    argv = ["--data", str(data), "--minutes", "0.01", "--size", "32",
            "--protocol", "crop", "--schedule", "cosine", "--lr", "2e-3",
            "--filters", "4", "--models", "keras_unetpp",
            "--dsb-instances", "none", "--output", str(out)]  # fmt: skip
    assert peers_dsb.main(argv) == 0
    saved = json.loads((out / "peers.json").read_text())
    assert saved["args"]["protocol"] == "crop"
    rows = saved["rows"]
    assert [r["level"] for r in rows] == ["L1", "L2", "L3", "L4", "accurate"]
    assert all(0.0 <= r["iou"] <= 1.0 and r["steps"] >= 2 for r in rows)
