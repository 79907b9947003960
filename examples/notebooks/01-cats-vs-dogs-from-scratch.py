# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Cats vs. dogs from scratch
#
# The first Cortex post ("Deep learning in Clojure with Cortex") and the Keras post ("Building
# powerful image classification models using very little data") tell the same story: a folder
# of photos from Kaggle's *Dogs vs. Cats*, a small network trained from nothing, a look at what
# it gets wrong, and a Kaggle submission. This notebook tells it again with pawlab, step by
# step:
#
# 1. a zip of photos → `pawlab.prepare` (and what it skipped, and why)
# 2. a look at the training images
# 3. the tutorials' networks as layer lists: `cortex-cnn` and `keras-mlp`
# 4. the Keras post's optimizer comparison: SGD, RMSprop, Adagrad and Adam
# 5. train-forever with the live dashboard in the notebook
# 6. evaluation: the confusion matrix, a prediction grid, the top losses
# 7. one photo's probability map
# 8. a Kaggle submission
#
# Every cell runs top to bottom on a fresh machine (`make demo` installs pawlab; `pip install
# jupyterlab` is enough to open this). The outputs you see were made on the 2,000 training
# photos of `cats_and_dogs_filtered` on 2 CPU cores (a seeded 434 of them held out for
# validation); CI runs the same cells on a small subset (the parameter cell below).

# %% tags=["parameters"]
import os

# "full": every photo (the committed outputs); "small": a few dozen, to check the notebook runs
SUBSET = os.environ.get("PAWLAB_NOTEBOOK_SUBSET", "full")

# %%
import shutil
import time
import zipfile
from pathlib import Path

from IPython.display import Image, display

import pawlab
from pawlab.figures import image_grid

SMALL = SUBSET == "small"
PER_CLASS = 24 if SMALL else None  # photos of each class taken from the training folder
TEST_IMAGES = 16 if SMALL else 1000


PHOTOS = Path(os.environ.get("PAWLAB_DATA", "../../../shared/data")) / "cats_and_dogs_filtered"
WORK = Path(os.environ.get("PAWLAB_NOTEBOOK_WORK", "work")) / "01-cats-vs-dogs"
shutil.rmtree(WORK, ignore_errors=True)
WORK.mkdir(parents=True)
print(f"pawlab {pawlab.__version__}; photos from {PHOTOS}; working in {WORK}")

# %% [markdown]
# ## 1. A zip of photos → `prepare`
#
# Kaggle hands out `train.zip`. We make one from the training photos, and slip in two files a
# real download sometimes has: an empty one and a JPEG cut off half-way. pawlab reads the zip
# in place (no unpacking), decodes every photo once in parallel, resizes it to 52×52 (the Cortex
# tutorial's size) and keeps a seeded, stable split. Bad files are reported, never fatal.

# %%
archive = WORK / "train.zip"
with zipfile.ZipFile(archive, "w") as z:
    for cls in ("cats", "dogs"):
        photos = sorted((PHOTOS / "train" / cls).glob("*.jpg"))[:PER_CLASS]
        for p in photos:
            z.write(p, f"{cls}/{p.name}")
    z.writestr("cats/empty.jpg", b"")
    z.writestr("dogs/cut-off.jpg", photos[0].read_bytes()[:3000])

report = pawlab.prepare(archive, WORK / "data52", pawlab.DataConfig(size=52), progress=False)
report

# %% [markdown]
# Every skipped file is in the manifest with its reason:

# %%
for skipped in report.skipped:
    print(f"{skipped['name']}: {skipped['reason']}")

# %% [markdown]
# ## 2. A look at the training images
#
# What the network will see: 52×52, squashed to a square as in the tutorials.

# %%
data = pawlab.load_dataset(WORK / "data52", pawlab.DataConfig(size=52), progress=False)
print(
    f"{len(data.train.labels)} training and {len(data.validation.labels)} validation images: {data.classes}"
)
image_grid(data.train.images[:32], columns=8, tile=64)

# %% [markdown]
# ## 3. Networks as layer lists
#
# The Cortex tutorial's network is a list of layers; pawlab infers every shape and names a
# layer that does not fit. `cortex-cnn` is built in, and so is the Keras post's MLP.

# %%
cortex = pawlab.get_architecture("cortex-cnn")
cortex

# %%
print(pawlab.build(cortex, num_classes=2).summary())

# %%
print(pawlab.build(pawlab.get_architecture("keras-mlp"), num_classes=2).summary())

# %% [markdown]
# A layer that does not fit is a one-line error that says which and why:

# %%
try:
    pawlab.build([{"type": "input", "size": 4}, {"type": "conv", "kernel": 5, "filters": 4}], num_classes=2)
except pawlab.ArchitectureError as error:
    print(error)

# %% [markdown]
# ## 4. Which optimizer? (the Keras post's comparison)
#
# The same MLP, data, split and seed, once per optimizer, each at its default learning rate.
# Every row of the table is one epoch: the saved one, best by validation loss.

# %%
import contextlib
import io

from pawlab.training.experiments import compare_optimizers

with contextlib.redirect_stdout(io.StringIO()):  # four runs' epoch lines: the table says it all
    comparison = compare_optimizers(
        WORK / "data52",
        ["sgd", "rmsprop", "adagrad", "adam"],
        pawlab.TrainConfig(epochs=3 if SMALL else 20),
        arch="keras-mlp",
        out_dir=WORK / "compare",
        runtime=pawlab.RuntimeConfig(progress=False),
    )
comparison

# %% [markdown]
# ## 5. Train forever, with the live dashboard
#
# `TrainConfig(epochs=None)` trains until you stop it (the stop button, Ctrl-C or SIGTERM stop it
# cleanly); the model file is written whenever the *validation* loss improves. The dashboard
# shows the run live in the cell below while the next one trains: curves, and a confusion matrix
# whose cells open their images.
#
# So that this notebook also runs unattended, a small callback stops the run after a few
# minutes; callbacks are how pawlab's loop is extended (checkpoints, logs and early stopping
# are callbacks too).

# %%
from pawlab import dashboard


class StopAfter(pawlab.Callback):
    """Stop at the end of the first epoch past ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def before_fit(self, trainer: pawlab.Trainer) -> None:
        self.start = time.monotonic()

    def after_epoch(self, trainer: pawlab.Trainer) -> None:
        if time.monotonic() - self.start > self.seconds:
            trainer.state.stop = True


model_path, run_dir = WORK / "cortex.safetensors", WORK / "cortex-run"
live = dashboard.show(run_dir)
live

# %%
result = pawlab.train(
    WORK / "data52",
    model_path,
    "cortex-cnn",
    pawlab.TrainConfig(epochs=None, augment=pawlab.AugmentConfig(rotate=25, flip=True)),
    run_dir=run_dir,
    callbacks=[StopAfter(10 if SMALL else 240)],
    runtime=pawlab.RuntimeConfig(progress=False),
)
result

# %% [markdown]
# The live page is served by this notebook's kernel, so a saved copy of the notebook (or a code
# host) shows an empty frame where it was; the result above keeps the curves.
# `dashboard.show(run_dir, static=True)` would embed a snapshot of the page instead, several
# megabytes. Once training has stopped, stop the server:

# %%
dashboard.stop()

# %% [markdown]
# ## 6. Evaluation
#
# On the validation split only: never an image the model trained on. pawlab writes the
# confusion matrix, a grid of predictions and the photos it got most confidently wrong.

# %%
model = pawlab.load_model(model_path)
model

# %%
evaluation = pawlab.evaluate(model, WORK / "data52", report_dir=WORK / "cortex-eval", progress=False)
evaluation

# %%
for name in ("predictions", "top_losses"):
    if name in evaluation.figures:
        display(Image(filename=evaluation.figures[name]))

# %% [markdown]
# ## 7. One photo's probability map
#
# A path, bytes, a PIL image or a NumPy array; a list gives a table.

# %%
photo = sorted((PHOTOS / "validation" / "dogs").glob("*.jpg"))[0]
display(Image(filename=photo, width=240))
model.predict(photo)

# %%
model.predict(sorted((PHOTOS / "validation" / "cats").glob("*.jpg"))[:4] + [photo])

# %% [markdown]
# ## 8. A Kaggle submission
#
# Kaggle's `test1.zip` names each photo by a number. We make such a folder from validation photos,
# and write `id,label` with the probability of "dogs", streamed row by row (an interrupted run
# resumes where it stopped).

# %%
test = WORK / "test"
test.mkdir()
validation = sorted((PHOTOS / "validation").glob("*/*.jpg"))
for i, p in enumerate(validation[:: max(1, len(validation) // TEST_IMAGES)][:TEST_IMAGES], start=1):
    shutil.copyfile(p, test / f"{i}.jpg")

submission = pawlab.submit(model, test, WORK / "submission.csv", progress=False)
print(f"{submission.written} rows in {submission.seconds:.1f}s")
print("".join((WORK / "submission.csv").open().readlines()[:6]))
