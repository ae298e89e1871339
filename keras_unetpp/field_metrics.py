"""Segmentation scores as the field reports them, on predicted masks (NumPy).

Papers and competitions on nucleus segmentation report different numbers
under the name "IoU"; this module computes each of them from the same
predictions, so that they can be told apart:

- `global_iou_dice`: foreground IoU and Dice over all pixels of all images
  pooled (the UNet++ authors' `compute_iou`; the `iou` column of
  `keras-unetpp evaluate`).
- `per_image_iou_dice`: the mean over images of each image's foreground
  IoU and Dice. An image whose mask and prediction are both empty scores 1.
- `keras_mean_iou`: the UNet++ authors' Keras training metric `mean_iou`:
  the two-class (background and foreground) mean IoU of the pixels pooled,
  averaged over the thresholds 0.5, 0.55, ..., 0.95. The background class
  makes it much higher than the foreground IoU; it is reported here only to
  compare with figures computed that way.
- `dsb_average_precision`: the 2018 Data Science Bowl metric. Instances are
  separated from the semantic prediction (`label_instances`: connected
  components, or a distance-transform watershed that splits touching
  nuclei), matched to the true instances by IoU, and at each IoU threshold
  t in 0.5, 0.55, ..., 0.95 an image scores TP / (TP + FP + FN) (a
  predicted and a true object match when their IoU is above t); the image's
  score is the mean over thresholds and the data set's the mean over
  images. An image with no true and no predicted object scores 1.

`error_split` says where an image's wrong pixels lie: in whole objects
that are false or missed (detection), or at the edges of objects that were
found (delineation).

`outline_sensitivity` scores the true masks against themselves with every
outline moved by a pixel: what the pooled IoU of a data set is worth at its
boundaries, before any model is trained.

`FieldScores` accumulates all of them image by image, as
`evaluation.evaluate_levels_native` does for every level.

The image-processing steps use `scipy.ndimage` (connected components,
Euclidean distance transform, grey dilation; the watershed is a level-by-level
flood written here).
"""

import numpy as np
from scipy import ndimage

from keras_unetpp.errors import InputError
from keras_unetpp.validation import check_choice, check_int, check_number

# IoU thresholds of the DSB 2018 metric and of the authors' `mean_iou`.
THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))
INSTANCE_METHODS = ("components", "watershed")
CONNECTIVITIES = (4, 8)


def _structure(connectivity):
    check_choice(connectivity, "connectivity", CONNECTIVITIES)
    return ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)


def _binary(mask, name):
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(
            f"`{name}` must be one 2D mask (height, width) or (height, width, 1). "
            f"Received: {name}.shape={mask.shape}"
        )
    return mask > 0


def _labels(labels, name):
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"`{name}` must be a 2D integer label image (0 = background, "
            f"1..n = objects). Received: {name}.shape={labels.shape}, "
            f"dtype={labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise InputError(f"`{name}` has negative labels. Received: {labels.min()}")
    return labels


def label_instances(mask, method="components", connectivity=8, min_distance=3):
    """Splits a binary mask into numbered objects.

    `"components"`: the connected components of the mask. `"watershed"`:
    each connected component is split further by a watershed of the
    Euclidean distance to the background, seeded at the local maxima of
    that distance (pixels that are the largest within `min_distance`
    pixels, merged when they touch), so that two round nuclei that touch
    become two objects; a component without such a seed keeps one label.

    Args:
        mask: binary array `(height, width)` (or `(height, width, 1)`);
            nonzero is foreground.
        method: `"components"` or `"watershed"`. Defaults to `"components"`.
        connectivity: 4 or 8, the neighbourhood of a connected component.
            Defaults to `8`.
        min_distance: int >= 1, half the window of the local-maximum test
            of the watershed seeds (larger: fewer splits). Defaults to `3`.

    Returns:
        `(labels, count)`: int32 array `(height, width)`, 0 on the
        background and 1..count on the objects, and the number of objects.

    Example:

    ```python
    labels, count = label_instances(prediction > 0.5, method="watershed")
    ```
    """
    check_choice(method, "method", INSTANCE_METHODS)
    structure = _structure(connectivity)
    min_distance = check_int(min_distance, "min_distance", low=1)
    mask = _binary(mask, "mask")
    components, count = ndimage.label(mask, structure=structure)
    if method == "components" or count == 0:
        return components.astype(np.int32), int(count)
    distance = ndimage.distance_transform_edt(mask)
    window = 2 * min_distance + 1
    peaks = mask & (distance == ndimage.maximum_filter(distance, size=window))
    seeds, _ = ndimage.label(peaks, structure=np.ones((3, 3), bool))
    labels = np.zeros(mask.shape, np.int32)
    next_label = 1
    # Each component apart, in its bounding box: one with fewer than two
    # seeds (a component whose distance maximum lies in another's window
    # has none) stays one object; the others are flooded from their seeds.
    for component, box in enumerate(ndimage.find_objects(components), start=1):
        inside = components[box] == component
        own = np.where(inside, seeds[box], 0)
        present = np.unique(own[own > 0])
        if len(present) < 2:
            labels[box][inside] = next_label
            next_label += 1
            continue
        flooded = _flood(own, distance[box], inside, structure)
        lookup = np.zeros(int(present.max()) + 1, np.int32)
        lookup[present] = np.arange(next_label, next_label + len(present))
        labels[box][inside] = lookup[flooded[inside]]
        next_label += len(present)
    return labels, next_label - 1


def _flood(seeds, distance, mask, structure, step=0.5):
    """Grows the seeds over the mask from the largest distances down.

    A watershed of the negated distance by flooding level by level: at
    each level (every `step` pixels of distance, from the largest down to
    1) the labelled regions grow, one neighbour ring at a time, into the
    unlabelled pixels at least that far from the background. A pixel that
    two regions reach at the same time is a watershed line: it takes the
    larger label but grows no further, so neither region spills past it.
    """
    labels = seeds.astype(np.int32)
    line = np.zeros(mask.shape, bool)
    big = np.iinfo(np.int32).max
    top = np.floor(distance.max() / step) * step
    for level in np.arange(top, 1.0 - step / 2, -step):
        allowed = mask & (distance >= level)
        while True:
            sources = np.where(line, 0, labels)
            largest = ndimage.grey_dilation(sources, footprint=structure)
            smallest = ndimage.grey_erosion(
                np.where(sources > 0, sources, big), footprint=structure
            )
            new = allowed & (labels == 0) & (largest > 0)
            if not new.any():
                break
            labels[new] = largest[new]
            line |= new & (smallest != largest)
    # Pixels reachable only across a line (a one-pixel neck) join it.
    while True:
        grown = ndimage.grey_dilation(labels, footprint=structure)
        new = mask & (labels == 0) & (grown > 0)
        if not new.any():
            return labels
        labels[new] = grown[new]


def labels_from_masks(masks):
    """One label image from per-object binary masks (object k gets label k).

    This is how the DSB 2018 truth comes: one PNG per nucleus. Where two
    masks overlap, the later one keeps the pixel.

    Args:
        masks: sequence of binary arrays `(height, width)` of the same size.

    Returns:
        `(labels, count)` as `label_instances` returns them.
    """
    masks = [_binary(m, "masks[k]") for m in masks]
    if not masks:
        raise InputError("`masks` is empty: give at least one object mask.")
    shape = masks[0].shape
    labels = np.zeros(shape, np.int32)
    for k, m in enumerate(masks, start=1):
        if m.shape != shape:
            raise InputError(
                f"Object mask {k - 1} is {m.shape[1]}x{m.shape[0]} but mask 0 is "
                f"{shape[1]}x{shape[0]} (width x height)."
            )
        labels[m] = k
    # Objects entirely covered by later ones are dropped, as they are not seen.
    present = np.unique(labels[labels > 0])
    lookup = np.zeros(len(masks) + 1, np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[labels], int(len(present))


def instance_ious(true_labels, pred_labels):
    """IoU of every true object with every predicted object.

    Args:
        true_labels: int array `(height, width)`, 0 = background.
        pred_labels: int array of the same shape.

    Returns:
        float64 array `(true objects, predicted objects)` (labels 1..n in
        order; labels absent from an image give rows or columns of 0).
    """
    true_labels = _labels(true_labels, "true_labels")
    pred_labels = _labels(pred_labels, "pred_labels")
    if true_labels.shape != pred_labels.shape:
        raise InputError(
            f"The label images differ in shape: {true_labels.shape} and "
            f"{pred_labels.shape}."
        )
    n_true = int(true_labels.max(initial=0))
    n_pred = int(pred_labels.max(initial=0))
    joint = np.bincount(
        true_labels.ravel().astype(np.int64) * (n_pred + 1) + pred_labels.ravel(),
        minlength=(n_true + 1) * (n_pred + 1),
    ).reshape(n_true + 1, n_pred + 1)
    intersection = joint[1:, 1:].astype(np.float64)
    true_area = joint[1:, :].sum(axis=1)[:, None]
    pred_area = joint[:, 1:].sum(axis=0)[None, :]
    union = true_area + pred_area - intersection
    return np.divide(
        intersection, union, out=np.zeros_like(intersection), where=union > 0
    )


def dsb_average_precision(true_labels, pred_labels, thresholds=THRESHOLDS):
    """The 2018 Data Science Bowl score of one image.

    At each threshold t, a true and a predicted object match when their IoU
    is above t (above 0.5 no object can match two); TP counts the matched
    true objects, FP the unmatched predicted ones, FN the unmatched true
    ones, and the image scores TP / (TP + FP + FN) at t. With no true and no
    predicted object it scores 1.

    Args:
        true_labels: int array `(height, width)`, 0 = background, one label
            per true object.
        pred_labels: int array of the same shape, one label per predicted
            object.
        thresholds: IoU thresholds, each >= 0.5. Defaults to 0.5, 0.55,
            ..., 0.95.

    Returns:
        float, the mean over thresholds of TP / (TP + FP + FN).
    """
    thresholds = np.asarray(thresholds, np.float64)
    if thresholds.size == 0 or thresholds.min() < 0.5:
        raise InputError(
            "DSB thresholds must be >= 0.5 (so that matches are one to one). "
            f"Received: thresholds={thresholds.tolist()}"
        )
    ious = instance_ious(true_labels, pred_labels)
    n_true = int((np.bincount(np.asarray(true_labels).ravel())[1:] > 0).sum())
    n_pred = int((np.bincount(np.asarray(pred_labels).ravel())[1:] > 0).sum())
    if n_true == 0 and n_pred == 0:
        return 1.0
    scores = []
    for t in thresholds:
        tp = int((ious > t).any(axis=1).sum())
        scores.append(tp / (n_true + n_pred - tp))
    return float(np.mean(scores))


ERROR_SPLIT_KEYS = ("fp_objects", "fp_edges", "fn_objects", "fn_edges")


def error_split(truth, prediction, connectivity=8):
    """Splits one image's wrong pixels into detection and delineation errors.

    A false-positive pixel lies in a predicted object (connected component)
    that touches no true foreground (`fp_objects`: a false object) or in
    one that does (`fp_edges`: the object drawn too large). A
    false-negative pixel lies in a true object that no predicted pixel
    touches (`fn_objects`: a missed object) or in one that was found
    (`fn_edges`: drawn too small). The four counts add up to the pixels of
    the union that are not in the intersection.

    Args:
        truth: binary mask `(height, width)` (or `(height, width, 1)`).
        prediction: binary mask of the same shape.
        connectivity: 4 or 8, of the objects. Defaults to `8`.

    Returns:
        dict with the int counts of `ERROR_SPLIT_KEYS`.

    Example:

    ```python
    split = error_split(mask > 0, probabilities >= 0.5)
    edges = split["fp_edges"] + split["fn_edges"]
    ```
    """
    truth = _binary(truth, "truth")
    prediction = _binary(prediction, "prediction")
    if truth.shape != prediction.shape:
        raise InputError(
            "`truth` and `prediction` must have the same shape. Received: "
            f"{truth.shape} and {prediction.shape}"
        )
    structure = _structure(connectivity)
    counts = {}
    for kind, ours, theirs in (("fp", prediction, truth), ("fn", truth, prediction)):
        labels, count = ndimage.label(ours, structure)
        touched = np.zeros(count + 1, bool)
        touched[np.unique(labels[theirs])] = True
        touched[0] = False
        wrong = ours & ~theirs
        edges = int(np.count_nonzero(wrong & touched[labels]))
        counts[f"{kind}_objects"] = int(np.count_nonzero(wrong)) - edges
        counts[f"{kind}_edges"] = edges
    return {key: counts[key] for key in ERROR_SPLIT_KEYS}


OUTLINE_MOVES = ("eroded", "dilated", "shifted")


def _shifted(mask, width):
    moved = np.zeros_like(mask)
    if width < mask.shape[1]:
        moved[:, width:] = mask[:, : mask.shape[1] - width]
    return moved


def outline_sensitivity(truths, width=1):
    """Pooled IoU of the true masks against themselves, outlines moved.

    Each mask is compared with itself eroded by `width` pixels, dilated by
    `width` pixels (4-connected steps, so a pixel moves at most `width`
    along a row or column) and shifted `width` pixels sideways (columns
    move right; the left edge fills with background), and the foreground
    IoU of each is pooled over all masks as in `global_iou_dice`. A
    prediction that draws every object a pixel too small scores the
    `"eroded"` figure, one a pixel too large the `"dilated"` one: on data
    with small objects these are far below 1, and a model's pooled IoU
    is best read against them.

    Args:
        truths: sequence of binary masks (any sizes, one per image).
        width: int >= 1, the pixels each outline moves. Defaults to `1`.

    Returns:
        dict from each of `OUTLINE_MOVES` to the pooled IoU (float), and
        `"edge_fraction"`: the share of the foreground pixels that lie on
        an object's outline (4-connected; a mask's own border counts as
        foreground beyond it).

    Example:

    ```python
    band = outline_sensitivity(masks)
    print(f"a model one pixel inside every outline scores {band['eroded']:.3f}")
    ```
    """
    width = check_int(width, "width", 1)
    cross = _structure(4)
    sums = {move: [0, 0] for move in (*OUTLINE_MOVES, "edge_fraction")}
    for truth in truths:
        truth = _binary(truth, "truth")
        moved = {
            "eroded": ndimage.binary_erosion(
                truth, cross, iterations=width, border_value=1
            ),
            "dilated": ndimage.binary_dilation(truth, cross, iterations=width),
            "shifted": _shifted(truth, width),
        }
        for move, other in moved.items():
            inter, true_area, other_area = _counts(truth, other)
            sums[move][0] += inter
            sums[move][1] += true_area + other_area - inter
        inner = ndimage.binary_erosion(truth, cross, border_value=1)
        sums["edge_fraction"][0] += int(np.count_nonzero(truth & ~inner))
        sums["edge_fraction"][1] += int(np.count_nonzero(truth))
    return {key: _ratio(*pair) for key, pair in sums.items()}


def _counts(truth, prediction):
    inter = int(np.count_nonzero(truth & prediction))
    return inter, int(np.count_nonzero(truth)), int(np.count_nonzero(prediction))


def _ratio(numerator, denominator):
    return 1.0 if denominator == 0 else numerator / denominator


def global_iou_dice(truths, predictions):
    """Foreground IoU and Dice over all pixels of all images pooled.

    The UNet++ authors' `compute_iou`: |T and P| / |T or P| with the sums
    taken over the whole data set (Dice 2|T and P| / (|T| + |P|)). Empty
    truth and prediction everywhere score 1.

    Args:
        truths: sequence of binary masks (any sizes, one per image).
        predictions: sequence of binary predicted masks, the same sizes.

    Returns:
        `(iou, dice)`, floats.
    """
    inter = true_area = pred_area = 0
    for truth, prediction in zip(truths, predictions, strict=True):
        i, t, p = _counts(_binary(truth, "truth"), _binary(prediction, "prediction"))
        inter, true_area, pred_area = inter + i, true_area + t, pred_area + p
    return (
        _ratio(inter, true_area + pred_area - inter),
        _ratio(2 * inter, true_area + pred_area),
    )


def per_image_iou_dice(truths, predictions):
    """The mean over images of each image's foreground IoU and Dice.

    An image whose truth and prediction are both empty scores 1 (IoU and
    Dice); one with only one of them empty scores 0.

    Args:
        truths: sequence of binary masks.
        predictions: sequence of binary predicted masks, the same sizes.

    Returns:
        `(mean_iou, mean_dice)`, floats.
    """
    ious, dices = [], []
    for truth, prediction in zip(truths, predictions, strict=True):
        i, t, p = _counts(_binary(truth, "truth"), _binary(prediction, "prediction"))
        ious.append(_ratio(i, t + p - i))
        dices.append(_ratio(2 * i, t + p))
    if not ious:
        raise InputError("There are no images to score. Received: 0 images")
    return float(np.mean(ious)), float(np.mean(dices))


def _two_class_counts(truth, probabilities, thresholds):
    """(thresholds, 2, 3) counts: per class [intersection, true, predicted]."""
    truth = truth.ravel()
    probabilities = probabilities.ravel()
    counts = np.zeros((len(thresholds), 2, 3), np.int64)
    for k, t in enumerate(thresholds):
        predicted = probabilities > t
        for c, (true_c, pred_c) in enumerate(
            ((~truth, ~predicted), (truth, predicted))
        ):
            counts[k, c] = _counts(true_c, pred_c)
    return counts


def _mean_iou_of_counts(counts):
    inter, true_area, pred_area = counts[..., 0], counts[..., 1], counts[..., 2]
    union = true_area + pred_area - inter
    iou = np.divide(inter, union, out=np.zeros(union.shape), where=union > 0)
    present = union > 0
    # A class absent from truth and prediction is left out of the mean.
    per_threshold = np.divide(
        (iou * present).sum(-1),
        present.sum(-1),
        out=np.ones(len(counts)),
        where=present.sum(-1) > 0,
    )
    return float(per_threshold.mean())


def keras_mean_iou(truths, probabilities, thresholds=THRESHOLDS):
    """The UNet++ authors' Keras `mean_iou` (not the foreground IoU).

    At each threshold t the prediction is `probability > t`; the IoU of the
    background and that of the foreground are computed over all pixels of
    all images pooled, and averaged (a class absent from both truth and
    prediction is left out); the result is the mean over thresholds. The
    background class, most of the pixels, pushes it far above the
    foreground IoU.

    Args:
        truths: sequence of binary masks.
        probabilities: sequence of foreground probabilities, the same sizes.
        thresholds: Defaults to 0.5, 0.55, ..., 0.95.

    Returns:
        float.
    """
    counts = np.zeros((len(thresholds), 2, 3), np.int64)
    for truth, prob in zip(truths, probabilities, strict=True):
        prob = np.asarray(prob, np.float64)
        if prob.ndim == 3 and prob.shape[-1] == 1:
            prob = prob[..., 0]
        counts += _two_class_counts(_binary(truth, "truth"), prob, thresholds)
    return _mean_iou_of_counts(counts)


class FieldScores:
    """All of this module's scores, accumulated one image at a time.

    Args:
        threshold: float, probability at or above which a pixel is
            foreground (the package's rule, as `IoUScore` and `predict`
            threshold). Defaults to `0.5`.
        instance_methods: which instance separations to score with the DSB
            metric, from `"components"` and `"watershed"`. Defaults to
            both.
        connectivity: 4 or 8, of the connected components (of the
            prediction, and of a truth given without instances). Defaults
            to `8`.
        min_distance: int, of the watershed seeds. Defaults to `3`.

    Example:

    ```python
    scores = FieldScores()
    for mask, probabilities in zip(masks, outputs):
        scores.update(mask, probabilities)
    scores.result()["dsb_ap"]
    ```
    """

    def __init__(
        self,
        threshold=0.5,
        instance_methods=INSTANCE_METHODS,
        connectivity=8,
        min_distance=3,
    ):
        self.threshold = check_number(threshold, "threshold")
        for method in instance_methods:
            check_choice(method, "instance_methods", INSTANCE_METHODS)
        self.instance_methods = tuple(instance_methods)
        _structure(connectivity)
        self.connectivity = connectivity
        self.min_distance = check_int(min_distance, "min_distance", low=1)
        self.reset()

    def reset(self):
        """Forgets every image seen."""
        self._pooled = np.zeros(3, np.int64)
        self._two_class = np.zeros((len(THRESHOLDS), 2, 3), np.int64)
        self._per_image = []
        self._ap = {method: [] for method in self.instance_methods}

    def update(self, truth, probabilities, true_labels=None):
        """Adds one image.

        Args:
            truth: binary mask `(height, width)` or `(height, width, 1)`.
            probabilities: foreground probabilities of the same size.
            true_labels: int label image of the true objects (e.g.
                `labels_from_masks` of the DSB per-nucleus masks), or
                `None` for the connected components of `truth`. Defaults
                to `None`.
        """
        truth = _binary(truth, "truth")
        probabilities = np.asarray(probabilities, np.float64)
        if probabilities.ndim == 3 and probabilities.shape[-1] == 1:
            probabilities = probabilities[..., 0]
        if probabilities.shape != truth.shape:
            raise InputError(
                f"The prediction is {probabilities.shape} but the mask is "
                f"{truth.shape}."
            )
        prediction = probabilities >= self.threshold
        i, t, p = _counts(truth, prediction)
        self._pooled += (i, t, p)
        self._per_image.append((_ratio(i, t + p - i), _ratio(2 * i, t + p)))
        self._two_class += _two_class_counts(truth, probabilities, THRESHOLDS)
        if not self.instance_methods:
            return
        if true_labels is None:
            true_labels, _ = label_instances(truth, connectivity=self.connectivity)
        else:
            true_labels = _labels(true_labels, "true_labels")
        for method in self.instance_methods:
            predicted, _ = label_instances(
                prediction, method, self.connectivity, self.min_distance
            )
            self._ap[method].append(dsb_average_precision(true_labels, predicted))

    def result(self):
        """The scores of the images seen.

        Returns:
            dict: `iou` and `dice` (pooled), `iou_per_image`,
            `dice_per_image`, `mean_iou_keras`, and `dsb_ap` (connected
            components) and/or `dsb_ap_watershed`, floats (NaN before any
            image).
        """
        if not self._per_image:
            nan = float("nan")
            keys = ["iou", "dice", "iou_per_image", "dice_per_image", "mean_iou_keras"]
            return {k: nan for k in keys + [_ap_key(m) for m in self.instance_methods]}
        inter, true_area, pred_area = (int(v) for v in self._pooled)
        per_image = np.asarray(self._per_image)
        result = {
            "iou": _ratio(inter, true_area + pred_area - inter),
            "dice": _ratio(2 * inter, true_area + pred_area),
            "iou_per_image": float(per_image[:, 0].mean()),
            "dice_per_image": float(per_image[:, 1].mean()),
            "mean_iou_keras": _mean_iou_of_counts(self._two_class),
        }
        for method, scores in self._ap.items():
            result[_ap_key(method)] = float(np.mean(scores))
        return result


def _ap_key(method):
    return "dsb_ap" if method == "components" else f"dsb_ap_{method}"


def pair_instances(pairs, mask_threshold=None):
    """The true objects of DSB-layout samples: one label per nucleus mask.

    Args:
        pairs: `SamplePair`s (e.g. `sources.source_pairs` of a `dsb2018`
            source), whose `masks` are the per-nucleus PNGs. A pair with a
            single mask file (a merged mask) gives the connected components
            of that mask instead.
        mask_threshold: number or `None`: a mask's foreground is the
            values above it, as the source's rule (`sources.mask_rules`);
            `None` is every nonzero value. Defaults to `None`.

    Yields:
        int32 label images, one per pair, in order.
    """
    # The decoder of the training pipeline: its errors name the file.
    from keras_unetpp.data.decode import read_image

    for pair in pairs:
        masks = []
        for path in pair.masks:
            array = read_image(path)
            if array.ndim == 3:
                array = array.max(axis=-1)
            masks.append(array > (0 if mask_threshold is None else mask_threshold))
        if len(masks) == 1:
            yield label_instances(masks[0])[0]
        else:
            yield labels_from_masks(masks)[0]
