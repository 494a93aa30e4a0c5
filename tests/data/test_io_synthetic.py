"""SyntheticSource: index mapping, splits, validation and use by the Loader."""
import numpy as np
import pytest

from minivit.io import Loader, SyntheticSource


class Stripes:
    """A tiny pure generator: the image encodes (seed, class, instance)."""
    instances_per_class = 10

    def __init__(self, size=8, seed=0):
        self.size, self.seed = size, seed

    def render(self, class_id, instance_id):
        img = np.zeros((self.size, self.size, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = class_id, instance_id, self.seed
        return img


def test_index_maps_to_class_and_instance():
    src = SyntheticSource("stripes", 3, 8, instances=range(2, 6), generator=Stripes())
    assert len(src) == 12 and src.image_size == 8
    img, label = src[7]                         # class 1, 4th instance of 2..5
    assert label == 1 and img[0, 0].tolist() == [1, 5, 0]
    np.testing.assert_array_equal(src.labels, np.repeat(np.arange(3), 4))
    assert src[-1][0][0, 0].tolist() == [2, 5, 0]


def test_held_out_split_is_disjoint():
    gen = Stripes()
    train = SyntheticSource("stripes", 2, 8, instances=range(0, 8), generator=gen)
    held = SyntheticSource("stripes", 2, 8, instances=range(8, 10), generator=gen)
    pairs = lambda s: {tuple(s[i][0][0, 0, :2]) for i in range(len(s))}
    assert len(pairs(train)) == 16 and len(pairs(held)) == 4
    assert not pairs(train) & pairs(held)
    assert len(SyntheticSource("stripes", 2, 8, generator=gen)) == 20


@pytest.mark.parametrize("instances, match", [
    (range(5, 11), "\\[0, 10\\)"), (range(0), "empty"), ("abc", "instances"),
])
def test_bad_instances(instances, match):
    with pytest.raises(ValueError, match=match):
        SyntheticSource("stripes", 2, 8, instances=instances, generator=Stripes())


def test_wrong_generator_output_and_index_errors():
    src = SyntheticSource("stripes", 2, 16, generator=Stripes(size=8))
    with pytest.raises(ValueError, match="expected uint8 \\(16, 16, 3\\)"):
        src[0]
    with pytest.raises(IndexError):
        src[40]


def test_loader_over_synthetic_source():
    src = SyntheticSource("stripes", 4, 8, instances=3, generator=Stripes(seed=9))
    with Loader(src, 4, world_size=2, rank=1, seed=1, mean=(0, 0, 0), std=(1, 1, 1)) as ld:
        assert len(ld) == 1
        images, labels = ld.next_batch()
    idx = ld.batch_indices(0, 0)
    np.testing.assert_array_equal(labels, idx // 3)
    np.testing.assert_allclose(images[:, 0, 0, 0] * 255, labels, atol=1e-4)
    np.testing.assert_allclose(images[:, 2] * 255, 9, atol=1e-4)


def test_real_synth_generator_through_loader():
    # The contract with minivit.synth: make_generator(kind, classes, size, seed)
    # -> render(class_id, instance_id) uint8 (size, size, 3), instances_per_class.
    train = SyntheticSource("fractaldb", 2, 16, seed=0, instances=range(0, 3))
    held = SyntheticSource("fractaldb", 2, 16, seed=0, instances=range(3, 4))
    assert len(train) == 6 and len(held) == 2
    img, label = train[4]
    assert img.dtype == np.uint8 and img.shape == (16, 16, 3) and label == 1
    np.testing.assert_array_equal(img, train.generator.render(1, 1))
    assert not np.array_equal(held[0][0], train[0][0])
    with Loader(train, 3, seed=0, augment=True) as ld:
        images, labels = ld.next_batch()
    assert images.shape == (3, 3, 16, 16) and np.isfinite(images).all()
