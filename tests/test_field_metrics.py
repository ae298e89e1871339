"""The field's metrics against hand-worked cases and independent NumPy loops."""

import numpy as np
import pytest
from module_files import load_module

from keras_unetpp import field_metrics as fm
from keras_unetpp.errors import InputError


def _square(shape, top, left, size, value=1):
    mask = np.zeros(shape, np.int32)
    mask[top : top + size, left : left + size] = value
    return mask


def _np_dsb(true_masks, pred_masks):
    """Reference DSB score from lists of object masks, by explicit loops."""
    if not true_masks and not pred_masks:
        return 1.0
    scores = []
    for k in range(10):
        t = 0.5 + 0.05 * k
        matched_true = set()
        for i, a in enumerate(true_masks):
            for b in pred_masks:
                iou = (a & b).sum() / (a | b).sum()
                if iou > t:
                    matched_true.add(i)
        tp = len(matched_true)
        fp = len(pred_masks) - tp
        fn = len(true_masks) - tp
        scores.append(tp / (tp + fp + fn))
    return float(np.mean(scores))


def _objects(labels):
    return [labels == k for k in np.unique(labels) if k > 0]


# --- connected components and watershed -----------------------------------


def test_touching_squares_are_one_component_and_diagonal_depends_on_connectivity():
    side_by_side = _square((12, 12), 2, 2, 4) | _square((12, 12), 2, 6, 4)
    labels, count = fm.label_instances(side_by_side)
    assert count == 1 and set(np.unique(labels)) == {0, 1}
    # Two squares touching only at a corner: one object with 8-connectivity,
    # two with 4-connectivity.
    corner = _square((12, 12), 0, 0, 4) | _square((12, 12), 4, 4, 4)
    assert fm.label_instances(corner, connectivity=8)[1] == 1
    labels, count = fm.label_instances(corner, connectivity=4)
    assert count == 2
    assert labels[0, 0] != labels[7, 7] and labels[0, 0] > 0 and labels[7, 7] > 0


def test_watershed_splits_two_overlapping_discs_along_the_bisector():
    # Two discs of radius 8, centres 14 pixels apart: one connected component;
    # the watershed of the distance transform splits it into two objects, and
    # each pixel goes to the nearer centre (up to the pixels on the bisector).
    yy, xx = np.mgrid[:32, :48]
    centres = [(16, 14), (16, 28)]
    distances = [np.hypot(yy - cy, xx - cx) for cy, cx in centres]
    mask = (distances[0] <= 8) | (distances[1] <= 8)
    assert fm.label_instances(mask)[1] == 1
    labels, count = fm.label_instances(mask, method="watershed")
    assert count == 2
    nearer = np.where(distances[0] < distances[1], 1, 2)
    off_line = mask & (np.abs(distances[0] - distances[1]) > 1.0)
    first = labels[16, 14]
    expected = np.where(nearer == 1, first, 3 - first)
    assert np.array_equal(labels[off_line], expected[off_line])
    assert np.all((labels > 0) == mask)


def test_watershed_keeps_small_and_separate_objects():
    mask = np.zeros((20, 20), bool)
    mask[1, 1] = True  # one-pixel object
    mask[10:16, 10:16] = True  # a square: one object (its maxima touch)
    labels, count = fm.label_instances(mask, method="watershed", min_distance=5)
    assert count == 2
    assert np.all((labels > 0) == mask)
    assert len(np.unique(labels[10:16, 10:16])) == 1


def test_empty_mask_has_no_objects():
    for method in fm.INSTANCE_METHODS:
        labels, count = fm.label_instances(np.zeros((8, 8)), method=method)
        assert count == 0 and not labels.any()


def test_labels_from_masks_numbers_objects_and_later_masks_win_overlaps():
    a = _square((8, 8), 0, 0, 4).astype(bool)
    b = _square((8, 8), 2, 2, 4).astype(bool)
    labels, count = fm.labels_from_masks([a, b])
    assert count == 2
    assert labels[0, 0] == 1 and labels[3, 3] == 2 and labels[5, 5] == 2
    assert (labels == 1).sum() == 16 - 4
    with pytest.raises(InputError, match="Object mask 1 is 4x4 but mask 0 is 8x8"):
        fm.labels_from_masks([a, np.ones((4, 4))])


# --- DSB average precision -------------------------------------------------


def test_dsb_hand_worked_cases():
    shape = (24, 24)
    truth = _square(shape, 2, 2, 10)  # 100 pixels
    # Prediction covers 88 of its pixels: IoU 0.88 matches at t = 0.5..0.85,
    # 8 of 10 thresholds, each TP/(TP+FP+FN) = 1: score 0.8.
    pred = truth.copy()
    pred[2:14, 2:3] = 0  # 10 pixels of column 2
    pred[2, 3:5] = 0  # 2 more
    assert (pred > 0).sum() == 88
    assert fm.dsb_average_precision(truth, pred) == pytest.approx(0.8)
    # Split in two: a 70-pixel and a 20-pixel part (IoU 0.7 and 0.2). The
    # large part matches at t = 0.5, 0.55, 0.6, 0.65: TP 1, FP 1, FN 0 -> 1/2;
    # above, TP 0, FP 2, FN 1 -> 0. Score 4 * 0.5 / 10 = 0.2.
    split = np.zeros(shape, np.int32)
    split[2:12, 2:9] = 1
    split[2:12, 10:12] = 2
    assert fm.dsb_average_precision(truth, split) == pytest.approx(0.2)
    # Two touching true squares merged by the prediction: IoU 16/32 = 0.5 is
    # not above 0.5, no match at any threshold: TP 0, FP 1, FN 2 -> 0.
    two = _square(shape, 0, 0, 4) + _square(shape, 0, 4, 4, value=2)
    merged = (two > 0).astype(np.int32)
    assert fm.dsb_average_precision(two, merged) == 0.0
    # Empty truth and empty prediction: 1; only one of them empty: 0.
    empty = np.zeros(shape, np.int32)
    assert fm.dsb_average_precision(empty, empty) == 1.0
    assert fm.dsb_average_precision(empty, truth) == 0.0
    assert fm.dsb_average_precision(truth, empty) == 0.0


def test_dsb_one_pixel_objects():
    truth = np.zeros((5, 5), np.int32)
    truth[1, 1], truth[3, 3] = 1, 2
    same = truth.copy()
    assert fm.dsb_average_precision(truth, same) == 1.0
    # One found, one predicted a pixel off: TP 1, FP 1, FN 1 -> 1/3.
    shifted = np.zeros_like(truth)
    shifted[1, 1], shifted[3, 4] = 1, 2
    assert fm.dsb_average_precision(truth, shifted) == pytest.approx(1 / 3)


def test_dsb_matches_reference_loops_on_deterministic_scenes():
    # Shifted and resized copies of a grid of squares: many partial overlaps.
    shape = (40, 40)
    truth = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    label = 0
    for row, top in enumerate((2, 14, 26)):
        for col, left in enumerate((2, 14, 26)):
            label += 1
            truth[top : top + 9, left : left + 9] = label
            if (row, col) != (1, 1):  # one true object missed
                size = 6 + (row + col) % 4
                pred[top + row : top + row + size, left + col : left + col + size] = (
                    label
                )
    pred[37:39, 37:39] = 99  # a false positive
    got = fm.dsb_average_precision(truth, pred)
    assert got == pytest.approx(_np_dsb(_objects(truth), _objects(pred)))
    assert 0.0 < got < 1.0


def test_instance_ious_by_hand():
    truth = _square((6, 6), 0, 0, 2) + _square((6, 6), 3, 3, 3, value=2)
    pred = _square((6, 6), 0, 0, 1) + _square((6, 6), 3, 3, 2, value=2)
    # Object 1: 4 pixels, prediction 1 pixel inside: IoU 1/4; object 2: 9 and 4.
    np.testing.assert_allclose(
        fm.instance_ious(truth, pred), [[0.25, 0.0], [0.0, 4 / 9]]
    )


# --- pixel metrics ---------------------------------------------------------


def test_global_and_per_image_iou_dice_by_hand():
    # Image 1: truth 4 px, prediction 2 of them + 2 others: I 2, U 6.
    # Image 2: empty truth, empty prediction. Image 3: truth 2 px, no prediction.
    t1 = np.array([[1, 1, 1, 1, 0, 0]])
    p1 = np.array([[1, 1, 0, 0, 1, 1]])
    t2 = np.zeros((1, 6))
    p2 = np.zeros((1, 6))
    t3 = np.array([[1, 1, 0, 0, 0, 0]])
    p3 = np.zeros((1, 6))
    truths, preds = [t1, t2, t3], [p1, p2, p3]
    iou, dice = fm.global_iou_dice(truths, preds)
    # Pooled: I 2, |T| 6, |P| 4: IoU 2 / 8, Dice 4 / 10.
    assert iou == pytest.approx(0.25) and dice == pytest.approx(0.4)
    # Per image: IoU (1/3, 1, 0), Dice (1/2, 1, 0).
    iou, dice = fm.per_image_iou_dice(truths, preds)
    assert iou == pytest.approx((1 / 3 + 1) / 3)
    assert dice == pytest.approx(0.5)


def test_keras_mean_iou_by_hand():
    # truth [1, 1, 0, 0], probabilities [0.92, 0.62, 0.41, 0.73]:
    # t = 0.5, 0.55, 0.6: prediction [1,1,0,1]: fg 2/3, bg 1/2 -> 7/12;
    # t = 0.65, 0.7: [1,0,0,1]: fg 1/3, bg 1/3 -> 1/3;
    # t = 0.75 .. 0.9: [1,0,0,0]: fg 1/2, bg 2/3 -> 7/12;
    # t = 0.95: nothing: fg 0, bg 2/4 -> 1/4.
    # Mean: (3 * 7/12 + 2/3 + 4 * 7/12 + 1/4) / 10 = 0.5.
    truth = np.array([[1, 1, 0, 0]])
    prob = np.array([[0.92, 0.62, 0.41, 0.73]])
    assert fm.keras_mean_iou([truth], [prob]) == pytest.approx(0.5)
    # Pooling: the same pixels as two images give the same value.
    assert fm.keras_mean_iou(
        [truth[:, :2], truth[:, 2:]], [prob[:, :2], prob[:, 2:]]
    ) == pytest.approx(0.5)
    # All background predicted background: the foreground class is absent
    # everywhere, so only the background IoU (1) counts.
    assert fm.keras_mean_iou([np.zeros((2, 2))], [np.zeros((2, 2))]) == 1.0


def test_field_scores_accumulates_the_same_values():
    rng = np.random.default_rng(0)
    truths, probs, labels = [], [], []
    for k in range(3):
        truth = np.zeros((16, 20), np.int32)
        truth[2:7, 2:8] = 1
        truth[9 : 12 + k, 10:15] = 2
        truths.append(truth > 0)
        labels.append(truth)
        probs.append(np.clip(truth + rng.normal(0, 0.35, truth.shape), 0, 1))
    scores = fm.FieldScores(instance_methods=("components",))
    for truth, prob, label in zip(truths, probs, labels):
        scores.update(truth, prob[..., None], true_labels=label)
    result = scores.result()
    predictions = [p >= 0.5 for p in probs]
    iou, dice = fm.global_iou_dice(truths, predictions)
    iou_img, dice_img = fm.per_image_iou_dice(truths, predictions)
    assert result["iou"] == pytest.approx(iou)
    assert result["dice"] == pytest.approx(dice)
    assert result["iou_per_image"] == pytest.approx(iou_img)
    assert result["dice_per_image"] == pytest.approx(dice_img)
    assert result["mean_iou_keras"] == pytest.approx(fm.keras_mean_iou(truths, probs))
    expected_ap = np.mean(
        [
            _np_dsb(_objects(label), _objects(fm.label_instances(p)[0]))
            for label, p in zip(labels, predictions)
        ]
    )
    assert result["dsb_ap"] == pytest.approx(expected_ap)
    assert "dsb_ap_watershed" not in result


def test_field_scores_truth_instances_default_to_components():
    # A merged truth of two touching squares is one true object; given as
    # two instances, a merged prediction scores 0 against it.
    two = _square((10, 10), 0, 0, 4) + _square((10, 10), 0, 4, 4, value=2)
    merged = (two > 0).astype(float)
    scores = fm.FieldScores(instance_methods=("components",))
    scores.update(two > 0, merged)
    assert scores.result()["dsb_ap"] == 1.0
    scores.reset()
    scores.update(two > 0, merged, true_labels=two)
    assert scores.result()["dsb_ap"] == 0.0


def test_bad_arguments():
    with pytest.raises(InputError, match="method"):
        fm.label_instances(np.zeros((4, 4)), method="snakes")
    with pytest.raises(InputError, match="connectivity"):
        fm.label_instances(np.zeros((4, 4)), connectivity=6)
    with pytest.raises(InputError, match=r"Received: mask.shape=\(2, 4, 4\)"):
        fm.label_instances(np.zeros((2, 4, 4)))
    with pytest.raises(InputError, match="thresholds must be >= 0.5"):
        fm.dsb_average_precision(np.zeros((2, 2), int), np.zeros((2, 2), int), [0.3])
    with pytest.raises(InputError, match=r"prediction is \(4, 4\) but the mask"):
        fm.FieldScores().update(np.zeros((3, 3)), np.zeros((4, 4)))


def test_error_split_on_hand_made_masks():
    truth = np.zeros((12, 12), bool)
    truth[1:4, 1:4] = True  # found, drawn one column too wide: 3 FP edge pixels
    truth[8:10, 8:10] = True  # missed entirely: 4 FN object pixels
    truth[1:4, 7:10] = True  # found, drawn one row too small: 3 FN edge pixels
    pred = np.zeros((12, 12), bool)
    pred[1:4, 1:5] = True
    pred[2:4, 7:10] = True
    pred[10:12, 0:2] = True  # a false object: 4 FP object pixels
    split = fm.error_split(truth, pred)
    assert split == {"fp_objects": 4, "fp_edges": 3, "fn_objects": 4, "fn_edges": 3}
    assert sum(split.values()) == np.count_nonzero(truth ^ pred)
    # A diagonal neighbour touches under 8-connectivity, not under 4.
    truth = np.zeros((4, 4), bool)
    truth[0, 0] = True
    pred = np.zeros((4, 4), bool)
    pred[0, 0] = pred[1, 1] = True
    assert fm.error_split(truth, pred)["fp_edges"] == 1
    assert fm.error_split(truth, pred, connectivity=4)["fp_objects"] == 1
    empty = np.zeros((3, 3), bool)
    assert set(fm.error_split(empty, empty).values()) == {0}
    with pytest.raises(InputError, match="same shape"):
        fm.error_split(empty, np.zeros((3, 4), bool))


def test_outline_sensitivity_of_hand_counted_squares():
    square = _square((9, 9), 2, 2, 5)
    band = fm.outline_sensitivity([square])
    # 5x5: eroded to 3x3; dilated by a 4-connected step adds a row of 5 on
    # each side (45 pixels); shifted one column keeps 4 of 5 columns.
    assert band["eroded"] == pytest.approx(9 / 25)
    assert band["dilated"] == pytest.approx(25 / 45)
    assert band["shifted"] == pytest.approx(20 / 30)
    assert band["edge_fraction"] == pytest.approx(16 / 25)
    # Pooled with a one-pixel object and an empty mask: the dot vanishes
    # when eroded (its pixel joins the union), dilates to a plus of 5.
    dot = _square((4, 4), 1, 1, 1)
    pooled = fm.outline_sensitivity([square, dot, np.zeros((3, 3))])
    assert pooled["eroded"] == pytest.approx(9 / 26)
    assert pooled["dilated"] == pytest.approx((25 + 1) / (45 + 5))
    assert pooled["shifted"] == pytest.approx(20 / (30 + 2))
    assert pooled["edge_fraction"] == pytest.approx(17 / 26)
    # Two pixels: a 7x7 square eroded twice is 3x3; the image border is
    # foreground beyond it, so a full mask keeps every pixel when eroded.
    assert fm.outline_sensitivity([_square((11, 11), 2, 2, 7)], 2)[
        "eroded"
    ] == pytest.approx(9 / 49)
    full = fm.outline_sensitivity([np.ones((6, 6))])
    assert full["eroded"] == 1.0 and full["edge_fraction"] == 0.0
    assert full["shifted"] == pytest.approx(30 / 36)
    assert fm.outline_sensitivity([np.ones((3, 3))], 5)["shifted"] == 0.0


def test_outline_sensitivity_against_a_numpy_loop_on_random_blobs():
    rng = np.random.default_rng(4)
    masks = [rng.random((20, 24)) < 0.35 for _ in range(3)]
    band = fm.outline_sensitivity(masks)

    def neighbours(mask, pad):
        padded = np.pad(mask, 1, constant_values=pad)
        return [
            padded[1:-1, 1:-1],
            padded[:-2, 1:-1],
            padded[2:, 1:-1],
            padded[1:-1, :-2],
            padded[1:-1, 2:],
        ]

    sums = {"eroded": [0, 0], "dilated": [0, 0], "shifted": [0, 0]}
    for mask in masks:
        eroded = np.logical_and.reduce(neighbours(mask, True))
        dilated = np.logical_or.reduce(neighbours(mask, False))
        shifted = np.zeros_like(mask)
        shifted[:, 1:] = mask[:, :-1]
        for name, other in (
            ("eroded", eroded),
            ("dilated", dilated),
            ("shifted", shifted),
        ):
            sums[name][0] += (mask & other).sum()
            sums[name][1] += (mask | other).sum()
    for name, (inter, union) in sums.items():
        assert band[name] == pytest.approx(inter / union), name


def test_outline_sensitivity_refuses_bad_width_and_masks():
    with pytest.raises(InputError, match="width"):
        fm.outline_sensitivity([np.ones((4, 4))], 0)
    with pytest.raises(InputError, match=r"truth.shape=\(2, 4, 4\)"):
        fm.outline_sensitivity([np.ones((2, 4, 4))])


def test_outline_sensitivity_script_reads_one_split(tmp_path, capsys):
    import csv

    from PIL import Image

    module = load_module("scripts/outline_sensitivity.py")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = []
    for k, (split, size) in enumerate([("val", 5), ("train", 3), ("val", 1)]):
        stem = f"s{k}"
        mask = _square((10, 12), 2, 3, size, 255).astype(np.uint8)
        Image.fromarray(mask).save(tmp_path / "masks" / f"{stem}.png")
        Image.fromarray(np.full((10, 12), 40, np.uint8)).save(
            tmp_path / "images" / f"{stem}.png"
        )
        rows.append({"stem": stem, "suggested_split": split})
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["stem", "suggested_split"])
        writer.writeheader()
        writer.writerows(rows)
    masks = module.split_masks(str(tmp_path), "val")
    assert [m.sum() for m in masks] == [25, 1]
    assert module.main(["--data", str(tmp_path), "--width", "1"]) == 0
    out = capsys.readouterr().out
    assert "split val: 2 masks" in out
    # The 5x5 square and the dot, pooled as in the hand-counted case.
    assert f"| 1 | {9 / 26:.4f} | {26 / 50:.4f} | {20 / 32:.4f} |" in out
