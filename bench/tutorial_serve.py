"""The endpoint a user writes from a tutorial, for bench/serve.py to measure pawlab serve against.

    .venv/bin/python bench/tutorial_serve.py MODEL --port P [--fastapi-def]

``POST /v1/predict`` takes one image as the body and answers ``{"probabilities": {class: p}}``.
Each request is handled alone, as tutorials write it: the body decoded with Pillow, centre-cropped
and resized to the model's input (bilinear, as the model file's preprocessing says: its size,
its ``crop`` or ``squash`` rule, its mean and std), a float32 NCHW tensor, and one eager fp32
forward pass under ``torch.inference_mode()``. No batching, no queue, no limits.

* default: a Starlette ``async def`` handler (the forward pass runs on the event loop);
* ``--fastapi-def``: a FastAPI ``def`` handler taking ``body: bytes = Body(...)``, which FastAPI
  runs in its thread pool, so several forward passes run at once (needs ``pip install fastapi``).

The network is the model file's, as ``pawlab.load_model(path, precision="fp32", compile="off")``
builds it from the file's header and weights: its ``.network``, eager fp32 with its batch-norms
as trained (pawlab folds them only into the copy its engine runs), in NCHW. Served by uvicorn in
one process with its default settings.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import torch
import uvicorn
from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pawlab.inference import load_model  # noqa: E402


class Classifier:
    """The model file's network in eager fp32, and its preprocessing done with Pillow."""

    def __init__(self, path: Path) -> None:
        model = load_model(path, device="cpu", precision="fp32", compile="off")
        self.net = model.network.to(memory_format=torch.contiguous_format).float().eval()
        self.classes = model.classes
        pre = model.preprocessing
        self.size = (pre.size[1], pre.size[0])  # Pillow's (W, H)
        self.crop = pre.resize == "crop"
        self.mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(pre.std).view(1, -1, 1, 1)

    def tensor(self, body: bytes) -> torch.Tensor:
        """Encoded image -> float32 (1, 3, H, W), normalised as in training."""
        image = Image.open(io.BytesIO(body)).convert("RGB")
        if self.crop:
            image = ImageOps.fit(image, self.size, Image.Resampling.BILINEAR)
        else:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        x = x.view(1, self.size[1], self.size[0], 3).permute(0, 3, 1, 2).float().div(255)
        return (x - self.mean) / self.std

    def predict(self, body: bytes) -> dict[str, Any]:
        with torch.inference_mode():
            probs = torch.softmax(self.net(self.tensor(body)), dim=1)[0]
        return {"probabilities": dict(zip(self.classes, probs.tolist(), strict=True))}


def starlette_app(classifier: Classifier) -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        return JSONResponse(classifier.predict(await request.body()))

    return Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])])


def fastapi_app(classifier: Classifier) -> Any:
    from fastapi import Body, FastAPI

    app = FastAPI()

    @app.post("/v1/predict")
    def predict(body: bytes = Body(..., media_type="image/jpeg")) -> dict[str, Any]:
        return classifier.predict(body)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--fastapi-def", action="store_true", help="a FastAPI def handler in its thread pool")
    args = ap.parse_args()
    classifier = Classifier(args.model)
    app = fastapi_app(classifier) if args.fastapi_def else starlette_app(classifier)
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
