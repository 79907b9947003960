from __future__ import annotations

import functools
import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from pawlab import checkpoint
from pawlab.config import DataConfig, RuntimeConfig, TrainConfig
from pawlab.data import prepare
from pawlab.errors import DataError, ModelFileError, SmallImageWarning
from pawlab.inference import Model, evaluate, load_model, metrics_from_probs, submit
from pawlab.training import train
from tests.conftest import TINY, make_image, run_ranks, train_tiny, write_tree
from tests.test_cli import pawlab


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source tree, model file) trained once for the whole module."""
    return train_tiny(tmp_path_factory.mktemp("inf"), 20, TrainConfig(epochs=8, lr=3e-3, batch_size=8))


def test_predict_probability_map(trained: tuple[Path, Path]) -> None:
    src, model_path = trained
    model = load_model(model_path)
    pred = model.predict(src / "dog" / "dog.3.jpg")
    assert set(pred.probabilities) == {"cat", "dog"}
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.classification == max(pred.probabilities, key=pred.probabilities.__getitem__)
    assert pred.to_json()["classification"] == pred.classification
    assert set(pred.to_json()["probability-map"]) == {"cat", "dog"}


def test_predict_accepts_paths_pil_images_of_every_mode_arrays_and_bytes(trained: tuple[Path, Path]) -> None:
    src, model_path = trained
    model = load_model(model_path)
    path = src / "cat" / "cat.1.jpg"
    im = Image.open(path).convert("RGB")
    a = model.predict(path).probabilities
    for other in (im, Image.open(path), np.asarray(im), path.read_bytes(), str(path)):
        b = model.predict(other).probabilities  # type: ignore[arg-type]
        assert b == pytest.approx(a, abs=1e-3)
    assert len(model.predict_many([path, im])) == 2
    expected = model.predict(im).probabilities
    for mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBa", "RGBX", "PA"):  # the colours kept, near enough
        assert model.predict(im.convert(mode)).probabilities == pytest.approx(expected, abs=0.02), mode
    grey = model.predict(im.convert("L")).probabilities
    deep = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)  # 16-bit, mode I;16
    for other in (im.convert("LA"), im.convert("LA").convert("La"), deep, im.convert("F")):
        assert model.predict(other).probabilities == pytest.approx(grey, abs=0.02), other.mode
    for mode in ("1", "P", "I"):  # 1 bit, a palette, 32-bit: read as their files are
        assert sum(model.predict(im.convert(mode)).probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_takes_arrays_of_every_accepted_shape_and_bytes_likes(trained: tuple[Path, Path]) -> None:
    src, model_path = trained
    model = load_model(model_path)
    path = src / "cat" / "cat.4.jpg"
    grey = np.asarray(Image.open(path).convert("L"))
    expected = model.predict(grey).probabilities
    for same in (grey[..., None], np.repeat(grey[..., None], 3, -1), grey.astype(np.float32) / 255):
        assert model.predict(same).probabilities == pytest.approx(expected, abs=1e-6), same.shape
    data = path.read_bytes()
    from_bytes = model.predict(data).probabilities
    for image in (bytearray(data), memoryview(data), io.BytesIO(data)):
        assert model.predict(image).probabilities == from_bytes, type(image)
    with pytest.raises(DataError) as error:
        model.predict(np.zeros((0, 0, 3), np.uint8))
    assert str(error.value) == "<array (0, 0, 3) uint8>: empty image (0x0 pixels)"


SMALL_NOTE = "1x1 pixels, far smaller than the model's 16x16 input (upscaled 16x)"


def test_an_image_far_smaller_than_the_input_is_predicted_with_a_warning(trained: tuple[Path, Path]) -> None:
    model = load_model(trained[1])  # 16x16 input
    dot, small = np.full((1, 1), 128, np.uint8), np.full((4, 4), 128, np.uint8)  # 16x and 4x up
    with pytest.warns(SmallImageWarning) as record:
        pred = model.predict(dot)
        lists = [model.predict([small, dot]), model.predict_many([small, dot])]
    note = f"<array (1, 1) uint8>: {SMALL_NOTE}"
    assert [str(w.message) for w in record] == [note] * 3
    assert {w.filename for w in record} == {__file__}  # shown at the caller's line
    assert pred.notes == (note,) and "notes" not in json.dumps(pred.to_json())
    assert [[p.notes for p in many] for many in lists] == [[(), (note,)]] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.predict(small).notes == ()


def test_pawlab_predict_notes_a_far_smaller_image_on_stderr(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    src, model_path = trained
    dot = tmp_path / "dot.png"
    Image.new("L", (1, 1), 128).save(dot)
    photo = src / "cat" / "cat.1.jpg"
    proc = pawlab("predict", model_path, dot, photo, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [json.loads(line)["image"] for line in lines] == [str(dot), str(photo)]  # one object a line
    assert proc.stderr.splitlines() == [f"pawlab predict: note: {dot}: {SMALL_NOTE}"]
    text = pawlab("predict", model_path, dot)
    assert text.stdout.startswith(f"{dot}: ") and len(text.stdout.splitlines()) == 1
    assert text.stderr.splitlines() == [f"pawlab predict: note: {dot}: {SMALL_NOTE}"]


def test_predict_bad_image_is_a_data_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="x.jpg"):
        load_model(trained[1]).predict(bad)


def test_missing_or_foreign_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="junk.safetensors"):
        load_model(junk)


def test_evaluate_on_training_source_uses_its_validation_split(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    src, model_path = trained
    model = load_model(model_path)
    report = evaluate(model, src, report_dir=tmp_path / "rep", workers=1, progress=False)
    assert report.count == model.meta["training"]["data"]["validation_count"]
    assert "validation split used in training" in report.split
    assert np.sum(report.confusion_matrix) == report.count
    assert 0 <= report.accuracy <= 1 and report.log_loss >= 0
    assert Path(report.figures["predictions"]).is_file()
    js = report.to_json()
    assert {"accuracy", "log_loss", "confusion_matrix", "classes", "count"} <= set(js)


def test_evaluate_on_another_source_takes_it_whole(trained: tuple[Path, Path], tmp_path: Path) -> None:
    other = write_tree(tmp_path / "other", {"cat": 5, "dog": 7}, start=100)
    report = evaluate(trained[1], other, report_dir=tmp_path / "rep", workers=1, progress=False)
    assert report.count == 12
    assert [sum(r) for r in report.confusion_matrix] == [5, 7]


def test_evaluate_on_prepared_folder_uses_validation(trained: tuple[Path, Path], tmp_path: Path) -> None:
    src, model_path = trained
    rep = prepare(src, tmp_path / "prep", DataConfig(size=16, workers=1), progress=False)
    report = evaluate(model_path, tmp_path / "prep", report_dir=tmp_path / "rep", workers=1, progress=False)
    assert report.count == sum(rep.counts["validation"].values())


def test_evaluate_rejects_unknown_class(trained: tuple[Path, Path], tmp_path: Path) -> None:
    other = write_tree(tmp_path / "other", {"cat": 2, "fox": 2})
    with pytest.raises(DataError, match="'fox' is not one of the model's classes"):
        evaluate(trained[1], other, report_dir=tmp_path / "rep", workers=1, progress=False)


def test_class_names_that_differ_only_in_form_are_mapped(trained: tuple[Path, Path], tmp_path: Path) -> None:
    plural = write_tree(tmp_path / "plural", {"Cats": 3, "dogs": 3})
    with pytest.raises(DataError, match=r"differ only in form: --class-map Cats=cat,dogs=dog\)"):
        evaluate(trained[1], plural, report_dir=tmp_path / "rep", workers=1, progress=False)
    mapped = {"Cats": "cat", "dogs": "dog"}
    report = evaluate(
        trained[1], plural, report_dir=tmp_path / "rep", workers=1, progress=False, class_map=mapped
    )
    assert report.count == 6 and report.classes == ["cat", "dog"]


def test_metrics_from_probs() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    m = metrics_from_probs(probs, labels, ["cat", "dog"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["precision"] == {"cat": 0.5, "dog": 1.0}
    assert m["recall"] == {"cat": 1.0, "dog": pytest.approx(2 / 3)}
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.7])))


# ----------------------------------------------------------------------------- submission


def _test_set(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True)
    for i in range(1, n + 1):
        make_image("cat" if i % 2 else "dog", seed=i).save(root / f"{i}.jpg")
    return root


def _rows(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "id,label"
    return [(int(a), b) for a, b in (ln.split(",") for ln in lines[1:])]


def test_submit_writes_sorted_clipped_probabilities(trained: tuple[Path, Path], tmp_path: Path) -> None:
    test = _test_set(tmp_path / "test")
    (test / "notes.txt").write_text("hi")
    (test / "cover.jpg").write_bytes(b"x")
    out = tmp_path / "sub.csv"
    report = submit(trained[1], test, out, batch_size=5, workers=1, progress=False)
    rows = _rows(out)
    assert [i for i, _ in rows] == list(range(1, 13))
    assert all(0.005 <= float(v) <= 0.995 for _, v in rows)
    assert report.written == 12 and report.rows == 12
    assert {s.name for s in report.skipped} == {"notes.txt", "cover.jpg"}
    # the easy toy task: odd ids are cats (label near 0), even are dogs
    assert np.mean([(float(v) > 0.5) == (i % 2 == 0) for i, v in rows]) >= 0.8


def test_submit_hard_labels(trained: tuple[Path, Path], tmp_path: Path) -> None:
    test = _test_set(tmp_path / "test", 4)
    submit(trained[1], test, tmp_path / "sub.csv", hard=True, workers=1, progress=False)
    assert {v for _, v in _rows(tmp_path / "sub.csv")} <= {"0", "1"}


def test_submit_with_decoding_workers_writes_the_same_rows(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    test = _test_set(tmp_path / "test", 40)  # enough for worker processes (chunks of 16)
    (test / "41.jpg").write_bytes(b"not a jpeg")  # a bad file decoded in a worker
    inline, pooled = tmp_path / "inline.csv", tmp_path / "pooled.csv"
    submit(trained[1], test, inline, batch_size=7, workers=1, progress=False)
    report = submit(trained[1], test, pooled, batch_size=7, workers=2, progress=False)
    assert pooled.read_text() == inline.read_text() and len(_rows(pooled)) == 41
    assert [f.name for f in report.failed] == ["41.jpg"]


def _killed_at_second_batch(path: Path) -> Model:
    """The model file loaded, its predictions interrupted (Ctrl-C) at the second batch."""
    model = load_model(path, runtime="torch")
    real, calls = model.predict_scored, {"n": 0}

    def killed(images: np.ndarray, batch_size: int | None = None, tta: bool = False) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(images, batch_size, tta)

    model.predict_scored = killed  # type: ignore[method-assign]
    return model


def test_submit_resumes_after_interruption(trained: tuple[Path, Path], tmp_path: Path) -> None:
    test = _test_set(tmp_path / "test")
    full = tmp_path / "full.csv"
    submit(trained[1], test, full, batch_size=4, workers=1, progress=False)
    assert not (tmp_path / "full.csv.pawlab-job.json").exists()  # finished: no job record left

    model = _killed_at_second_batch(trained[1])
    part = tmp_path / "part.csv"
    with pytest.raises(KeyboardInterrupt):
        submit(model, test, part, batch_size=4, workers=1, progress=False)
    assert len(part.read_text().splitlines()) == 5  # header and one whole batch
    with open(part, "a") as fh:
        fh.write("5,0.1")  # a torn row, as a kill in mid-write would leave
    report = submit(trained[1], test, part, batch_size=4, workers=1, progress=False)
    assert report.resumed == 4 and report.written == 8
    assert part.read_text() == full.read_text()


def test_a_resumed_submit_decides_compiling_by_the_whole_job(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test = _test_set(tmp_path / "test")
    part = tmp_path / "part.csv"
    with pytest.raises(KeyboardInterrupt):
        submit(_killed_at_second_batch(trained[1]), test, part, batch_size=4, workers=1, progress=False)
    sizes: list[int] = []
    model = load_model(trained[1])
    real = model.prepare_for
    monkeypatch.setattr(
        model, "prepare_for", lambda images, tta=False: (sizes.append(images), real(images, tta))[1]
    )
    report = submit(model, test, part, batch_size=4, workers=1, progress=False)
    assert report.resumed == 4 and sizes == [12]  # the job's 12 images, not the 8 left


@pytest.mark.slow
def test_a_resumed_compiled_submit_writes_the_bytes_of_an_uninterrupted_one(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``compile auto`` and the job (12 images) above the threshold but the part left after
    an interruption (8) below it, the resumed run compiles too, and its file is the same."""
    from pawlab.inference import model as model_module

    monkeypatch.setattr(model_module, "COMPILE_MIN_IMAGES", 10)
    test = _test_set(tmp_path / "test")
    full, part = tmp_path / "full.csv", tmp_path / "part.csv"
    whole = load_model(trained[1], compile="auto", runtime="torch")
    submit(whole, test, full, batch_size=4, workers=1, progress=False)
    if whole._compiled is None or whole._compiled.failed is not None:
        pytest.skip("torch.compile does not work here")
    killed = _killed_at_second_batch(trained[1])
    with pytest.raises(KeyboardInterrupt):
        submit(killed, test, part, batch_size=4, workers=1, progress=False)
    resumed = load_model(trained[1], compile="auto", runtime="torch")
    report = submit(resumed, test, part, batch_size=4, workers=1, progress=False)
    assert report.resumed == 4 and resumed._compiled is not None
    assert part.read_bytes() == full.read_bytes()


def test_submit_with_another_model_starts_afresh(trained: tuple[Path, Path], tmp_path: Path) -> None:
    test = _test_set(tmp_path / "test", 4)
    out = tmp_path / "sub.csv"
    submit(trained[1], test, out, workers=1, progress=False)
    report = submit(trained[1], test, out, hard=True, workers=1, progress=False)  # other labels
    assert report.resumed == 0 and report.written == 4
    assert {v for _, v in _rows(out)} <= {"0", "1"}


def test_submit_without_numeric_ids_is_an_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no image is named by a numeric id"):
        submit(trained[1], trained[0], tmp_path / "sub.csv", workers=1, progress=False)


def test_submit_undecodable_image_gets_uninformative_label(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    test = _test_set(tmp_path / "test", 3)
    (test / "4.jpg").write_bytes(b"\xff\xd8 broken")
    report = submit(trained[1], test, tmp_path / "sub.csv", workers=1, progress=False)
    assert dict(_rows(tmp_path / "sub.csv"))[4] == "0.5"
    assert [s.name for s in report.failed] == ["4.jpg"]


def test_submit_refuses_foreign_output_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    test = _test_set(tmp_path / "test", 2)
    out = tmp_path / "sub.csv"
    out.write_text("something else\n")
    with pytest.raises(DataError, match="not a submission file"):
        submit(trained[1], test, out, workers=1, progress=False)


def test_submit_from_zip(trained: tuple[Path, Path], tmp_path: Path) -> None:
    test = _test_set(tmp_path / "test", 6)
    archive = shutil.make_archive(str(tmp_path / "test"), "zip", tmp_path, "test")
    submit(trained[1], archive, tmp_path / "a.csv", workers=1, progress=False)
    submit(trained[1], test, tmp_path / "b.csv", workers=1, progress=False)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_evaluate_raw_source_of_a_prepared_training_folder_uses_its_split(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"cat": 20, "dog": 20})
    prep = prepare(src, tmp_path / "prep", DataConfig(size=16, workers=1, seed=3), progress=False)
    model = tmp_path / "m.safetensors"
    train(
        tmp_path / "prep",
        model,
        TINY,
        TrainConfig(epochs=1, seed=3),
        workers=1,
        stream=io.StringIO(),
        runtime=RuntimeConfig(progress=False),
    )
    report = evaluate(model, src, report_dir=tmp_path / "rep", workers=1, progress=False)
    assert report.count == sum(prep.counts["validation"].values())  # not all 40: no training image
    prepare(src, tmp_path / "other", DataConfig(size=16, workers=1, seed=4), progress=False)
    with pytest.raises(DataError, match="another split"):
        evaluate(model, tmp_path / "other", report_dir=tmp_path / "rep", workers=1, progress=False)


# ----------------------------------------------------------------------------- transfer models


@pytest.fixture(scope="module")
def transfer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source tree, model file) of a frozen EfficientNet-Lite0 with a trained head, at 32x32."""
    from pawlab.models import transfer_architecture

    root = tmp_path_factory.mktemp("transfer")
    src = write_tree(root / "src", {"cat": 8, "dog": 8})
    model = root / "model.safetensors"
    train(
        src,
        model,
        transfer_architecture("efficientnet_lite0", size=32),
        TrainConfig(epochs=2),
        workers=1,
        stream=io.StringIO(),
        runtime=RuntimeConfig(progress=False),
    )
    return src, model


def test_evaluate_transfer_model_writes_figures_and_top_losses(
    transfer: tuple[Path, Path], tmp_path: Path
) -> None:
    src, model_path = transfer
    report = evaluate(model_path, src, report_dir=tmp_path / "rep", workers=1, progress=False)
    assert report.count == load_model(model_path).meta["training"]["data"]["validation_count"]
    for name in ("predictions", "confusion_matrix", "top_losses"):
        figure = tmp_path / "rep" / f"{name}.png"
        assert figure.stat().st_size > 0, name
        assert Path(report.figures[name]) == figure
        assert Image.open(figure).size[0] > 0
    worst = report.top_losses
    assert 0 < len(worst) <= min(12, report.count)
    for entry in worst:
        assert set(entry) == {"name", "true", "predicted", "loss", "p_true"}
        assert entry["true"] in ("cat", "dog") and entry["predicted"] in ("cat", "dog")
        assert entry["name"].split("/")[0] == entry["true"]  # class-per-folder names
        assert 0.0 <= entry["p_true"] <= 1.0
        assert entry["loss"] == pytest.approx(-np.log(max(entry["p_true"], 1e-15)), rel=1e-5)
        assert (entry["predicted"] != entry["true"]) == (entry["p_true"] < 0.5)
    losses = [e["loss"] for e in worst]
    assert losses == sorted(losses, reverse=True)
    assert report.to_json()["top_losses"] == worst
    assert "test-time augmentation" not in report.split


def test_evaluate_and_predict_with_tta(transfer: tuple[Path, Path], tmp_path: Path) -> None:
    src, model_path = transfer
    model = load_model(model_path, precision="fp32")
    plain = evaluate(model, src, report_dir=tmp_path / "a", workers=1, progress=False)
    tta = evaluate(model, src, report_dir=tmp_path / "b", workers=1, progress=False, tta=True)
    assert "test-time augmentation" in tta.split and tta.split.startswith(plain.split)
    assert tta.count == plain.count and 0.0 <= tta.accuracy <= 1.0 and tta.log_loss >= 0
    assert np.sum(tta.confusion_matrix) == tta.count
    image = src / "cat" / "cat.3.jpg"
    a, b = model.predict(image), model.predict(image, tta=True)
    assert sum(b.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert a.probabilities != b.probabilities  # the mirror and crops change the average
    assert len(model.predict_many([image, image], tta=True)) == 2


def test_inference_precision(transfer: tuple[Path, Path]) -> None:
    from pawlab.errors import ConfigError
    from pawlab.inference.engine import COMPILED_BATCH
    from pawlab.inference.guard import Guard
    from pawlab.runtime import use_bf16

    src, model_path = transfer
    assert load_model(model_path, precision="fp32").bf16 is False
    assert load_model(model_path, precision="bf16").bf16 is True
    auto = load_model(model_path)
    agreed = bool(auto.meta.get("inference", {}).get("ok"))
    assert auto.bf16 == (agreed and use_bf16("auto", auto.device))
    with pytest.raises(ConfigError, match="precision"):
        load_model(model_path, precision="nonsense")
    # guarded bf16: the rule and setting recorded by training's agreement check, only with bf16
    record = auto.meta.get("inference", {})
    assert auto.guard == (Guard.from_record(record) if auto.bf16 else None)
    assert auto.guard is None or auto.guard.rule == "margin"
    assert load_model(model_path, precision="fp32").guard is None
    # compiling: on asks for it; auto only for long jobs; off never
    with pytest.raises(ConfigError, match="compile"):
        load_model(model_path, compile="nonsense")
    for mode, images, compiled in (
        ("auto", 10, False),
        ("auto", 100_000, True),
        ("on", 1, True),
        ("off", 10**6, False),
    ):
        m = load_model(model_path, compile=mode, runtime="torch")  # auto would measure routes first
        m.prepare_for(images)
        assert (m._compiled is not None) is compiled, (mode, images)
        # guarded bf16's fp32 re-runs get their own graph
        assert (m._rerun is not None) is (compiled and m.guard is not None)
        if m._compiled is not None:  # one batch size per precision
            assert m._compiled.batch_size == COMPILED_BATCH["bf16" if m.bf16 else "fp32"]
        if m._rerun is not None:
            assert m._rerun.batch_size == COMPILED_BATCH["fp32"]
    for precision in ("fp32", "bf16"):
        m = load_model(model_path, precision=precision, compile="on")
        m.prepare_for(1)
        assert m._compiled is not None and m._compiled.batch_size == COMPILED_BATCH[precision]
    image = src / "dog" / "dog.1.jpg"
    fast = load_model(model_path, precision="bf16").predict(image).probabilities
    exact = load_model(model_path, precision="fp32").predict(image).probabilities
    assert fast == pytest.approx(exact, abs=0.05)


def test_warm_up_compiles_the_network_and_the_reruns_graph(trained: tuple[Path, Path]) -> None:
    from pawlab.inference.engine import COMPILED_BATCH, Compiled

    m = load_model(trained[1], precision="bf16", compile="on")
    m.prepare_for(1)
    assert m._compiled is not None
    if m._rerun is None:  # this model recorded no agreement: give it the re-runs' graph anyway
        m._rerun = Compiled(m._runner, COMPILED_BATCH["fp32"])
    calls: dict[str, list[int]] = {}
    for name, graph in (("network", m._compiled), ("reruns", m._rerun)):
        graph.fn = functools.partial(
            lambda fn, name, x: (calls.setdefault(name, []).append(len(x)), fn(x))[1], graph.fn, name
        )
    m.warm_up()
    # each graph ran (compiled) once at its own batch size: no request waits for a compiler
    # (blank images may be unsure ones too: then the re-runs' graph also runs within the batch)
    assert calls["network"] == [COMPILED_BATCH["bf16"]]
    assert calls["reruns"] and set(calls["reruns"]) == {COMPILED_BATCH["fp32"]}


def test_submit_under_torchrun_merges_the_shards_in_id_order(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """Two CPU ranks started as torchrun starts them (RANK, WORLD_SIZE, MASTER_*)."""
    test = _test_set(tmp_path / "test")
    full = tmp_path / "full.csv"
    submit(trained[1], test, full, workers=1, progress=False)
    out = tmp_path / "sub.csv"
    cmd = ["-m", "pawlab", "submit", str(trained[1]), str(test), "--out", str(out)]
    results = run_ranks([*cmd, "-q", "--workers", "1", "--device", "cpu", "--batch-size", "3"])
    assert [rc for rc, _, _ in results] == [0, 0], results
    assert out.read_text() == full.read_text()  # every row once, in id order, as one process writes
    assert "wrote 12 rows" in results[0][1] and results[1][1] == ""  # rank 0 reports for both
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("sub.csv")) == ["sub.csv"]


def test_submit_resumes_the_shards_of_an_interrupted_torchrun(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    test = _test_set(tmp_path / "test")
    full = tmp_path / "full.csv"
    submit(trained[1], test, full, workers=1, progress=False)
    rows = dict(_rows(full))
    # an interrupted job: its record, the first rows in the file, and two ranks' part files
    model = _killed_at_second_batch(trained[1])
    out = tmp_path / "sub.csv"
    with pytest.raises(KeyboardInterrupt):
        submit(model, test, out, batch_size=4, workers=1, progress=False)
    (tmp_path / "sub.csv.part-0").write_text(f"7,{rows[7]}\n9,{rows[9]}\n")
    (tmp_path / "sub.csv.part-1").write_text(f"8,{rows[8]}\n10,0.3")  # a torn last row
    report = submit(trained[1], test, out, batch_size=4, workers=1, progress=False)
    assert report.resumed == 4 + 3 and report.written == 12 - 7
    assert out.read_text() == full.read_text()
    assert not list(tmp_path.glob("sub.csv.*"))  # parts merged, job record gone


def test_submit_refuses_a_damaged_part_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from pawlab.inference.submission import _read_rows

    part = tmp_path / "sub.csv.part-0"
    part.write_text("3,0.2\nnot a row\n4,0.1\n")
    with pytest.raises(DataError, match=r"sub.csv.part-0: line 2 is not an id,label row"):
        _read_rows(part, header=None)


def test_rows_are_written_whole_even_by_short_writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    from pawlab import atomic

    real = os.write
    monkeypatch.setattr(atomic.os, "write", lambda fd, data: real(fd, bytes(data[:3])))  # 3 bytes a call
    path = tmp_path / "rows"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        atomic.write_all(fd, b"1,0.25\n2,0.75\n", path)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"1,0.25\n2,0.75\n"


def _rewrite(src: Path, dst: Path, meta: object = None, dtype: torch.dtype | None = None) -> Path:
    """A copy of model file ``src`` with its description replaced by ``meta`` (any JSON) or
    its first weight's dtype changed in place (same byte size)."""
    ck = checkpoint.load(src)
    tensors = {f"model.{k}": v for k, v in ck.model_state.items()}
    if dtype is not None:
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name] = tensors[name].view(dtype)  # F32 bytes read as I32
    header = {"pawlab": json.dumps(ck.meta if meta is None else meta)}
    safetensors.torch.save_file(tensors, str(dst), metadata=header)
    return dst


def test_damaged_descriptions_are_refused_in_one_line(trained: tuple[Path, Path], tmp_path: Path) -> None:
    model = trained[1]
    meta = checkpoint.load(model).meta
    cases = {
        "a JSON list": ([1, 2], None, "is a JSON list, not an object"),
        "duplicate classes": ({**meta, "classes": ["cat", "cat"]}, None, "'cat' is listed twice"),
        "classes not names": ({**meta, "classes": "catdog"}, None, "classes must be a list of names"),
        "a weight's dtype": (None, torch.int32, "int32"),
    }
    for what, (new_meta, dtype, needle) in cases.items():
        path = _rewrite(model, tmp_path / f"{what}.safetensors", new_meta, dtype)
        with pytest.raises(ModelFileError, match=needle) as error:
            load_model(path)
        assert "\n" not in str(error.value), what
