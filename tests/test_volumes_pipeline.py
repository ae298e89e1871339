"""The volume patch pipeline: foreground share, identical augmentation, padding."""

import itertools

import numpy as np
import pytest

from keras_unetpp import volumes

pytest.importorskip("nibabel")


def _npy_pairs(tmp_path, image, label, copies=1):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    for k in range(copies):
        np.save(tmp_path / "images" / f"v{k:02d}.npy", image)
        np.save(tmp_path / "labels" / f"v{k:02d}.npy", label)
    return volumes.volume_pairs(tmp_path / "images", tmp_path / "labels")


def _patches(ds, count):
    images, labels = [], []
    for image, label in ds.repeat().unbatch().take(count):
        images.append(image.numpy())
        labels.append(label.numpy())
    return np.stack(images), np.stack(labels)


def _p_random(size, patch, start, width):
    """P(a uniformly placed patch overlaps the block [start, start + width))
    per axis, counted corner by corner; the product over the axes."""
    corners = np.arange(size - patch + 1)
    hits = (corners <= start + width - 1) & (corners + patch - 1 >= start)
    return hits.mean()


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_foreground_share_of_patches(tmp_path, share):
    shape, patch = (32, 32, 32), 16
    label = np.zeros(shape, np.uint8)
    label[1:3, 1:3, 1:3] = 1  # a 2x2x2 block near a corner
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    pairs = _npy_pairs(tmp_path, image, label, copies=8)
    ds = volumes.make_volume_dataset(
        pairs,
        patch,
        batch_size=4,
        training=True,
        foreground_share=share,
        augment=False,
        depth=2,
        seed=3,
    )
    n = 800
    _, labels = _patches(ds, n)
    observed = (labels.reshape(n, -1) > 0).any(axis=1).mean()
    p_random = _p_random(32, 16, 1, 2) ** 3  # (3/17)**3: ~0.55%
    expected = share + (1 - share) * p_random
    if share == 1.0:
        assert observed == 1.0
    else:
        sigma = np.sqrt(expected * (1 - expected) / n)
        assert abs(observed - expected) < 4 * sigma + 1e-3, (observed, expected)


def _transforms():
    """Every flip subset of the 3 axes with 0..3 in-plane quarter turns."""
    for flips in itertools.product((False, True), repeat=3):
        for turns in range(4):
            yield flips, turns


def _undo(patch, flips, turns):
    patch = np.rot90(patch, -turns, axes=(1, 2))
    axes = tuple(a for a in range(3) if flips[a])
    return np.flip(patch, axes) if axes else patch


def test_augmentation_is_identical_on_image_and_label(tmp_path):
    shape, patch = (24, 24, 24), 16
    # Unique voxel values locate every patch in the volume; label = f(image).
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    label = (image % 3).astype(np.uint8)
    pairs = _npy_pairs(tmp_path, image, label, copies=4)
    ds = volumes.make_volume_dataset(
        pairs,
        patch,
        batch_size=4,
        training=True,
        augment=True,
        num_classes=3,
        intensity="none",
        foreground_share=0.0,
        depth=2,
        seed=0,
    )
    images, labels = _patches(ds, 64)
    np.testing.assert_array_equal(labels[..., 0], images[..., 0] % 3)
    seen = set()
    for patch_image in images[..., 0]:
        found = []
        for flips, turns in _transforms():
            undone = _undo(patch_image, flips, turns)
            z, y, x = np.unravel_index(int(undone[0, 0, 0]), shape)
            block = image[z : z + patch, y : y + patch, x : x + patch]
            if block.shape == undone.shape and np.array_equal(block, undone):
                found.append((flips, turns))
        # Each patch is a transform of a block (two of the 32 combinations
        # give each of the 16 distinct transforms: flipping both in-plane
        # axes is a half turn).
        assert len(found) == 2
        seen.add(min(found))
    assert len(seen) >= 12  # of the 16 transforms, in 64 patches


def test_small_volume_is_padded_around(tmp_path):
    image = np.ones((6, 10, 12), np.float32)
    label = np.ones((6, 10, 12), np.uint8)
    pairs = _npy_pairs(tmp_path, image, label)
    ds = volumes.make_volume_dataset(
        pairs,
        (8, 16, 16),
        batch_size=1,
        training=True,
        augment=False,
        intensity="none",
        depth=2,
    )
    images, labels = _patches(ds, 3)
    assert images.shape == (3, 8, 16, 16, 1)
    for patch_image, patch_label in zip(images[..., 0], labels[..., 0]):
        # The whole volume, centred: (8-6)/2, (16-10)/2, (16-12)/2 voxels before.
        expected = np.zeros((8, 16, 16))
        expected[1:7, 3:13, 2:14] = 1
        np.testing.assert_array_equal(patch_image, expected)
        np.testing.assert_array_equal(patch_label, expected)


def test_evaluation_pipeline_gives_whole_volumes_padded_to_the_stride(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 13, 6)).astype(np.float32)
    label = (image > 0).astype(np.uint8)
    pairs = _npy_pairs(tmp_path, image, label)
    names = ["output_l1", "output_l2"]
    ((batch, target),) = list(
        volumes.make_volume_dataset(pairs, 8, batch_size=1, output_names=names, depth=2)
    )
    assert batch.shape == (1, 12, 16, 8, 1) and set(target) == set(names)
    z = (image - image.mean()) / image.std()
    np.testing.assert_allclose(batch[0, :9, :13, :6, 0], z, atol=1e-5)
    assert float(np.abs(batch[0, 9:]).max()) == 0.0
    np.testing.assert_array_equal(target["output_l2"][0, :9, :13, :6, 0], label)
    assert target["output_l1"].dtype.name == "float32"  # binary targets
