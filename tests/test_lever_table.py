"""scripts/lever_table.py: one row per evaluated run, from its own files."""

import csv
import json

import pytest
from module_files import load_module

from keras_unetpp import evaluation


def _lever_table():
    return load_module("scripts/lever_table.py")


def _run(
    folder,
    ious,
    mode="crop",
    loss=None,
    epochs=3,
    precision=None,
    scoring=None,
    **extra_data,
):
    folder.mkdir()
    data = {"image_size": [128, 128], "resize_mode": mode, "augment": True}
    data.update(extra_data)
    if scoring is not None:
        data["pixel_scaling"] = scoring["pixel_scaling"]
    config = {
        "data": data,
        "model": {"architecture": "unetpp", "filters": 16},
        "training": {"loss": loss, "precision": precision},
    }
    (folder / "run.json").write_text(json.dumps(config))
    with open(folder / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss"])
        writer.writerows([i, 1.0 / (i + 1)] for i in range(epochs))
    rows = [
        {"model": "unetpp", "level": level, "iou": iou, "dice": 2 * iou / (1 + iou)}
        for level, iou in ious.items()
    ]
    rows[-1].update(iou_tta=ious[rows[-1]["level"]] + 0.01, dsb_ap=0.5)
    evaluation.write_table(rows, folder / "evaluation")
    if scoring is not None:
        scored = {"threshold": scoring["threshold"], "split": "val"}
        (folder / "evaluation" / "scored.json").write_text(json.dumps(scored))
    return folder


def test_rows_hold_each_runs_settings_levels_and_best(tmp_path):
    lever_table = _lever_table()
    first = _run(tmp_path / "recipe", {"L1": 0.7, "L2": 0.8, "accurate": 0.79})
    second = _run(
        tmp_path / "focal",
        {"L1": 0.6, "L2": 0.75, "accurate": 0.76},
        mode="resize",
        loss={"name": "focal-tversky", "alpha": 0.7},
        epochs=5,
        precision="mixed_bfloat16",
        scoring={"pixel_scaling": "minmax", "threshold": 0.55},
    )
    out = tmp_path / "levers.md"
    assert lever_table.main([str(first), str(second), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split(" | ")[3:6] == ["L1", "L2", "accurate"]
    recipe, focal = lines[2], lines[3]
    settings = "unetpp, crop 128x128, f16, bce-dice, augment on"
    assert recipe.startswith(f"| recipe | {settings} | 3 |")
    assert "| L2 0.8000 |" in recipe and "| 0.7000 | 0.8000 | 0.7900 |" in recipe
    # TTA and DSB AP are those of the best level's row; this one has none.
    assert recipe.endswith("|  |  |")
    assert focal.startswith(
        "| focal | unetpp, resize 128x128, f16, focal-tversky (alpha 0.7), augment on, "
        "mixed_bfloat16, pixels minmax, threshold 0.55 | 5 |"
    )
    assert focal.endswith("| accurate 0.7600 | 0.7700 | 0.5000 |")


def test_the_zoom_setting_is_shown_when_it_is_not_the_default(tmp_path):
    lever_table = _lever_table()
    ious = {"L1": 0.7, "accurate": 0.75}
    runs = [
        _run(tmp_path / "default", ious, scale_range=[0.8, 1.25]),
        _run(tmp_path / "still", ious, scale_range=None),
        _run(tmp_path / "narrow", ious, scale_range=[0.9, 1.1]),
        _run(tmp_path / "plain", ious, augment=False, scale_range=None),
        _run(tmp_path / "soft", ious, mask_interpolation="bilinear"),
    ]
    out = tmp_path / "levers.md"
    assert lever_table.main([*map(str, runs), "--output", str(out)]) == 0
    settings = [line.split(" | ")[1] for line in out.read_text().splitlines()[2:]]
    base = "unetpp, crop 128x128, f16, bce-dice, augment"
    assert settings == [
        f"{base} on",
        f"{base} on (no zoom)",
        f"{base} on (zoom 0.9-1.1)",
        f"{base} off",
        f"{base} on, bilinear masks",
    ]


def test_a_run_without_evaluation_is_named(tmp_path):
    lever_table = _lever_table()
    folder = tmp_path / "plain"
    folder.mkdir()
    with pytest.raises(SystemExit, match="keras-unetpp evaluate .*plain"):
        lever_table.main([str(folder)])
