"""The planted-evidence benchmark: the score is the documented function of the subject alone (subject rule), the
background carries none of it, the masks cover the subject; the composition rule depends on the background."""
import math
from dataclasses import replace

import pytest
import torch

from xaiimg.data.composition import shape_mask
from xaiimg.data.planted import (
    Background,
    PlantedConfig,
    Subject,
    bounding_box_masks,
    make_planted_set,
    render_scene,
    render_set,
    scene_score,
    scene_terms,
)

SIZE = 48
CONFIG = PlantedConfig(size=SIZE)
COMPOSITION = PlantedConfig(size=SIZE, rule="composition")
# two tiny stand-in photos (the real pool is tested once below)
PHOTOS = (torch.linspace(0, 1, 3 * 60 * 80).view(3, 60, 80), torch.rand(3, 70, 50, generator=torch.Generator()
                                                                       .manual_seed(1)))


def subject(**changes) -> Subject:
    values = dict(shape="disk", centre=(0.5, 0.5), radius=0.25, blur=0.0, luminance=0.5, hue=0.1, hue_spread=0.0,
                  period=0.1, angle=0.3)
    return Subject(**{**values, **changes})


def background(**changes) -> Background:
    values = dict(source="photo", index=0, crop_side=0.8, crop_offset=(0.2, 0.7), flip=False, texture_seed=3,
                  hue_shift=0.05, saturation=1.2, luminance=0.4, blur=0.5)
    return Background(**{**values, **changes})


def scene(subject_changes=None, background_changes=None):
    from xaiimg.data.planted import PlantedScene

    return PlantedScene(subject(**(subject_changes or {})), background(**(background_changes or {})))


def test_subject_score_is_the_documented_formula():
    best = scene()
    assert scene_terms(best, CONFIG) == {"sharpness": 1.0, "exposure": 1.0, "harmony": 1.0}
    assert scene_score(best, CONFIG) == pytest.approx(10.0)
    w_s, w_e, w_h = CONFIG.weights
    # sharpness: blur 0.6 removes 0.6 of the sharpness term
    assert scene_score(scene({"blur": 0.6}), CONFIG) == pytest.approx(10 - 9 * w_s * 0.6)
    # exposure: half the half-range away from mid-grey, either side
    for luminance in (0.5 + 0.175, 0.5 - 0.175):
        assert scene_score(scene({"luminance": luminance}), CONFIG) == pytest.approx(10 - 9 * w_e * 0.5)
    assert scene_terms(scene({"luminance": 0.9}), CONFIG)["exposure"] == 0.0  # clipped beyond the half-range
    # harmony: complementary colours (half the hue circle apart) lose the whole harmony term
    assert scene_score(scene({"hue_spread": 0.5}), CONFIG) == pytest.approx(10 - 9 * w_h)
    worst = scene({"blur": 1.0, "luminance": 0.85, "hue_spread": 0.5})
    assert scene_score(worst, CONFIG) == pytest.approx(1.0)


def test_background_swap_leaves_score_and_subject_pixels_unchanged():
    a = scene()
    for other in (background(source="noise", luminance=0.8, blur=0.0), background(index=1, flip=True, blur=1.0),
                  background(source="waves", saturation=0.5, hue_shift=-0.1)):
        swapped = replace(a, background=other)
        assert scene_score(swapped, CONFIG) == scene_score(a, CONFIG)
        image_a, mask = render_scene(a, CONFIG, PHOTOS)
        image_b, mask_b = render_scene(swapped, CONFIG, PHOTOS)
        assert torch.equal(mask, mask_b)
        assert torch.equal(image_a[mask.expand(3, -1, -1)], image_b[mask.expand(3, -1, -1)])
        assert not torch.equal(image_a, image_b)  # the background did change


def test_subject_changes_stay_inside_the_mask_and_change_the_score():
    a = scene()
    image, mask = render_scene(a, CONFIG, PHOTOS)
    for changes in ({"blur": 0.8}, {"luminance": 0.2}, {"hue_spread": 0.4}):
        changed = scene(changes)
        other, _ = render_scene(changed, CONFIG, PHOTOS)
        differs = (other != image).any(0, keepdim=True)
        assert differs.any() and not (differs & ~mask).any()  # every changed pixel is a subject pixel
        assert scene_score(changed, CONFIG) < scene_score(a, CONFIG)
    # blur lowers the subject's high-frequency energy (what "sharpness" reads)
    sharp, _ = render_scene(scene({"blur": 0.0, "period": 0.2}), CONFIG, PHOTOS)
    blurred, _ = render_scene(scene({"blur": 1.0, "period": 0.2}), CONFIG, PHOTOS)

    def detail(img):
        return (img[:, 1:, :] - img[:, :-1, :]).abs()[mask[:, 1:, :].expand(3, -1, -1)].mean()

    assert detail(blurred) < 0.6 * detail(sharp)


def test_masks_cover_the_subject():
    image, mask = render_scene(scene({"shape": "square"}), CONFIG, PHOTOS)
    assert torch.equal(mask[0], shape_mask("square", (0.5, 0.5), 0.25, SIZE))
    disk = render_scene(scene(), CONFIG, PHOTOS)[1]
    assert disk.float().mean().item() == pytest.approx(math.pi * 0.25**2, rel=0.05)
    generated = make_planted_set(6, CONFIG, seed=2, photos=PHOTOS)
    for item, swapped_background in zip(generated.scenes, reversed(generated.scenes)):
        a, m = render_scene(item, CONFIG, PHOTOS)
        b, _ = render_scene(replace(item, background=swapped_background.background), CONFIG, PHOTOS)
        assert not ((a != b).any(0, keepdim=True) & m).any()  # inside the mask only the subject shows


def test_composition_rule_depends_on_the_background():
    a = scene({"centre": (1 / 3, 1 / 3), "blur": 0.2})
    blurred = replace(a, background=replace(a.background, blur=1.0))
    w_p, w_d, w_c = COMPOSITION.composition_weights
    assert scene_terms(a, COMPOSITION)["placement"] == pytest.approx(1.0)
    assert scene_score(blurred, COMPOSITION) - scene_score(a, COMPOSITION) == pytest.approx(9 * w_d * 0.8 * 0.5)
    assert scene_score(blurred, CONFIG) == scene_score(a, CONFIG)  # the subject rule ignores it


def test_sets_are_seeded_consistent_and_backgrounds_independent_of_the_score():
    one = make_planted_set(40, CONFIG, seed=5, photos=PHOTOS)
    two = make_planted_set(40, CONFIG, seed=5, photos=PHOTOS)
    assert torch.equal(one.images, two.images) and torch.equal(one.scores, two.scores)
    assert one.images.shape == (40, 3, SIZE, SIZE) and one.masks.dtype == torch.bool
    assert one.images.min() >= 0 and one.images.max() <= 1
    assert torch.allclose(one.scores, torch.tensor([scene_score(s, CONFIG) for s in one.scenes]))
    assert torch.allclose(one.distributions.sum(1), torch.ones(40))
    assert {s.background.source for s in one.scenes} >= {"photo"}
    rerendered = render_set(one.scenes, CONFIG, PHOTOS)
    assert torch.equal(rerendered.images, one.images)


def test_real_photo_pool_backgrounds():
    from xaiimg.data.planted import background_photos

    photos = background_photos()
    assert len(photos) == 28 and all(p.shape[0] == 3 and min(p.shape[1:]) == 320 for p in photos)
    generated = make_planted_set(3, PlantedConfig(size=32), seed=0)
    assert generated.images.shape == (3, 3, 32, 32)


def test_bounding_box_masks_golden():
    masks = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    masks[0, 0, 1, 2] = masks[0, 0, 3, 4] = True
    masks[1, 0, 5, 0] = True
    boxes = bounding_box_masks(masks)
    expected = torch.zeros_like(masks)
    expected[0, 0, 1:4, 2:5] = True
    expected[1, 0, 5, 0] = True
    assert torch.equal(boxes, expected)


@pytest.mark.parametrize("changes, message", [
    ({"rule": "taste"}, "rule must be one of"), ({"weights": (0.5, 0.5, 0.5)}, "summing to 1"),
    ({"size": 16}, "size must be"), ({"texture_fraction": 2.0}, "texture_fraction"),
    ({"radius_range": (0.3, 0.6)}, "radius_range")])
def test_bad_configuration_is_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        PlantedConfig(**changes)
    with pytest.raises(ValueError, match="n must be"):
        make_planted_set(0, CONFIG, photos=PHOTOS)
    with pytest.raises(ValueError, match="unknown background source"):
        render_scene(scene(background_changes={"source": "sky"}), CONFIG, PHOTOS)


def test_config_round_trips_through_json():
    import json

    config = PlantedConfig(size=64, rule="composition")
    assert PlantedConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config
