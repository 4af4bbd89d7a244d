"""ClassifyImage and DetectObjects through the SDK against a real server, with
transformers' pipelines as the reference on the same images."""

from __future__ import annotations

import asyncio
import io
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import transformers
from PIL import Image, ImageOps

from modelwire import AsyncClient, BadRequestError, Classification, Detections, RateLimitError
from modelwire.v1 import common_pb2
from modelwire.v1 import inference_service_pb2 as pb
from tests.conftest import (
    IMAGE_LIMITS,
    RunningServer,
    assert_image_limits_refused,
    client_fixture,
    encode_image,
    one_torch_thread_fixture,
    patterned_images,
    preset_server_fixture,
    preset_variant,
)
from tests.helpers import bad_request_fields, raw_error
from tests.memory import MB, peak_growth
from tests.tolerances import TINY_SCORE_ATOL

one_thread = one_torch_thread_fixture()


LIMITED = preset_variant("vit-limited", "image-classification", "tiny-vit", **IMAGE_LIMITS)
media = preset_server_fixture("tiny-vit", "tiny-detr", extra=[LIMITED])
client = client_fixture("media", timeout=120)


def sample_images() -> list[Image.Image]:
    images = patterned_images(noise=(48, 64), gradient=(40, 70), stripes=(90, 30), every=4)
    return [*images, Image.new("RGB", (1, 1), "red")]


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A JPEG whose EXIF says "rotate 90° clockwise", and the upright image it shows."""
    rng = np.random.default_rng(1)
    stored = Image.fromarray(rng.integers(0, 256, (30, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels need a 90° clockwise turn
    data = encode_image(stored, "JPEG", exif=exif, quality=95)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert upright.size == (30, 80)
    return data, upright


def as_dict(result: Classification) -> dict[str, float]:
    return {ls.label: ls.score for ls in result.labels}


def pipe(media: RunningServer, model: str, task: str) -> transformers.Pipeline:
    return transformers.pipeline(task, model=media.runner(model).config.source, device="cpu")


# ------------------------------------------------------------------ ClassifyImage


async def test_classify_image_matches_the_pipeline(media, client: AsyncClient) -> None:
    images = sample_images()
    expected = pipe(media, "tiny-vit", "image-classification")(images, top_k=5)
    results = await client.classify_image(images, model="tiny-vit", top_k=5)
    assert len(results) == len(images)
    for result, reference in zip(results, expected, strict=True):
        got = as_dict(result)
        assert got.keys() == {r["label"] for r in reference}
        for r in reference:
            assert got[r["label"]] == pytest.approx(r["score"], abs=TINY_SCORE_ATOL)
        assert [ls.score for ls in result.labels] == sorted(got.values(), reverse=True)
    # The tiny model reacts to its input: a constant answer must not pass.
    cat = [as_dict(r)["cat"] for r in results]
    assert max(cat) - min(cat) >= 0.05


async def test_top_k_defaults_to_one_and_caps_at_the_label_count(client: AsyncClient) -> None:
    image = sample_images()[0]
    (one,) = await client.classify_image(image)  # the default model is tiny-vit
    (every,) = await client.classify_image(image, top_k=50)
    assert len(one.labels) == 1 and len(every.labels) == 5
    assert one.labels[0] == every.labels[0]


async def test_image_formats_decode_like_pillow(media, client: AsyncClient) -> None:
    image = sample_images()[0]
    frames = [image, Image.fromarray(255 - np.asarray(image))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    palette_first = Image.open(io.BytesIO(gif.getvalue())).convert("RGB")  # frame 0
    inputs = [encode_image(image, "WEBP", lossless=True), gif.getvalue(), np.asarray(image)]
    references = [image, palette_first, image]
    expected = pipe(media, "tiny-vit", "image-classification")(references, top_k=5)
    results = await client.classify_image(inputs, top_k=5)
    for result, reference in zip(results, expected, strict=True):
        for r in reference:
            assert as_dict(result)[r["label"]] == pytest.approx(r["score"], abs=TINY_SCORE_ATOL)
    # The GIF's second frame would score otherwise: the server took the first.
    second = pipe(media, "tiny-vit", "image-classification")(frames[1].convert("RGB"), top_k=5)
    assert any(abs(as_dict(results[1])[r["label"]] - r["score"]) > 1e-3 for r in second)


async def test_exif_orientation_is_applied(media, client: AsyncClient, tmp_path: Path) -> None:
    data, upright = exif_rotated_jpeg()
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    classifier = pipe(media, "tiny-vit", "image-classification")
    # The pixels as stored, EXIF dropped (the pipeline would turn an opened file upright).
    stored = Image.fromarray(np.asarray(Image.open(path).convert("RGB")))
    expected, unrotated = classifier([upright, stored], top_k=5)
    (result,) = await client.classify_image(path, top_k=5)  # a path: the SDK reads it
    for r in expected:
        assert as_dict(result)[r["label"]] == pytest.approx(r["score"], abs=TINY_SCORE_ATOL)
    assert any(abs(as_dict(result)[r["label"]] - r["score"]) > 1e-3 for r in unrotated)


# ------------------------------------------------------------------ DetectObjects


def assert_same_detections(got: Detections, expected: list[dict]) -> None:
    """Same objects as the pipeline: scores close, its integer boxes our boxes truncated."""
    assert len(got.objects) == len(expected)
    want = sorted(expected, key=lambda d: d["score"], reverse=True)
    for obj, ref in zip(got.objects, want, strict=True):
        assert obj.label == ref["label"]
        assert obj.score == pytest.approx(ref["score"], abs=TINY_SCORE_ATOL)
        box = obj.box
        assert [int(box.xmin), int(box.ymin), int(box.xmax), int(box.ymax)] == [
            ref["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")
        ]
    assert [o.score for o in got.objects] == sorted((o.score for o in got.objects), reverse=True)


@pytest.mark.parametrize("threshold", [None, 0.0, 0.35])
async def test_detect_objects_matches_the_pipeline(
    media, client: AsyncClient, threshold: float | None
) -> None:
    images = sample_images()
    detector = pipe(media, "tiny-detr", "object-detection")
    expected = [
        detector(image, threshold=0.5 if threshold is None else threshold) for image in images
    ]
    results = await client.detect_objects(images, threshold=threshold)
    for got, reference in zip(results, expected, strict=True):
        assert_same_detections(got, reference)
    if threshold == 0.0:  # every query answers: the scores and boxes depend on the image
        assert all(len(r) == 10 for r in results)
        assert results[0].objects[0].score != results[1].objects[0].score


async def test_boxes_follow_the_exif_orientation(media, client: AsyncClient) -> None:
    data, upright = exif_rotated_jpeg()
    expected = pipe(media, "tiny-detr", "object-detection")(upright, threshold=0.0)
    (got,) = await client.detect_objects(data, threshold=0.0)
    assert_same_detections(got, expected)


async def test_concurrent_images_of_any_size_batch_without_changing_results(
    media, client: AsyncClient
) -> None:
    images = sample_images() * 3
    alone = [await client.detect_objects(image, threshold=0.0) for image in images[:4]]
    runner = media.runner("tiny-detr")
    before = len(runner.batcher.stats.sizes)
    together = await asyncio.gather(
        *(
            client.detect_objects(image, threshold=t)
            for image, t in zip(images, [0.0, 0.3] * 6, strict=True)
        )
    )
    sizes = list(runner.batcher.stats.sizes)[before:]
    assert sum(sizes) == len(images) and max(sizes) >= 2, sizes
    for i, (result,) in enumerate(together):
        (single,) = alone[i % 4]
        kept = [o for o in single.objects if o.score > (0.0 if i % 2 == 0 else 0.3)]
        assert [o.label for o in result.objects] == [o.label for o in kept]
        for a, b in zip(result.objects, kept, strict=True):
            assert a.score == pytest.approx(b.score, abs=TINY_SCORE_ATOL)
            assert a.box.xmin == pytest.approx(b.box.xmin, abs=1e-3)


# ------------------------------------------------------------------ bad input


def tiny_png() -> bytes:
    return encode_image(sample_images()[0])


def image_bytes(kind: str) -> bytes:
    png = tiny_png()
    if kind == "strip":  # decodes, but DETR's resize cannot take it
        return encode_image(Image.new("RGB", (5000, 1)))
    return {"png": png, "cut": png[: len(png) // 2], "empty": b"", "junk": b"not an image"}[kind]


@pytest.mark.parametrize(
    ("rpc", "images", "extra", "field", "says"),
    [
        ("ClassifyImage", ["empty", "png"], {}, "images[0]", "is empty"),
        ("ClassifyImage", ["png", "junk"], {}, "images[1]", "not a decodable image"),
        ("DetectObjects", ["png", "png", "cut"], {}, "images[2]", "could not be decoded"),
        ("DetectObjects", ["png", "strip"], {}, "images[1]", "cannot be prepared for this model"),
        ("DetectObjects", [], {}, "images", "at least one"),
        ("ClassifyImage", ["png"], {"top_k": 0}, "top_k", "at least 1"),
        ("DetectObjects", ["png"], {"threshold": 1.5}, "threshold", "[0, 1]"),
    ],
)
async def test_bad_images_are_invalid_argument_naming_the_input(
    media, client: AsyncClient, rpc: str, images: list[str], extra: dict, field: str, says: str
) -> None:
    # Through the raw stub: the SDK refuses some of these before sending.
    request = getattr(pb, f"{rpc}Request")(
        images=[common_pb2.Image(data=image_bytes(kind)) for kind in images], **extra
    )
    error = await raw_error(media, rpc, request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == [field]
    assert says in error.details()
    (still,) = await client.classify_image(tiny_png())  # the server keeps serving
    assert still.labels


async def test_limits_refuse_oversize_input_saying_the_limit(client: AsyncClient) -> None:
    small = Image.new("RGB", (50, 50), "blue")
    (fits,) = await client.classify_image(small, model="vit-limited")
    assert fits.labels
    await assert_image_limits_refused(partial(client.classify_image, model="vit-limited"))


async def test_forward_passes_run_on_the_worker_thread(media, client: AsyncClient) -> None:
    import threading

    seen: set[str] = set()
    hooks = [
        media.runner(name).model.register_forward_pre_hook(
            lambda *_: seen.add(threading.current_thread().name)
        )
        for name in ("tiny-vit", "tiny-detr")
    ]
    try:
        await client.classify_image(tiny_png())
        await client.detect_objects(tiny_png())
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and all(name.startswith("modelwire-worker") for name in seen)


async def test_a_small_file_of_many_pixels_is_refused_before_decoding(
    client: AsyncClient,
) -> None:
    bomb = encode_image(Image.new("1", (10_000, 10_000)))  # 100 M pixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(BadRequestError) as caught:
        await client.classify_image(bomb)  # tiny-vit: the default limit
    assert f"10000x10000 pixels; the limit is {4096 * 4096} pixels" in str(caught.value)


async def test_a_flat_png_of_many_pixels_is_refused_before_it_costs_memory(
    media: RunningServer,
) -> None:
    """6000x6600 flat pixels in 135 KB took 440 MB to decode (3.2 GB for 8 at once):
    the default limit is 4096x4096 pixels, read from the header."""
    bomb = encode_image(Image.new("RGB", (6000, 6600), (120, 30, 200)))
    assert len(bomb) < 200_000
    request = pb.ClassifyImageRequest(model="tiny-vit", images=[common_pb2.Image(data=bomb)])
    with peak_growth() as growth:
        error = await raw_error(media, "ClassifyImage", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["images[0]"]
    assert growth.bytes < 150 * MB


async def test_a_request_is_limited_by_its_pixels_together(media: RunningServer) -> None:
    """Each image within max_image_pixels (2,500 here), two of them over it together."""
    square = encode_image(Image.new("RGB", (40, 40), (9, 9, 9)))  # 1,600 pixels
    request = pb.ClassifyImageRequest(
        model="vit-limited", images=[common_pb2.Image(data=square), common_pb2.Image(data=square)]
    )
    error = await raw_error(media, "ClassifyImage", request)
    assert error.code().name == "INVALID_ARGUMENT"
    assert bad_request_fields(error) == ["images"]
    assert "3200 pixels together" in error.details()


async def test_decoding_beyond_the_models_capacity_is_resource_exhausted(
    media: RunningServer, client: AsyncClient
) -> None:
    """While other requests hold the model's decode budget, one that would pass it is
    told to retry (capacity), and is served once the budget is free."""
    budget = media.runner("vit-limited").limits.pixels
    square = encode_image(Image.new("RGB", (40, 40), (9, 9, 9)))
    with budget.hold(budget.capacity - 100):  # other requests' decodes, as it were
        with pytest.raises(RateLimitError) as refused:
            await client.classify_image(square, model="vit-limited")
        assert refused.value.retry_after is not None
    [result] = await client.classify_image(square, model="vit-limited")
    assert result.labels
